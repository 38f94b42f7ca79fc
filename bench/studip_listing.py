"""The Stud.IP listing (JSON:API) side by side with the crawl (REST) on the same world.

    .venv/bin/python bench/studip_listing.py --students 10000
    .venv/bin/python bench/studip_listing.py --students 10000 --latency-ms 200

Each mode runs in its own child process (``--mode rest|jsonapi``) with the sandbox in that
process, a full Stud.IP sync (raw landing plus current state): requests it made (classic and
JSON:API), wall time, and peak RSS (``VmHWM``; ``baseline_rss_mb`` is what the process held with
the world built, before the sync). The parent checks that both built the same ``studip_*`` row
counts, prints one JSON object and writes bench/results/studip_listing-<N>-<latency>ms.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHARED_MACHINE_NOTE, peak_rss_mb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TODAY = date(2026, 11, 23)
TABLES = ("studip_users", "studip_courses", "studip_memberships", "studip_user_institutes")


def run_mode(mode: str, students: int, seed: int, latency_ms: int, concurrency: int) -> dict:
    import dagster as dg

    from assets.studip import studip_raw_pages, studip_state
    from assets.sync import sync_run
    from pipelines.partitions import new_sync_key
    from resources.settings import load_settings
    from resources.studip import StudIPResource, studip_resource
    from resources.warehouse import WarehouseResource
    from sandbox.http import FaultConfig
    from sandbox.server import running_sandbox
    from sandbox.world import World

    world = World(seed, students, today=TODAY)
    key = new_sync_key("full", datetime(2026, 11, 23, 10, tzinfo=UTC))
    with (
        running_sandbox(port_base=0, world=world) as sandbox,
        tempfile.TemporaryDirectory() as folder,
        dg.instance_for_test() as instance,
    ):
        sandbox.studip.faults.configure(FaultConfig(latency_floor_ms=latency_ms))
        instance.add_dynamic_partitions("sync_runs", [key])
        base = studip_resource(load_settings(sandbox.env).studip)
        fields = {name: getattr(base, name) for name in StudIPResource.model_fields}
        studip = StudIPResource(**{**fields, "concurrency": concurrency, "api_mode": mode})
        warehouse = WarehouseResource(path=str(Path(folder) / "bench.duckdb"))
        baseline = peak_rss_mb()
        started = time.perf_counter()
        result = dg.materialize(
            [sync_run, studip_raw_pages, studip_state],
            partition_key=key,
            instance=instance,
            resources={"warehouse": warehouse, "studip": studip},
        )
        wall = time.perf_counter() - started
        node = result.asset_materializations_for_node("studip_raw_pages")[0]
        numbers = {k: v.value for k, v in node.metadata.items()}
        with warehouse.connection() as conn:
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        served = sandbox.studip.request_count()
    return {
        "mode": numbers["api_mode"],
        "requests": numbers["requests"],
        "jsonapi_requests": numbers["jsonapi_requests"],
        "requests_served": served,
        "fetch_and_land_s": numbers["duration_s"],
        "wall_s": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mode", choices=("rest", "jsonapi"), help=argparse.SUPPRESS)
    parser.add_argument("--note", default=SHARED_MACHINE_NOTE)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.students, args.seed, args.latency_ms,
                                  args.concurrency)))  # fmt: skip
        return
    runs = {}
    for mode in ("rest", "jsonapi"):
        child = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--students", str(args.students),
             "--seed", str(args.seed), "--latency-ms", str(args.latency_ms),
             "--concurrency", str(args.concurrency)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    crawl, listing = runs["rest"], runs["jsonapi"]
    report = {
        "students": args.students,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "crawl": crawl,
        "listing": listing,
        "request_share": round(listing["requests"] / crawl["requests"], 4),
        "same_row_counts": crawl["rows"] == listing["rows"],
        "note": args.note,
    }
    print(json.dumps(report))
    RESULTS.mkdir(exist_ok=True)
    name = f"studip_listing-{args.students}-{args.latency_ms}ms.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
