"""Diagnostic: the incremental Stud.IP crawl's seed query at N students.

    .venv/bin/python bench/studip_changed_users.py --students 10000

``assets.studip.changed_studip_user_ids`` matches the persons CAMPUSonline and the LMS changed
in a sync to Stud.IP users. This builds its input tables in an in-memory DuckDB (N CO students,
1.1 N Stud.IP users, N/3 LMS learners; a few dozen changed) and times the product's function, and
its CO query with and without the ``OR STPERSONNR IN (changed studies/applications)`` clause.
Prints one JSON object and writes it to bench/results/studip_changed_users-<N>.json.
"""

from __future__ import annotations

import argparse
import time

import duckdb
import harness

from assets.studip import changed_studip_user_ids

TABLES = """
CREATE TABLE co_students AS
    SELECT i AS STPERSONNR, i AS STUDID, 'p' || i || '@uni.example' AS EMAILADDRESSTU,
           CASE WHEN i % {every_student} = 0 THEN 'incr-1' ELSE 'full-1' END AS changed_in_sync
    FROM range({n}) r(i);
CREATE TABLE co_studies AS
    SELECT i AS STPERSONNR,
           CASE WHEN i % {every_study} = 0 THEN 'incr-1' ELSE 'full-1' END AS changed_in_sync
    FROM range({n}) r(i);
CREATE TABLE co_applications AS
    SELECT i AS STPERSONNR, 'full-1' AS changed_in_sync FROM range({n}) r(i);
CREATE TABLE studip_users AS
    SELECT 'u' || i AS user_id, 'user' || i AS username, 'P' || i || '@UNI.example' AS email,
           MAP {{'Matrikelnummer': CAST(i AS VARCHAR)}} AS datafields
    FROM range({users}) r(i);
CREATE TABLE lms_learners AS
    SELECT i AS StudentId, 'p' || i || '@uni.example' AS EmailAddress,
           'user' || i AS OrganizationLoginId,
           CASE WHEN i % {every_learner} = 0 THEN 'incr-1' ELSE 'full-1' END AS changed_in_sync
    FROM range({learners}) r(i);
"""

CO_QUERY = """
SELECT u.user_id FROM co_students s JOIN studip_users u
  ON u.datafields['Matrikelnummer'] = CAST(s.STUDID AS VARCHAR)
  OR lower(u.email) = lower(s.EMAILADDRESSTU)
WHERE s.changed_in_sync = 'incr-1'{related}
"""
RELATED = """ OR s.STPERSONNR IN (
    SELECT STPERSONNR FROM co_studies WHERE changed_in_sync = 'incr-1'
    UNION SELECT STPERSONNR FROM co_applications WHERE changed_in_sync = 'incr-1')"""


def timed(run: object) -> tuple[float, int]:
    started = time.perf_counter()
    found = run()  # type: ignore[operator]
    return round(time.perf_counter() - started, 2), len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=10000)
    args = parser.parse_args()
    n = args.students
    conn = duckdb.connect()
    conn.execute(
        TABLES.format(
            n=n,
            users=int(n * 1.1),
            learners=n // 3,
            every_student=max(1, n // 50),
            every_study=max(1, n // 20),
            every_learner=max(1, n // 30),
        )
    )
    product_s, matched = timed(lambda: changed_studip_user_ids(conn, "incr-1"))
    with_s, _ = timed(lambda: conn.execute(CO_QUERY.format(related=RELATED)).fetchall())
    without_s, _ = timed(lambda: conn.execute(CO_QUERY.format(related="")).fetchall())
    result = {
        "benchmark": "studip_changed_users",
        "students": n,
        "users_matched": matched,
        "changed_studip_user_ids_s": product_s,
        "co_query_s": with_s,
        "co_query_without_related_clause_s": without_s,
        "note": harness.SHARED_MACHINE_NOTE,
    }
    harness.write_result(f"studip_changed_users-{n}", result)


if __name__ == "__main__":
    main()
