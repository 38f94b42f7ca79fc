"""Diagnostic: how far the Stud.IP crawl's queues grow, to explain its memory at scale.

    .venv/bin/python bench/studip_queue_probe.py --students 5000

Runs the real ``studip_raw_pages`` (the sandbox in its own process) while a thread samples the
crawl's two queues every 0.05 s: requests submitted to the thread pool but not started
(``_Crawl._pool._work_queue``, unbounded) and fetched pages waiting for the landing thread
(``_Crawl._events``, bounded at 50 per worker since 2026-12-01: at 10k students 20,811 had
waited), with this process's resident set. Prints one JSON object and writes it to
bench/results/studip_queue_probe-<N>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import harness

from assets.partitions import new_sync_key
from assets.studip import studip_raw_pages
from assets.sync import sync_run
from resources import studip as studip_module
from resources.settings import load_settings
from resources.studip import studip_resource
from resources.warehouse import WarehouseResource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=5000)
    args = parser.parse_args()

    crawls: list[studip_module._Crawl] = []
    original_init = studip_module._Crawl.__init__

    def remembering_init(self: studip_module._Crawl, *a: object, **k: object) -> None:
        original_init(self, *a, **k)  # type: ignore[arg-type]
        crawls.append(self)

    studip_module._Crawl.__init__ = remembering_init  # type: ignore[method-assign]
    samples: list[tuple[int, int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            if crawls and hasattr(crawls[-1], "_pool"):
                crawl = crawls[-1]
                rss = float(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
                samples.append(
                    (crawl._pool._work_queue.qsize(), crawl._events.qsize(), round(rss, 1))
                )

    with tempfile.TemporaryDirectory() as tmp, harness.sandbox_process(args.students) as sandbox:
        settings = load_settings(harness.settings_env(sandbox, Path(tmp) / "w.duckdb"))
        key = new_sync_key("full")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("sync_runs", [key])
            started = time.perf_counter()
            result = dg.materialize(
                [sync_run, studip_raw_pages],
                partition_key=key,
                instance=instance,
                resources={
                    "warehouse": WarehouseResource(path=str(Path(tmp) / "w.duckdb")),
                    "studip": studip_resource(settings.studip),
                },
            )
            crawl_s = round(time.perf_counter() - started, 1)
        stop.set()
    pending = [s[0] for s in samples] or [0]
    waiting = [s[1] for s in samples] or [0]
    result_json = {
        "benchmark": "studip_queue_probe",
        "students": args.students,
        "success": result.success,
        "crawl_s": crawl_s,
        "max_requests_queued": max(pending),
        "max_pages_waiting_to_land": max(waiting),
        "peak_rss_mb": max((s[2] for s in samples), default=None),
        "samples": len(samples),
        "note": harness.SHARED_MACHINE_NOTE,
    }
    harness.write_result(f"studip_queue_probe-{args.students}", result_json)


if __name__ == "__main__":
    main()
