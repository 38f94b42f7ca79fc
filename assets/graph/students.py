"""The student graph read back: every person as the connector's student JSON with their
sources' records (``hubsync export students``), and the persons the HUB is not sent (``hubsync
export unsendable_persons``). The SQL reads the graph's tables and views (``persons``,
``person_links``, ``person_*``), so it lives beside the graph, not in the command line."""

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from assets.campusonline.connector_json import STUDENT_KEYS, co_model_from_row, student_json
from resources.campusonline import CoApplication, CoStudent, CoStudy

# The persons hub_desired leaves out (hubsync demo's summary counts them as unsendable_persons).
UNSENDABLE_PERSONS_SQL = """
SELECT person_key, unsendable_reason, co_stpersonnr, studip_user_id, lms_login, roles
FROM persons WHERE unsendable_reason IS NOT NULL
ORDER BY unsendable_reason, person_key
"""


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


def student_documents(
    conn: duckdb.DuckDBPyConnection, *, co_base_url: str, zone: ZoneInfo
) -> Iterator[dict[str, Any]]:
    """Every person of the graph, in person key order: the connector's student JSON (its keys
    null for a person CAMPUSonline does not know) with embedded ``studies`` and
    ``applications``, plus ``courses`` (Stud.IP memberships) and ``registrations`` (LMS), and
    the person's key and links."""
    result = conn.execute(STUDENTS_SQL)
    columns = [d[0] for d in result.description]
    while rows := result.fetchmany(FETCH_ROWS):
        for values in rows:
            person = dict(zip(columns, values, strict=True))
            yield {
                "personKey": person["person_key"],
                "links": person["links"],
                **_student(person, co_base_url, zone),
                "courses": person["courses"],
                "registrations": person["registrations"],
            }


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
