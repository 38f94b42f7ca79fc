"""Dagster's own floor under a sync: the sync job's shape, with steps that do nothing.

    .venv/bin/python bench/dagster_floor.py --runs 5

Every asset and check of ``sync_job`` is copied with the same keys, dependencies, partitions,
checks, pool and failure hook, but its body only reports a materialization (and passing
checks): no DuckDB, no HTTP. Each run is one ``execute_in_process`` of that job for a new
``incr-…`` key on a fresh Dagster instance configured by the project's ``dagster.yaml`` (SQLite),
as ``hubsync sync`` runs it. What a real incremental sync takes beyond this floor is hubsync's
work; what it cannot take less than is this.

Also measured, each in a fresh process: ``import dagster`` and loading the definitions, the time
any ``hubsync`` command spends before its first request. Prints one JSON object and writes it
to bench/results/dagster_floor-<runs>.json.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import harness

from cli.runs import QUIET_CONSOLE  # the run config of ``hubsync sync``

ROOT = harness.ROOT


def noop_copy(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``assets_def`` with the same specs, checks, partitions and pool, doing nothing."""
    check_specs = list(assets_def.check_specs)

    @dg.multi_asset(
        name=assets_def.op.name,
        specs=list(assets_def.specs),
        check_specs=check_specs,
        partitions_def=assets_def.partitions_def,
        pool=assets_def.op.pool,
    )
    def _noop(context: dg.AssetExecutionContext) -> Iterator[Any]:
        for key in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=key, metadata={"duration_s": 0.0})
        for spec in check_specs:
            yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, passed=True)

    return _noop


def noop_checks(checks_def: dg.AssetChecksDefinition) -> dg.AssetChecksDefinition:
    specs = list(checks_def.check_specs)

    @dg.multi_asset_check(
        name=checks_def.node_def.name,
        specs=specs,
        can_subset=True,
        pool=checks_def.op.pool,
    )
    def _noop(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        for key in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=True)

    return _noop


@dg.failure_hook
def noop_failure_hook(context: dg.HookContext) -> None:
    """Stands for ``mark_sync_failed``: it is skipped (one event) after every successful step."""


def floor_job() -> dg.JobDefinition:
    from assets.sync import SYNC_TAG
    from pipelines.definitions import defs
    from pipelines.jobs import SYNC_SELECTION

    assets = [noop_copy(a) for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    checks = [noop_checks(c) for c in defs.asset_checks or []]
    job = dg.define_asset_job(
        "sync_job", selection=SYNC_SELECTION, tags={SYNC_TAG: "true"}, hooks={noop_failure_hook}
    )
    floor_defs = dg.Definitions(
        assets=assets, asset_checks=checks, jobs=[job], executor=dg.in_process_executor
    )
    return floor_defs.resolve_job_def("sync_job")


def run_once(job: dg.JobDefinition, instance: dg.DagsterInstance, key: str) -> dict[str, Any]:
    instance.add_dynamic_partitions("sync_runs", [key])
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET_CONSOLE, raise_on_error=True
    )
    wall = time.perf_counter() - started
    events = Counter(event.event_type_value for event in result.all_events)
    stored = len(instance.all_logs(result.run_id))
    return {"wall_s": round(wall, 3), "events_stored": stored, "events": dict(events)}


def seconds_in_fresh_process(code: str, runs: int) -> float:
    """Median wall time of ``python -c code`` in a fresh process (imports included)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()

    job = floor_job()
    steps = len(job.graph.nodes)
    runs = []
    with tempfile.TemporaryDirectory() as home:
        shutil.copy(ROOT / "dagster.yaml", Path(home) / "dagster.yaml")
        with dg.DagsterInstance.from_config(home) as instance:
            start = datetime(2026, 12, 1, tzinfo=UTC)
            run_once(job, instance, "incr-warmup")  # the instance's tables and first imports
            for i in range(args.runs):
                key = "incr-" + (start + timedelta(minutes=15 * i)).strftime("%Y%m%dT%H%M%SZ")
                runs.append(run_once(job, instance, key))
    walls = [run["wall_s"] for run in runs]
    fresh = min(args.runs, 3)  # processes started per import measurement
    result = {
        "benchmark": "dagster_floor",
        "steps": steps,
        "assets": len(job.asset_layer.executable_asset_keys),
        "runs_wall_s": walls,
        "median_wall_s": round(statistics.median(walls), 3),
        "events_stored_per_run": runs[-1]["events_stored"],
        "events_per_run": runs[-1]["events"],
        "before_first_request_s": {
            "python": seconds_in_fresh_process("pass", fresh),
            "import_dagster": seconds_in_fresh_process("import dagster", fresh),
            "load_definitions": seconds_in_fresh_process("import pipelines.definitions", fresh),
        },
        "dagster": dg.__version__,
        "note": args.note,
    }
    harness.write_result(f"dagster_floor-{args.runs}", result)


if __name__ == "__main__":
    main()
