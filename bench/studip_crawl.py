"""How fast a full Stud.IP sync crawls the sandbox: raw landing plus current state.

    .venv/bin/python bench/studip_crawl.py --students 2000
    .venv/bin/python bench/studip_crawl.py --students 2000 --latency-ms 200 --concurrency 16

``--latency-ms`` makes every sandbox request take at least that long (a real Stud.IP answers in
about 0.2-0.3 s), so the run shows what the bounded concurrency buys. Prints one JSON object and
writes it to bench/results/studip_crawl-<N>-<latency>ms-c<concurrency>.json.
"""

import argparse
import json
from pathlib import Path

import harness

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    # the crawl, as the name says: STUDIP_API_MODE=auto would list through the sandbox's JSON:API
    sync = harness.run_studip_sync(
        api_mode="rest",
        students=args.students,
        seed=args.seed,
        latency_ms=args.latency_ms,
        concurrency=args.concurrency,
    )
    crawl = sync.metadata
    report = {
        "students": args.students,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        **{k: crawl[k] for k in ("requests", "pages", "users", "courses", "memberships")},
        "crawl_s": crawl["duration_s"],
        "requests_per_s": crawl["requests_per_s"],
        "materialize_s": sync.wall_s,
    }
    print(json.dumps(report))
    RESULTS.mkdir(exist_ok=True)
    name = f"studip_crawl-{args.students}-{args.latency_ms}ms-c{args.concurrency}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
