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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHARED_MACHINE_NOTE, peak_rss_mb, run_studip_sync  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TABLES = ("studip_users", "studip_courses", "studip_memberships", "studip_user_institutes")


def run_mode(mode: str, students: int, seed: int, latency_ms: int, concurrency: int) -> dict:
    sync = run_studip_sync(
        api_mode=mode,
        students=students,
        seed=seed,
        latency_ms=latency_ms,
        concurrency=concurrency,
        tables=TABLES,
    )
    numbers = sync.metadata
    return {
        "mode": numbers["api_mode"],
        "requests": numbers["requests"],
        "jsonapi_requests": numbers["jsonapi_requests"],
        "requests_served": sync.requests_served,
        "fetch_and_land_s": numbers["duration_s"],
        "wall_s": sync.wall_s,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": sync.baseline_rss_mb,
        "rows": sync.rows,
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
