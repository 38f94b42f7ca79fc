"""`hubsync export TABLE`: any warehouse table or view to stdout as JSON lines or CSV, written by
DuckDB; `hubsync export students`: every person of the graph as the connector's student JSON;
`hubsync export unsendable_persons`: the persons the HUB is not sent, with the reason."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

import duckdb

from assets.campusonline_json import STUDENT_KEYS, co_model_from_row, student_json
from resources.campusonline import CoApplication, CoStudent, CoStudy
from resources.warehouse import inflate, table_columns

ExportFormat = Literal["jsonl", "csv"]
_COPY_OPTIONS: dict[ExportFormat, str] = {"jsonl": "FORMAT json", "csv": "FORMAT csv, HEADER"}


def warehouse_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
        "UNION SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
        "ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def export_table(
    conn: duckdb.DuckDBPyConnection, table: str, fmt: ExportFormat, out: TextIO
) -> None:
    """Write ``table`` (which must exist) to ``out``. JSON columns stay JSON in JSON lines; a
    raw table's compressed page bodies (``body_zlib``) come out as ``body``, as received."""
    if table not in warehouse_tables(conn):
        raise ValueError(f"no table {table!r} in the warehouse")
    quoted = '"' + table.replace('"', '""') + '"'
    _export_query(conn, f"SELECT {_columns(conn, table)} FROM {quoted}", fmt, out)


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> str:
    """``*``, with a raw table's ``body_zlib`` (and ``body_bytes``) replaced by ``body``."""
    columns = table_columns(conn, table)
    if "body_zlib" not in columns:
        return "*"
    if not conn.execute(
        "SELECT 1 FROM duckdb_functions() WHERE function_name = 'hubsync_inflate'"
    ).fetchall():
        conn.create_function(  # NULL in, NULL out, without calling it
            "hubsync_inflate",
            inflate,
            [duckdb.sqltype("BLOB")],
            duckdb.sqltype("VARCHAR"),
        )
    inflated = "hubsync_inflate(body_zlib)::JSON"
    body = f"coalesce(body, {inflated})" if "body" in columns else inflated
    excluded = "body_zlib, body_bytes" + (", body" if "body" in columns else "")
    return f"* EXCLUDE ({excluded}), {body} AS body"


# The persons hub_desired leaves out (hubsync demo's summary counts them as unsendable_persons).
UNSENDABLE_PERSONS_SQL = """
SELECT person_key, unsendable_reason, co_stpersonnr, studip_user_id, lms_login, roles
FROM persons WHERE unsendable_reason IS NOT NULL
ORDER BY unsendable_reason, person_key
"""


def export_unsendable_persons(
    conn: duckdb.DuckDBPyConnection, fmt: ExportFormat, out: TextIO
) -> None:
    """Write the persons the HUB is not sent, why, and their ids in each source."""
    _export_query(conn, UNSENDABLE_PERSONS_SQL, fmt, out)


def _export_query(
    conn: duckdb.DuckDBPyConnection, query: str, fmt: ExportFormat, out: TextIO
) -> None:
    with tempfile.TemporaryDirectory(prefix="hubsync-export-") as folder:
        target = Path(folder) / f"export.{fmt}"
        path = str(target).replace("'", "''")
        conn.execute(f"COPY ({query}) TO '{path}' ({_COPY_OPTIONS[fmt]})")
        with target.open(encoding="utf-8") as exported:
            shutil.copyfileobj(exported, out)


# One row per person: the person, its links, and each source's records as lists of structs.
STUDENTS_SQL = """
WITH links AS (
    SELECT person_key, list(struct_pack(system, sourceId := source_id, rule)
                            ORDER BY system, source_id) AS links
    FROM person_links GROUP BY person_key
), students AS (
    SELECT person_key, any_value(s) AS student FROM person_co_students s GROUP BY person_key
), studies AS (
    SELECT person_key, list(s ORDER BY s.STSTUDIUMNR) AS studies
    FROM person_co_studies s GROUP BY person_key
), applications AS (
    SELECT person_key, list(a ORDER BY a.BEWERBUNGNR) AS applications
    FROM person_co_applications a GROUP BY person_key
), courses AS (
    SELECT person_key, list(struct_pack(
               id := course_id, number, title, type := type_name,
               startSemester := start_semester, status := membership_status)
           ORDER BY course_id) AS courses
    FROM person_studip_courses GROUP BY person_key
), registrations AS (
    SELECT person_key, list(struct_pack(
               id := RegistrationId, status := RegistrationStatusName, courseId := CourseId,
               courseCode := CourseCode, offering := OfferingShortId,
               registrationDate := strftime(RegistrationDate AT TIME ZONE 'UTC',
                                            '%Y-%m-%dT%H:%M:%SZ'),
               completionDate := strftime(CompletionDate AT TIME ZONE 'UTC',
                                          '%Y-%m-%dT%H:%M:%SZ'))
           ORDER BY RegistrationId) AS registrations
    FROM person_lms_registrations GROUP BY person_key
)
SELECT p.person_key, coalesce(l.links, []) AS links, s.student,
       coalesce(st.studies, []) AS studies, coalesce(a.applications, []) AS applications,
       coalesce(c.courses, []) AS courses, coalesce(r.registrations, []) AS registrations
FROM persons p
LEFT JOIN links l USING (person_key)
LEFT JOIN students s USING (person_key)
LEFT JOIN studies st USING (person_key)
LEFT JOIN applications a USING (person_key)
LEFT JOIN courses c USING (person_key)
LEFT JOIN registrations r USING (person_key)
ORDER BY p.person_key
"""
FETCH_ROWS = 1000


def export_students(
    conn: duckdb.DuckDBPyConnection, out: TextIO, *, co_base_url: str, zone: ZoneInfo
) -> int:
    """Write every person of the graph as one JSON line: the connector's student JSON (its keys
    null for a person CAMPUSonline does not know) with embedded ``studies`` and
    ``applications``, plus ``courses`` (Stud.IP memberships) and ``registrations`` (LMS), and
    the person's key and links. Returns the number of persons written."""
    result = conn.execute(STUDENTS_SQL)
    columns = [d[0] for d in result.description]
    written = 0
    while rows := result.fetchmany(FETCH_ROWS):
        for values in rows:
            person = dict(zip(columns, values, strict=True))
            document = {
                "personKey": person["person_key"],
                "links": person["links"],
                **_student(person, co_base_url, zone),
                "courses": person["courses"],
                "registrations": person["registrations"],
            }
            out.write(json.dumps(document, ensure_ascii=False) + "\n")
            written += 1
    return written


def _student(person: dict[str, Any], co_base_url: str, zone: ZoneInfo) -> dict[str, Any]:
    if person["student"] is None:
        return dict.fromkeys(STUDENT_KEYS) | {"studies": [], "applications": []}
    return student_json(
        co_model_from_row(CoStudent, person["student"], zone),
        [co_model_from_row(CoStudy, row, zone) for row in person["studies"]],
        [co_model_from_row(CoApplication, row, zone) for row in person["applications"]],
        base_url=co_base_url,
        zone=zone,
    )
