"""Reading the biggest Stud.IP course's members: page size, and pages one after another or
read ahead.

    .venv/bin/python bench/studip_course_pages.py --students 100000

An incremental crawl reads a course's members whenever one of its members joins or leaves it
(``StudipClient.course_members``: after the first page, the others are read ahead with up to
``STUDIP_CONCURRENCY`` in flight). At 100,000 students one course has 26,363 members. The
sandbox runs in its own process (faults off); this reads that course with the REST client one
page after another at several page sizes, then read ahead at each page size, ``--rounds``
times each, and prints the wall times (one JSON object, also written to
bench/results/studip_course_pages-<N>.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from resources.settings import load_settings  # noqa: E402
from resources.studip import StudipClient, studip_resource  # noqa: E402
from sandbox.world import World  # noqa: E402

PAGE_SIZES = (100, 500, 2000)


def read_members(client: StudipClient, course_id: str, page_size: int, read_ahead: bool) -> int:
    client.page_size = page_size
    pages = client.course_members(course_id, read_ahead=read_ahead)
    return sum(len(page.records) for page in pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()
    world = World(args.seed, args.students)  # the sandbox's world: the same seed and size
    course_id, members = max(world.memberships.items(), key=lambda item: len(item[1]))
    del world
    timings: dict[str, list[float]] = {}
    with harness.sandbox_process(args.students, seed=args.seed) as sandbox:
        client = studip_resource(load_settings(sandbox.env).studip).client()
        for _ in range(args.rounds):
            for read_ahead in (False, True):
                for size in PAGE_SIZES:
                    started = time.perf_counter()
                    read = read_members(client, course_id, size, read_ahead)
                    how = "read_ahead" if read_ahead else "one_after_another"
                    timings.setdefault(f"{how}_{size}", []).append(
                        round(time.perf_counter() - started, 3)
                    )
                    assert read == len(members), (read, len(members))
        concurrency = client.concurrency
    harness.write_result(
        f"studip_course_pages-{args.students}",
        {
            "benchmark": "studip_course_pages",
            "students": args.students,
            "course_members": len(members),
            "concurrency": concurrency,
            "wall_s": timings,
            "note": args.note,
        },
    )


if __name__ == "__main__":
    main()
