"""A full sync of all sources to the HUB at N students, and the floor under its fetching.

    .venv/bin/python bench/full_sync.py --students 20000
    .venv/bin/python bench/full_sync.py --students 2000 --latency-ms 20

The sandbox (faults off; ``--latency-ms`` makes every request take at least that long) runs in
its own process; the sync runs here through the real ``full_sync_job`` (as ``hubsync sync``
runs it), with the sandbox capturing every API request. Afterwards the floor replays exactly
those CO, Stud.IP and LMS requests with plain ``requests`` at the same concurrency, discarding
the bodies. Reports wall time per stage, pages, records, requests, peak RSS (the sync's, and the
sandbox's), the warehouse size, and ``ratio`` = the sync's fetch-and-land time / the floor.
Prints one JSON object and writes it to bench/results/full_sync-<N>-<latency>ms.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from floor import TOKEN_PATHS, FloorResult, replay

import cli.runs  # noqa: F401 - imported before the baseline RSS is read
from pipelines.partitions import new_sync_key
from resources.settings import load_settings

TARGET_RATIO = 1.3
TARGETS = {
    "fetch_and_land_vs_floor": TARGET_RATIO,
    "end_to_end_s_at_100k": 600,
    "peak_rss_mb": 1536,
}


def source_numbers(sync: harness.SyncMeasurement) -> dict[str, dict[str, float]]:
    """Pages, records and requests per source, from the raw steps' metadata."""
    result = {}
    for source, step in harness.FETCH_AND_LAND.items():
        numbers = sync.numbers.get(step, {})
        pages = sum(v for k, v in numbers.items() if k.rsplit(".", 1)[-1] == "pages")
        records = sum(v for k, v in numbers.items() if k.rsplit(".", 1)[-1] in ("records", "items"))
        calls = max(
            (v for k, v in numbers.items() if k.rsplit(".", 1)[-1] in ("api_calls", "requests")),
            default=0,
        )
        result[source] = {"pages": pages, "records": records, "api_calls": calls}
    return result


def measure_floor(sandbox: harness.SandboxProcess, env: dict[str, str]) -> dict[str, FloorResult]:
    settings = load_settings(env)
    floors = {}
    for source in harness.SOURCES:
        captured = sandbox.admin(source, "GET", "requests/captured")["requests"]
        sandbox.admin(source, "POST", "requests/capture", {"enabled": False})
        studip = source == "studip"
        floors[source] = replay(
            sandbox.origins[source],
            captured,
            concurrency=settings.studip.concurrency if studip else 1,
            token_path=TOKEN_PATHS.get(source),
            basic_auth=(
                (settings.studip.username, settings.studip.password.get_secret_value())
                if studip
                else None
            ),
        )
        del captured
    return floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()

    baseline_rss = harness.peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        harness.use_temporary_dagster_home(folder)
        warehouse = folder / "warehouse.duckdb"
        with harness.sandbox_process(
            args.students, seed=args.seed, latency_ms=args.latency_ms
        ) as sandbox:
            for source in harness.SOURCES:
                sandbox.admin(source, "POST", "requests/capture", {"enabled": True})
            env = harness.settings_env(sandbox, warehouse)
            started = time.perf_counter()
            sync = harness.run_sync_here(env, "full", new_sync_key("full"), sys.stderr)
            end_to_end = round(time.perf_counter() - started, 2)
            served = sandbox.request_counts()
            floors = measure_floor(sandbox, env)
            sandbox_rss = sandbox.peak_rss_mb()
            sandbox_ready = sandbox.ready_s
        warehouse_mb = harness.file_size_mb(warehouse)

    fetch_and_land = harness.total_fetch_and_land_s(sync)
    floor_s = round(sum(f.seconds for f in floors.values()), 3)
    per_source = source_numbers(sync)
    for source, floor in floors.items():
        land_s = sync.step_s(harness.FETCH_AND_LAND[source])
        per_source[source].update(
            requests_served=served[source],
            fetch_and_land_s=land_s,
            floor=floor.as_dict(),
            ratio=round(land_s / floor.seconds, 2) if floor.seconds else None,
        )
    result: dict[str, Any] = {
        "benchmark": "full_sync",
        "students": args.students,
        "seed": args.seed,
        "latency_ms": args.latency_ms,
        "success": sync.success,
        "error": sync.error,
        "end_to_end_s": end_to_end,
        "stages": harness.stages(sync),
        "full_sync_fetch_and_land_s": fetch_and_land,
        "floor_s": floor_s,
        "ratio": round(fetch_and_land / floor_s, 2) if floor_s else None,
        "sources": per_source,
        "requests_served": served,
        "hub": {name: sync.number("hub_payload", name) for name in ("events", "batches", "bytes")}
        | {"batches_posted": sync.number("hub_delivery", "batches_posted")},
        "peak_rss_mb": sync.peak_rss_mb,
        "baseline_rss_mb": baseline_rss,
        "sandbox_peak_rss_mb": sandbox_rss,
        "sandbox_ready_s": sandbox_ready,
        "warehouse_mb": warehouse_mb,
        "targets": TARGETS,
        "note": args.note,
    }
    harness.write_result(f"full_sync-{args.students}-{args.latency_ms}ms", result)


if __name__ == "__main__":
    main()
