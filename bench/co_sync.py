"""A CAMPUSonline full sync and one incremental sync against a sandbox in another process.

    .venv/bin/python bench/co_sync.py --students 20000
    .venv/bin/python bench/co_sync.py --students 20000 --page-size 2000
    .venv/bin/python bench/co_sync.py --students 30000 --memory-mb 256

The sandbox runs as a subprocess (``hubsync sandbox``), so the peak RSS reported is the sync's
own; ``peak_rss_mb_by_step`` pins the full sync's peak to its steps (sampled every 50 ms).
``--memory-mb`` is HUBSYNC_WAREHOUSE_MEMORY_MB. Prints one JSON object and writes it to
bench/results/co_sync-<N>-<page size>.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import harness
import requests

from assets.campusonline import co_current_state, co_raw_pages
from assets.sync import build_sync_summary, sync_run
from resources.campusonline import CampusOnlineResource
from resources.warehouse import WarehouseResource

sync_summary = build_sync_summary([co_raw_pages, co_current_state])
RESULTS = Path(__file__).resolve().parent / "results"
PORT_BASE = 18701


def wait_for(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise TimeoutError(url)


def step_peaks(
    instance: dg.DagsterInstance, run_id: str, sampler: harness.RssSampler
) -> dict[str, float]:
    """The highest resident set sampled while each step of the run ran."""
    started: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            peak = sampler.peak_between(started.get(event.step_key, 0.0), entry.timestamp)
            if peak is not None:
                peaks[event.step_key] = peak
    return peaks


def run_sync(
    instance: dg.DagsterInstance, resources: dict, key: str
) -> tuple[float, dict[str, Any]]:
    instance.add_dynamic_partitions("sync_runs", [key])
    started = time.perf_counter()
    with harness.RssSampler(interval_s=0.05) as sampler:
        result = dg.materialize(
            [sync_run, co_raw_pages, co_current_state, sync_summary],
            partition_key=key,
            instance=instance,
            resources=resources,
        )
    elapsed = round(time.perf_counter() - started, 2)
    raw = result.asset_materializations_for_node("co_raw_pages")[0].metadata
    numbers = {
        name: raw[name].value
        for name in ("pages", "records", "requests", "bytes", "duration_s", "changed_students")
    }
    numbers["co_current_state_s"] = (
        result.asset_materializations_for_node("co_current_state")[0].metadata["duration_s"].value
    )
    numbers["peak_rss_mb_by_step"] = step_peaks(instance, result.run_id, sampler)
    return elapsed, numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=20000)
    parser.add_argument("--page-size", type=int, default=20000)
    parser.add_argument("--memory-mb", type=int, default=None, help="HUBSYNC_WAREHOUSE_MEMORY_MB")
    args = parser.parse_args()

    sandbox = subprocess.Popen(
        [sys.executable, "-m", "sandbox.server", "--students", str(args.students),
         "--port-base", str(PORT_BASE)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{PORT_BASE}"
    try:
        wait_for(f"{base}/_sandbox/co/state")
        with tempfile.TemporaryDirectory() as folder:
            os.environ["DAGSTER_HOME"] = folder
            resources = {
                "warehouse": WarehouseResource(
                    path=f"{folder}/warehouse.duckdb",
                    **({"memory_mb": args.memory_mb} if args.memory_mb else {}),
                ),
                "campusonline": CampusOnlineResource(
                    api_url=base,
                    client_id="hubsync",
                    client_secret="sandbox-co-secret",
                    page_size=args.page_size,
                    incremental_threshold=10**9,
                ),
            }
            with dg.instance_for_test(temp_dir=folder) as instance:
                full_s, full = run_sync(instance, resources, "full-20261123T020000Z")
                requests.post(f"{base}/_sandbox/world/step", json={}, timeout=60)
                incr_s, incremental = run_sync(instance, resources, "incr-20261123T021500Z")
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    result = {
        "benchmark": "co_sync",
        "students": args.students,
        "page_size": args.page_size,
        "warehouse_memory_mb": resources["warehouse"].memory_mb,
        "full_sync_s": full_s,
        "full": full,
        "incremental_sync_s": incr_s,
        "incremental": incremental,
        "peak_rss_mb": harness.peak_rss_mb(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"co_sync-{args.students}-{args.page_size}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
