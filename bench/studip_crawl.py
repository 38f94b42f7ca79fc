"""How fast a full Stud.IP sync crawls the sandbox: raw landing plus current state.

    .venv/bin/python bench/studip_crawl.py --students 2000
    .venv/bin/python bench/studip_crawl.py --students 2000 --latency-ms 200 --concurrency 16

``--latency-ms`` makes every sandbox request take at least that long (a real Stud.IP answers in
about 0.2-0.3 s), so the run shows what the bounded concurrency buys. Prints one JSON object and
writes it to bench/results/studip_crawl-<N>-<latency>ms-c<concurrency>.json.
"""

import argparse
import json
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

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

RESULTS = Path(__file__).resolve().parent / "results"
TODAY = date(2026, 11, 23)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    world = World(args.seed, args.students, today=TODAY)
    key = new_sync_key("full", datetime(2026, 11, 23, 10, tzinfo=UTC))
    with (
        running_sandbox(port_base=0, world=world) as sandbox,
        tempfile.TemporaryDirectory() as folder,
        dg.instance_for_test() as instance,
    ):
        sandbox.studip.faults.configure(FaultConfig(latency_floor_ms=args.latency_ms))
        instance.add_dynamic_partitions("sync_runs", [key])
        base = studip_resource(load_settings(sandbox.env).studip)
        fields = {name: getattr(base, name) for name in StudIPResource.model_fields}
        studip = StudIPResource(**{**fields, "concurrency": args.concurrency})
        warehouse = WarehouseResource(path=str(Path(folder) / "bench.duckdb"))
        started = time.perf_counter()
        result = dg.materialize(
            [sync_run, studip_raw_pages, studip_state],
            partition_key=key,
            instance=instance,
            resources={"warehouse": warehouse, "studip": studip},
        )
        total = time.perf_counter() - started
        crawl = {
            k: v.value
            for k, v in result.asset_materializations_for_node("studip_raw_pages")[
                0
            ].metadata.items()
        }
    report = {
        "students": args.students,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        **{k: crawl[k] for k in ("requests", "pages", "users", "courses", "memberships")},
        "crawl_s": crawl["duration_s"],
        "requests_per_s": crawl["requests_per_s"],
        "materialize_s": round(total, 2),
    }
    print(json.dumps(report))
    RESULTS.mkdir(exist_ok=True)
    name = f"studip_crawl-{args.students}-{args.latency_ms}ms-c{args.concurrency}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
