"""The HUB diff at N users: desired against acknowledged state, 1 % changed.

    .venv/bin/python bench/diff.py --users 1000000
    .venv/bin/python bench/diff.py --users 100000

A child process builds a warehouse with the product's schema (``MIGRATIONS`` through
``WarehouseResource``) holding N users in ``hub_desired`` and ``hub_state``: 1 % of them with
another name (updates), 0.1 % only desired (inserts), 0.1 % only acknowledged (deletes, as a full
sync sends them). This process then runs the product's ``assets.hub.diff.diff`` on it, as
``hub_payload`` does, and reports its wall time (and the SQL's share), the changes found (they
must be exactly the ones built) and its peak RSS. Prints one JSON object and writes it to
bench/results/diff-<N>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import harness

from assets.hub.diff import DIFF_SQL, diff
from resources.warehouse import WarehouseResource

TARGETS = {"diff_s_at_1m": 10, "peak_rss_mb_at_1m": 2048}

USERS_SQL = """
INSERT INTO {table}
SELECT 'user', printf('U%08d', i), printf('S%08d', i),
       json_object('code', printf('U%08d', i), 'sis_id', printf('S%08d', i),
                   'name', {name}, 'dob', '2001-02-03', 'gender', 'F',
                   'email', printf('student%d@uni.example', i), 'status', 'active',
                   'roles', json_array(json_object('code', 'aluno'))){extra}
FROM range({first}, {last}) AS r(i)
"""


def expected_changes(users: int) -> dict[str, int]:
    extra = users // 1000
    first_changed = -(-extra // 100) * 100  # users below `extra` are inserts, not updates
    return {"update": len(range(first_changed, users, 100)), "insert": extra, "delete": extra}


def build(path: Path, users: int) -> None:
    """hub_desired: users 0..N-1 plus N/1000 new ones; hub_state: users N/1000..N-1 (1 % with
    another name) plus N/1000 that are no longer desired."""
    extra = users // 1000
    state = ", true, 'full-20261122T020000Z', NULL, TIMESTAMPTZ '2026-11-22 02:30:00+00'"
    desired_name = "printf('Student %d', i)"
    state_name = "printf(CASE WHEN i % 100 = 0 THEN 'Former %d' ELSE 'Student %d' END, i)"
    with WarehouseResource(path=str(path)).connection() as conn:
        conn.execute(
            USERS_SQL.format(
                table="hub_desired", name=desired_name, extra=", 'bench'", first=0, last=users
            )
        )
        conn.execute(
            USERS_SQL.format(
                table="hub_state", name=state_name, extra=state, first=extra, last=users + extra
            )
        )
        conn.execute("CHECKPOINT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100000)
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--note", default=harness.SHARED_MACHINE_NOTE)
    args = parser.parse_args()
    if args.build_only:
        build(args.build_only, args.users)
        return

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "diff.duckdb"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--users", str(args.users), "--build-only", str(path)],
            check=True,
        )
        build_s = round(time.perf_counter() - started, 2)
        with WarehouseResource(path=str(path)).connection() as conn:
            rss_before = harness.peak_rss_mb()
            started = time.perf_counter()
            changes = diff(conn, full=True)
            diff_s = round(time.perf_counter() - started, 3)
            rss_after = harness.peak_rss_mb()
            started = time.perf_counter()
            rows = len(conn.execute(DIFF_SQL, {"full": True}).fetchall())
            sql_s = round(time.perf_counter() - started, 3)
        warehouse_mb = harness.file_size_mb(path)

    found = Counter(change.action for change in changes)
    result = {
        "benchmark": "diff",
        "users": args.users,
        "diff_s": diff_s,
        "diff_sql_only_s": sql_s,
        "changes": dict(sorted(found.items())),
        "changes_expected": expected_changes(args.users),
        "correct": dict(found) == expected_changes(args.users) and rows == len(changes),
        "peak_rss_mb": rss_after,
        "rss_before_diff_mb": rss_before,
        "build_s": build_s,
        "warehouse_mb": warehouse_mb,
        "targets": TARGETS,
        "note": args.note,
    }
    harness.write_result(f"diff-{args.users}", result)


if __name__ == "__main__":
    main()
