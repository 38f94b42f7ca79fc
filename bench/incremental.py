"""One incremental sync after K world changes, at N students: it must scale with K, not N.

    .venv/bin/python bench/incremental.py --students 100000 --changes 100
    .venv/bin/python bench/incremental.py --students 2000 --changes 100
    .venv/bin/python bench/incremental.py --students 100000 --changes 100 --then full

``--then full`` makes the second sync a full one over the warm warehouse (what a daily full sync
costs once the first has run, e.g. the Stud.IP listing's detail reads); the result is written to
bench/results/incremental-<N>-<K>-then-full.json.

The sandbox (faults off) runs in its own process. A full sync lands the world first; then the
world takes about K changes (``POST /_sandbox/world/step`` scaled to K: new students,
exmatriculations, name and e-mail changes, study status changes, enrolments, completions) and
its clock moves past CAMPUSonline's 15-minute view refresh; then one incremental sync runs through
the real ``sync_job`` (an ``incr-…`` key). Reports its wall time per stage, the requests each system
served during it, the HUB events sent, and the full sync's headline numbers for comparison.
Prints one JSON object and writes it to bench/results/incremental-<N>-<K>.json.

``--floor`` also captures the requests of each incremental sync and replays them afterwards with
plain ``requests`` (``floor.py``, as ``full_sync.py`` does): the time the sandbox needs to answer
them, on the same cores, which no client can go below. With ``bench/dagster_floor.py`` (a run of
the sync job's shape whose steps do nothing) it bounds an incremental sync from below.

``--runs 3`` repeats changes and sync three times on the same warehouse (each with its own
changes) and reports the run with the median end-to-end time, and every run's time: one run
moves by ±25 % on a shared machine, and a first full sync at 100,000 students takes minutes.
Keep runs below STUDIP_RELIST_EVERY, or the last one re-lists Stud.IP.
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import harness
from full_sync import measure_floor

from assets.partitions import new_sync_key

CHANGES_PER_STEP_UNIT = 10  # World.step makes about 10 changes per unit of its k
TARGETS = {  # issue 19
    "end_to_end_s_at_100k_with_100_changes": 5,
    "end_to_end_s_at_100k_with_10_changes": 3,
    "requests": "proportional to changes",
}


def step_scale(students: int, changes: int) -> float:
    """The ``scale`` for which one World.step makes about ``changes`` changes
    (its k = round(students * 0.004 * scale) of each kind)."""
    return changes / CHANGES_PER_STEP_UNIT / (students * 0.004)


def effective_mode(warehouse: Path, key: str) -> str | None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        rows = conn.execute("SELECT effective_mode FROM sync_runs WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def headline(sync: harness.SyncMeasurement) -> dict[str, Any]:
    return {
        "success": sync.success,
        "error": sync.error,
        "wall_s": sync.wall_s,
        "fetch_and_land_s": harness.total_fetch_and_land_s(sync),
        "events": sync.number("hub_payload", "events"),
        "peak_rss_mb": sync.peak_rss_mb,
        "studip": studip_numbers(sync),
        "stages": harness.stages(sync),
        "peak_rss_mb_by_step": sync.other["peak_rss_mb_by_step"],
    }


def studip_numbers(sync: harness.SyncMeasurement) -> dict[str, Any]:
    """The Stud.IP step's mode and requests (``users_read_in_full``: a listing's detail reads)."""
    return {
        name: sync.number("studip_raw_pages", name)
        for name in ("requests", "jsonapi_requests", "users_read_in_full", "plan_s", "http_seconds")
    }


def desired_numbers(sync: harness.SyncMeasurement) -> dict[str, Any]:
    """What the ``hub_desired`` step rebuilt (all zero: it rebuilt everything)."""
    return {
        name: sync.number("hub_desired", name)
        for name in ("persons_rebuilt", "studip_courses_rebuilt", "lms_courses_rebuilt")
    }


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def incremental_run(
    sandbox: harness.SandboxProcess,
    env: dict[str, str],
    args: argparse.Namespace,
    seed: int,
    profile: Path | None,
) -> dict[str, Any]:
    """About ``args.changes`` world changes, then one sync of ``args.then``, measured."""
    step = sandbox.admin(
        "co",
        "POST",
        "world/step",
        {"seed": seed, "scale": step_scale(args.students, args.changes)},
    )
    sandbox.admin("co", "POST", "world/clock", {"advance_seconds": 900})
    for system in sandbox.origins:
        sandbox.admin(system, "POST", "requests/reset")
    if args.floor:
        for source in harness.SOURCES:
            sandbox.admin(source, "POST", "requests/capture", {"enabled": True})
    time.sleep(1)  # the incremental key must be a later second than the one before
    key = new_sync_key(args.then)
    profiler = cProfile.Profile() if profile else None
    sandbox_cpu, own_cpu = sandbox.cpu_s(), process_cpu_s()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    sync = harness.run_sync_here(env, args.then, key, sys.stderr)
    end_to_end = round(time.perf_counter() - started, 2)
    cpu = {
        "hubsync_cpu_s": round(process_cpu_s() - own_cpu, 2),
        "sandbox_cpu_s": round(sandbox.cpu_s() - sandbox_cpu, 2),
    }
    if profiler and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    served, studip_routes = sandbox.request_counts(), sandbox.route_counts("studip")
    floors = measure_floor(sandbox, env) if args.floor else {}
    return {
        "key": key,
        "step": step,
        "sync": sync,
        "end_to_end_s": end_to_end,
        "cpu": cpu,
        "served": served,
        "studip_routes": studip_routes,
        "request_floor": {source: floor.as_dict() for source, floor in floors.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=20000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--then", choices=("incremental", "full"), default="incremental")
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    parser.add_argument(
        "--keep-full-warehouse",
        type=Path,
        help="copy the warehouse after the full sync here, to profile steps against it later",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write cProfile statistics of the incremental sync here (pstats format)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="replay each incremental sync's requests afterwards: the sandbox's share (floor.py)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="incremental syncs, each after its own world changes; the median one is reported",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        harness.use_temporary_dagster_home(folder)
        warehouse = folder / "warehouse.duckdb"
        with harness.sandbox_process(args.students, seed=args.seed) as sandbox:
            env = harness.settings_env(sandbox, warehouse)
            settings_used = harness.tuning(env)
            full = harness.run_sync_here(env, "full", new_sync_key("full"), sys.stderr)
            if not full.success:
                raise SystemExit(f"the full sync failed: {full.error}")
            served_by_full = sandbox.request_counts()
            if args.keep_full_warehouse:
                shutil.copy(warehouse, args.keep_full_warehouse)
            runs = []
            for run_no in range(args.runs):
                profile = args.profile if run_no == 0 else None
                runs.append(incremental_run(sandbox, env, args, args.seed + run_no, profile))
            modes = [effective_mode(warehouse, run["key"]) for run in runs]

    # the run whose end-to-end time is the median stands for all (one run: that run)
    median = sorted(runs, key=lambda run: run["end_to_end_s"])[(len(runs) - 1) // 2]
    step, sync, served = median["step"], median["sync"], median["served"]
    changes = sum(step["counts"].values())
    requests_served = sum(served.values())
    result = {
        "benchmark": "incremental",
        "then": args.then,
        "students": args.students,
        "changes_requested": args.changes,
        "changes": changes,
        "change_counts": step["counts"],
        "success": all(run["sync"].success for run in runs),
        "error": sync.error,
        "effective_mode": modes[runs.index(median)],
        "end_to_end_s": median["end_to_end_s"],
        "runs_end_to_end_s": [run["end_to_end_s"] for run in runs],
        # on the same cores: hubsync's process, and the simulated systems serving it
        "cpu_s": median["cpu"],
        "runs_effective_mode": modes,
        "stages": harness.stages(sync),
        "studip": studip_numbers(sync),
        "hub_desired": desired_numbers(sync),
        "requests_served": served,
        # the median run's requests replayed with plain requests (--floor), per source
        "request_floor": median["request_floor"],
        "request_floor_s": round(sum(f["s"] for f in median["request_floor"].values()), 3),
        "studip_requests_by_route": median["studip_routes"],
        "requests_per_change": round(requests_served / changes, 2) if changes else None,
        "events": sync.number("hub_payload", "events"),
        "batches_posted": sync.number("hub_delivery", "batches_posted"),
        "peak_rss_mb": sync.peak_rss_mb,  # of the whole process, the full sync before included
        "peak_rss_mb_by_step": sync.other["peak_rss_mb_by_step"],
        "full_sync_before": headline(full),
        "settings": settings_used,
        "targets": TARGETS,
        "note": args.note,
    }
    result["full_sync_before"]["requests_served"] = served_by_full
    suffix = "-then-full" if args.then == "full" else ""
    harness.write_result(f"incremental-{args.students}-{args.changes}{suffix}", result)


if __name__ == "__main__":
    main()
