"""Reading the biggest Stud.IP course's members: page size, and pages one after another or
several in flight.

    .venv/bin/python bench/studip_course_pages.py --students 100000

An incremental crawl reads a course's members whenever one of its members joins or leaves it,
one page after another (``StudipClient.pages``). At 100,000 students one course has 26,363
members. The sandbox runs in its own process (faults off); this reads that course with the
REST client at several page sizes, then all its pages of 500 with ``STUDIP_CONCURRENCY`` in
flight, ``--rounds`` times each, and prints the wall times (one JSON object, also written to
bench/results/studip_course_pages-<N>.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from resources.settings import load_settings  # noqa: E402
from resources.studip import StudipClient, studip_resource  # noqa: E402
from sandbox.world import World  # noqa: E402

PAGE_SIZES = (100, 500, 2000)
CONCURRENT_PAGE_SIZE = 500


def read_one_after_another(client: StudipClient, course_id: str, page_size: int) -> int:
    client.page_size = page_size
    return sum(len(page.records) for page in client.course_members(course_id))


def read_concurrently(client: StudipClient, course_id: str, total: int) -> int:
    """Every page of the course at once, ``client.concurrency`` in flight."""
    client.page_size = CONCURRENT_PAGE_SIZE

    def page_at(offset: int) -> int:
        path = f"/course/{course_id}/members"
        response = client._get(
            "/course/:course_id/members", path, {"offset": offset, "limit": CONCURRENT_PAGE_SIZE}
        )
        return len(client.http.json(response)["collection"])

    offsets = range(0, total, CONCURRENT_PAGE_SIZE)
    with ThreadPoolExecutor(max_workers=client.concurrency) as pool:
        return sum(pool.map(page_at, offsets))


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
            for size in PAGE_SIZES:
                started = time.perf_counter()
                read = read_one_after_another(client, course_id, size)
                timings.setdefault(f"one_after_another_{size}", []).append(
                    round(time.perf_counter() - started, 3)
                )
                assert read == len(members), (read, len(members))
            started = time.perf_counter()
            read = read_concurrently(client, course_id, len(members))
            timings.setdefault(f"concurrent_{CONCURRENT_PAGE_SIZE}", []).append(
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
