"""Full syncs at growing sizes: time and peak RSS per size, and how they grow.

    .venv/bin/python bench/scaling.py
    .venv/bin/python bench/scaling.py --sizes 10000 30000 --time-limit-s 1200 --floor

Runs ``bench/full_sync.py --no-floor`` (``--floor`` keeps the floor) once per size, each in its own
process with a time limit, and collects their JSON objects. ``rss_growth_exponent`` is the slope
of log(peak RSS) over log(students) between neighbouring sizes (also without the RSS the process
has before the sync): below 1 is sublinear. A size that
fails or runs out of time is reported with what is known and the larger ones are skipped.
Prints one JSON object and writes it to bench/results/scaling-<sizes>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

FULL_SYNC = Path(__file__).resolve().parent / "full_sync.py"
TARGETS = {"end_to_end_s_at_100k": 600, "peak_rss_mb": 1536, "rss_growth": "sublinear"}


def run_size(students: int, *, floor: bool, time_limit_s: float, note: str) -> dict[str, Any]:
    command = [sys.executable, str(FULL_SYNC), "--students", str(students), "--note", note]
    if not floor:
        command.append("--no-floor")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=time_limit_s, cwd=harness.ROOT
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return {
            "students": students,
            "outcome": f"time limit of {time_limit_s:g} s reached",
            "last_progress": _last_lines(stderr),
        }
    wall = round(time.perf_counter() - started, 1)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {
            "students": students,
            "outcome": f"exit code {done.returncode}",
            "last_progress": _last_lines(done.stderr),
        }
    full = json.loads(lines[-1])
    return {
        "students": students,
        "outcome": "ok" if full["success"] else f"sync failed: {full['error']}",
        "process_wall_s": wall,
        "end_to_end_s": full["end_to_end_s"],
        "fetch_and_land_s": full["full_sync_fetch_and_land_s"],
        "ratio": full["ratio"],
        "peak_rss_mb": full["peak_rss_mb"],
        "rss_above_baseline_mb": round(full["peak_rss_mb"] - full["baseline_rss_mb"], 1),
        "sandbox_peak_rss_mb": full["sandbox_peak_rss_mb"],
        "warehouse_mb": full["warehouse_mb"],
        "requests_served": full["requests_served"],
        "hub_events": full["hub"]["events"],
        "stages": full["stages"],
    }


def _last_lines(text: str, count: int = 5) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()[-count:]]


def growth_exponents(runs: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """log(y2/y1) / log(n2/n1) between neighbouring completed sizes."""
    done = [run for run in runs if run.get(field)]
    return [
        {
            "from": a["students"],
            "to": b["students"],
            "exponent": round(
                math.log(b[field] / a[field]) / math.log(b["students"] / a["students"]), 2
            ),
        }
        for a, b in zip(done, done[1:], strict=False)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    parser.add_argument("--time-limit-s", type=float, default=1800)
    parser.add_argument("--floor", action="store_true", help="measure the floor at each size")
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    for students in sorted(args.sizes):
        print(f"scaling: full sync at {students} students ...", file=sys.stderr, flush=True)
        run = run_size(students, floor=args.floor, time_limit_s=args.time_limit_s, note=args.note)
        runs.append(run)
        if run["outcome"] != "ok":
            break
    result = {
        "benchmark": "scaling",
        "sizes": sorted(args.sizes),
        "runs": runs,
        "rss_growth_exponent": growth_exponents(runs, "peak_rss_mb"),
        # without the imports' fixed share, which flatters the exponent at small sizes
        "rss_above_baseline_growth_exponent": growth_exponents(runs, "rss_above_baseline_mb"),
        "time_growth_exponent": growth_exponents(runs, "end_to_end_s"),
        "targets": TARGETS,
        "note": args.note,
    }
    harness.write_result("scaling-" + "-".join(str(n) for n in sorted(args.sizes)), result)


if __name__ == "__main__":
    main()
