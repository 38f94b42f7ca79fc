"""How long the sandbox takes to build its world and start serving, and its memory.

    .venv/bin/python bench/sandbox_start.py --students 500
    .venv/bin/python bench/sandbox_start.py --students 100000

Prints one JSON object and writes it to bench/results/sandbox_start-<N>.json. Targets (issue #2):
500 students ready in under 2 s; 100,000 possible.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import requests

from sandbox.server import running_sandbox
from sandbox.world import World

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    started = time.perf_counter()
    world = World(args.seed, args.students)
    built = time.perf_counter()
    with running_sandbox(port_base=0, world=world) as sandbox:
        ready = time.perf_counter()
        first = requests.get(f"{sandbox.urls['studip']}/semesters", timeout=30)
        first.raise_for_status()
        answered = time.perf_counter()
        from sandbox.expected import expected_hub_state

        expected = expected_hub_state(world)
        projected = time.perf_counter()
    result = {
        "benchmark": "sandbox_start",
        "students": args.students,
        "world_build_s": round(built - started, 3),
        "servers_start_s": round(ready - built, 3),
        "ready_s": round(answered - started, 3),
        "expected_state_s": round(projected - answered, 3),
        "records": {
            "co_students": len(world.co_students),
            "co_studies": len(world.co_studies),
            "co_applications": len(world.co_applications),
            "studip_users": len(world.studip_users),
            "studip_courses": len(world.studip_courses),
            "studip_memberships": sum(len(m) for m in world.memberships.values()),
            "lms_registrations": len(world.lms_registrations),
            "hub_objects": sum(len(v) for v in expected.state.values()),
        },
        "peak_rss_mb": peak_rss_mb(),
        "target_ready_s_at_500": 2.0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"sandbox_start-{args.students}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
