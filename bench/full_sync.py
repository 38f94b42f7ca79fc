"""A full sync of all sources to the HUB at N students, and the floor under its fetching.

    .venv/bin/python bench/full_sync.py --students 20000
    .venv/bin/python bench/full_sync.py --students 2000 --latency-ms 20

The sandbox (faults off; ``--latency-ms`` makes every request take at least that long) runs in
its own process; the sync runs here through the real ``sync_job`` (as ``hubsync sync``
runs it), with the sandbox capturing every API request. Afterwards the floor replays exactly
those CO, Stud.IP and LMS requests with plain ``requests`` at the same concurrency, discarding
the bodies. Reports wall time per stage, pages, records, requests, peak RSS (the sync's, and the
sandbox's), the warehouse size, and ``ratio`` = the sync's fetch-and-land time / the floor.
Prints one JSON object and writes it to bench/results/full_sync-<N>-<latency>ms[-nofloor].json.
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
from assets.partitions import new_sync_key
from resources.settings import load_settings

TARGET_RATIO = 1.3
TARGETS = {
    "fetch_and_land_vs_floor": TARGET_RATIO,
    "end_to_end_s_at_100k": 600,
    "peak_rss_mb": 1536,
}


# co_raw_pages repeats its client's counters on each of its three tables; the LMS reports each
# endpoint's own share.
CLIENT_STATS_REPEATED = {"co"}


def source_numbers(sync: harness.SyncMeasurement) -> dict[str, dict[str, float]]:
    """Pages, records, API calls and HTTP time per source, from the raw steps' metadata."""
    result = {}
    for source, step in harness.FETCH_AND_LAND.items():
        numbers = sync.numbers.get(step, {})

        def total(*names: str, source: str = source, numbers: dict = numbers) -> float:
            values = [v for k, v in numbers.items() if k.rsplit(".", 1)[-1] in names]
            if source in CLIENT_STATS_REPEATED:
                return max(values, default=0)
            return sum(values)

        result[source] = {
            "pages": sum(v for k, v in numbers.items() if k.rsplit(".", 1)[-1] == "pages"),
            "records": sum(v for k, v in numbers.items() if k.rsplit(".", 1)[-1] == "records"),
            "requests": total("requests"),
            # summed over the client's threads: above the wall time when requests overlap
            "http_s": round(total("http_seconds"), 3),
        }
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
    parser.add_argument(
        "--no-floor", action="store_true", help="skip capturing and replaying the requests"
    )
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
            if not args.no_floor:
                for source in harness.SOURCES:
                    sandbox.admin(source, "POST", "requests/capture", {"enabled": True})
            env = harness.settings_env(sandbox, warehouse)
            settings_used = harness.tuning(env)
            started = time.perf_counter()
            sync = harness.run_sync_here(env, "full", new_sync_key("full"), sys.stderr)
            end_to_end = round(time.perf_counter() - started, 2)
            served = sandbox.request_counts()
            floors = {} if args.no_floor else measure_floor(sandbox, env)
            sandbox_rss = sandbox.peak_rss_mb()
            sandbox_ready = sandbox.ready_s
        warehouse_mb = harness.file_size_mb(warehouse)

    fetch_and_land = harness.total_fetch_and_land_s(sync)
    floor_s = round(sum(f.seconds for f in floors.values()), 3)
    per_source = source_numbers(sync)
    for source, numbers in per_source.items():
        land_s = sync.step_s(harness.FETCH_AND_LAND[source])
        numbers.update(requests_served=served[source], fetch_and_land_s=land_s)
        floor = floors.get(source)
        if floor is not None:
            numbers.update(
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
        "floor_s": floor_s or None,
        "ratio": round(fetch_and_land / floor_s, 2) if floor_s else None,
        "sources": per_source,
        "requests_served": served,
        "hub": {name: sync.number("hub_payload", name) for name in ("events", "batches", "bytes")}
        | {"batches_posted": sync.number("hub_delivery", "batches_posted")},
        "peak_rss_mb": sync.peak_rss_mb,
        "peak_rss_mb_by_step": sync.other["peak_rss_mb_by_step"],
        "baseline_rss_mb": baseline_rss,
        "sandbox_peak_rss_mb": sandbox_rss,
        "sandbox_ready_s": sandbox_ready,
        "warehouse_mb": warehouse_mb,
        "settings": settings_used,
        "targets": TARGETS,
        "note": args.note,
    }
    suffix = "-nofloor" if args.no_floor else ""
    harness.write_result(f"full_sync-{args.students}-{args.latency_ms}ms{suffix}", result)


if __name__ == "__main__":
    main()
