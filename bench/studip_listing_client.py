"""The Stud.IP JSON:API client alone: one listing of every user with their memberships.

    .venv/bin/python bench/studip_listing_client.py --students 30000

The sandbox runs in its own process (faults off). The client lists
``/users?include=course-memberships`` as a sync does (``STUDIP_PAGE_SIZE``, ``STUDIP_CONCURRENCY``
pages in flight, every record parsed and validated) and drops the pages: nothing is landed. Reports
pages, megabytes, wall and CPU time of this process (the parsing; the sandbox's work is in its
own process), and the users and memberships handed over. Prints one JSON object and writes it to
bench/results/studip_listing_client-<N>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from resources.settings import load_settings  # noqa: E402
from resources.studip import studip_resource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()
    with harness.sandbox_process(args.students, seed=args.seed) as sandbox:
        settings = load_settings(sandbox.env).studip
        client = studip_resource(settings).jsonapi_client()
        pages = users = memberships = size = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for page in client.users(include_memberships=True):
            pages += 1
            size += len(page.body)
            users += len(page.records)
            memberships += len(page.included)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    harness.write_result(
        f"studip_listing_client-{args.students}",
        {
            "benchmark": "studip_listing_client",
            "students": args.students,
            "pages": pages,
            "megabytes": round(size / 1e6, 1),
            "users": users,
            "memberships": memberships,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "page_size": settings.listing_page_size,
            "concurrency": settings.concurrency,
            "note": args.note,
        },
    )


if __name__ == "__main__":
    main()
