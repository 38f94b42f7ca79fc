"""The merged student graph and the HUB's desired state.

``persons`` resolves identities across CAMPUSonline, Stud.IP and the LMS (DESIGN §5) into
``persons`` and ``person_links`` (system, source id, person, rule used); ``hub_desired`` maps
the graph onto HUB objects (DESIGN §6). The rules, in their default order (HUBSYNC_MATCH_RULES
reorders them or leaves some out; the fields are STUDIP_STUDENT_ID_FIELD and
LMS_STUDENT_ID_FIELD), first match wins:

1. every CO student is a person (``co:<STPERSONNR>``);
2. a Stud.IP user joins the person whose CO ``STUDID`` equals its ``Matrikelnummer``
   datafield, else whose CO university e-mail equals its e-mail (case-insensitive);
3. an LMS learner with a registration joins the person whose CO ``STUDID`` equals its
   ``StudentId`` profile field, else who has its e-mail (CO or Stud.IP, case-insensitive), else
   whose Stud.IP username equals its login.

Within a rule the smallest person key wins; when several records of one system pick the same
person, the smallest id joins it and the others stay persons of their own (rule ``conflict``,
counted by a check). ``sandbox/expected.py`` implements the same rules independently, which is
what the end-to-end tests compare against.

Values the HUB requires but no source has are never invented: a person without a user code
(an applicant without matriculation number), without a date of birth (most LMS-only crew), or
with a teacher role but no CPF or e-mail is not sent; ``persons.unsendable_reason`` says why.
"""

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field

from resources.warehouse import WarehouseResource, transaction

MATCH_RULES = ("studid", "email", "login")  # the default order (DESIGN §5)


class GraphSettings(dg.ConfigurableResource):
    """How identities match (HUBSYNC_MATCH_RULES, STUDIP_STUDENT_ID_FIELD) and how the graph
    maps onto the HUB: the university's time zone (CO_TIMEZONE) for semester dates and term
    codes."""

    timezone: str = "Europe/Vienna"
    match_rules: list[str] = Field(
        default_factory=lambda: list(MATCH_RULES),
        description="Identity rules in priority order: studid, email, login.",
    )
    studip_student_id_field: str = Field(
        default="Matrikelnummer", description="Stud.IP datafield with the matriculation number."
    )


STUDENT_ID_FIELD = "Matrikelnummer"
BIRTHDATE_FIELD = "Geburtsdatum"
CPF_FIELD = "CPF"
LMS_STUDENT_ID_FIELD = "StudentId"
STUDENT_STATUSES = ("autor", "user")
STAFF_STATUSES = ("dozent", "tutor")

# Per system, the rules that can match its records: (id, choice) pairs, choice a person key.
STUDIP_CANDIDATES = {
    "studid": """SELECT u.user_id AS id, min(c.person_key) AS choice FROM studip_users u
        JOIN g_co c ON c.STUDID = u.datafields[{field}] GROUP BY 1""",
    "email": """SELECT u.user_id AS id, min(c.person_key) AS choice FROM studip_users u
        JOIN g_co c ON c.email = lower(u.email) GROUP BY 1""",
}
LMS_CANDIDATES = {
    "studid": """SELECT l.OrganizationLoginId AS id, min(c.person_key) AS choice FROM learners l
        JOIN g_co c ON c.STUDID = l.StudentId GROUP BY 1""",
    "email": """SELECT l.OrganizationLoginId AS id, min(e.person_key) AS choice FROM learners l
        JOIN emails e ON e.email = lower(l.EmailAddress) GROUP BY 1""",
    "login": """SELECT l.OrganizationLoginId AS id, min(s.person_key) AS choice FROM learners l
        JOIN g_studip s ON s.username = l.OrganizationLoginId GROUP BY 1""",
}


def _choices_sql(candidates: dict[str, str], rules: Sequence[str], field: str) -> str:
    """CTEs ``rule_<name>`` in priority order (each leaving out what an earlier one matched),
    then ``choices`` (id, choice, rule)."""
    ctes, earlier = [], []
    for rule in (r for r in rules if r in candidates):
        sql = candidates[rule].format(field=field)
        taken = " UNION ".join(f"SELECT id FROM rule_{e}" for e in earlier)
        ctes.append(
            f"rule_{rule} AS (SELECT * FROM ({sql})"
            + (f" WHERE id NOT IN ({taken}))" if earlier else ")")
        )
        earlier.append(rule)
    union = " UNION ALL ".join(f"SELECT id, choice, '{r}' AS rule FROM rule_{r}" for r in earlier)
    empty = "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS choice, NULL::VARCHAR AS rule LIMIT 0"
    return ", ".join([*ctes, f"choices AS ({union or empty})"])


def identity_sql(rules: Sequence[str] = MATCH_RULES, studip_field: str = STUDENT_ID_FIELD) -> str:
    """Temp tables ``g_co``, ``g_studip``, ``g_lms`` (each record with its person and rule)
    and ``person_links``, matching by ``rules`` in priority order."""
    field = "'" + studip_field.replace("'", "''") + "'"
    return f"""
CREATE OR REPLACE TEMP TABLE g_co AS
SELECT 'co:' || STPERSONNR AS person_key, STPERSONNR, STUDID, lower(EMAILADDRESSTU) AS email
FROM co_students;

CREATE OR REPLACE TEMP TABLE g_studip AS
WITH {_choices_sql(STUDIP_CANDIDATES, rules, field)},
ranked AS (
    SELECT u.user_id, u.username, lower(u.email) AS email, c.choice, c.rule,
           row_number() OVER (PARTITION BY c.choice ORDER BY u.user_id) AS rank
    FROM studip_users u LEFT JOIN choices c ON c.id = u.user_id
)
SELECT user_id, username, email,
       CASE WHEN choice IS NOT NULL AND rank = 1 THEN choice ELSE 'studip:' || user_id END
           AS person_key,
       CASE WHEN choice IS NULL THEN 'own' WHEN rank = 1 THEN rule ELSE 'conflict' END AS rule
FROM ranked;

CREATE OR REPLACE TEMP TABLE g_lms AS
WITH learners AS (
    SELECT * FROM lms_learners l WHERE EXISTS (
        SELECT 1 FROM lms_registrations r WHERE r.OrganizationLoginId = l.OrganizationLoginId)
), emails AS (
    SELECT email, person_key FROM g_co WHERE email IS NOT NULL
    UNION SELECT email, person_key FROM g_studip WHERE email IS NOT NULL
), {_choices_sql(LMS_CANDIDATES, rules, field)},
ranked AS (
    SELECT l.OrganizationLoginId AS login, c.choice, c.rule,
           row_number() OVER (PARTITION BY c.choice ORDER BY l.OrganizationLoginId) AS rank
    FROM learners l LEFT JOIN choices c ON c.id = l.OrganizationLoginId
)
SELECT login,
       CASE WHEN choice IS NOT NULL AND rank = 1 THEN choice ELSE 'lms:' || login END
           AS person_key,
       CASE WHEN choice IS NULL THEN 'own' WHEN rank = 1 THEN rule ELSE 'conflict' END AS rule
FROM ranked;

DELETE FROM person_links;
INSERT INTO person_links
SELECT 'co', STPERSONNR::VARCHAR, person_key, 'anchor' FROM g_co
UNION ALL SELECT 'studip', user_id, person_key, rule FROM g_studip
UNION ALL SELECT 'lms', login, person_key, rule FROM g_lms;
"""


PERSONS_SQL = f"""
DELETE FROM persons;
INSERT INTO persons
WITH keys AS (
    SELECT person_key FROM g_co UNION SELECT person_key FROM g_studip
    UNION SELECT person_key FROM g_lms
), courses AS (
    SELECT course_id FROM studip_courses WHERE start_semester_id IS NOT NULL
), studip_roles AS (
    SELECT m.user_id,
           bool_or(m.status IN {STUDENT_STATUSES}) AS student,
           bool_or(m.status IN {STAFF_STATUSES}) AS staff
    FROM studip_memberships m JOIN courses USING (course_id) GROUP BY m.user_id
)
SELECT k.person_key, c.STPERSONNR, s.user_id, l.login,
       list_filter(['aluno', 'professor'], lambda role: (role = 'aluno' AND (
               c.person_key IS NOT NULL OR coalesce(r.student, false) OR l.login IS NOT NULL))
           OR (role = 'professor' AND coalesce(r.staff, false))),
       NULL, NULL
FROM keys k
LEFT JOIN g_co c USING (person_key)
LEFT JOIN g_studip s USING (person_key)  -- at most one of each system per person
LEFT JOIN g_lms l USING (person_key)
LEFT JOIN studip_roles r ON r.user_id = s.user_id;
"""

USERS_SQL = f"""
SELECT p.person_key, p.roles,
       coalesce(c.STUDID, CASE WHEN c.STPERSONNR IS NULL THEN coalesce(u.username, p.lms_login)
                          END) AS code,
       coalesce(c.STPERSONNR::VARCHAR, u.user_id, p.lms_login) AS sis_id,
       coalesce(c.GIVENNAME, u.given, l.FirstName) AS given,
       coalesce(c.FAMILYNAME, u.family, l.LastName) AS family,
       CASE WHEN c.STPERSONNR IS NOT NULL THEN c.BIRTHDATE::VARCHAR
            ELSE u.datafields['{BIRTHDATE_FIELD}'] END AS dob,
       c.GENDERKEY AS gender_key,
       coalesce(c.EMAILADDRESSTU, u.email, l.EmailAddress) AS email,
       u.datafields['{CPF_FIELD}'] AS cpf,
       c.STPERSONNR IS NOT NULL AND c.EXMATRICULATIONDATE IS NOT NULL AS exmatriculated
FROM persons p
LEFT JOIN co_students c ON c.STPERSONNR = p.co_stpersonnr
LEFT JOIN studip_users u ON u.user_id = p.studip_user_id
LEFT JOIN lms_learners l ON l.OrganizationLoginId = p.lms_login
WHERE len(p.roles) > 0
ORDER BY p.person_key
"""


@dataclass(frozen=True)
class DesiredRow:
    object_type: str
    key: str
    payload: dict[str, Any]
    origin: str


def resolve_identities(
    conn: duckdb.DuckDBPyConnection,
    rules: Sequence[str] = MATCH_RULES,
    studip_field: str = STUDENT_ID_FIELD,
) -> dict[str, int]:
    """Fill ``person_links`` and ``persons``, matching by ``rules`` in priority order (a
    Stud.IP user's matriculation number in its datafield ``studip_field``); return links per
    rule (``system:rule``)."""
    with transaction(conn):
        conn.execute(identity_sql(rules, studip_field))
        conn.execute(PERSONS_SQL)
    rows = conn.execute("SELECT system || ':' || rule, count(*) FROM person_links GROUP BY 1")
    return dict(rows.fetchall())


def user_object(row: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The HUB user of a person row, or None and why the HUB could not take it."""
    if not row["code"]:
        return None, "no code: a CO student without STUDID"
    if not row["dob"]:
        return None, "no date of birth"
    roles = list(row["roles"])
    if any(role != "aluno" for role in roles) and not (row["cpf"] and row["email"]):
        return None, "a teacher without cpf or e-mail"
    user: dict[str, Any] = {
        "code": row["code"],
        "sis_id": row["sis_id"],
        "name": f"{row['given']} {row['family']}",
        "dob": row["dob"],
    }
    if row["gender_key"] is not None:
        user["gender"] = {"M": "M", "W": "F"}.get(row["gender_key"], "O")
    if row["email"]:
        user["email"] = row["email"]
    if row["cpf"]:
        user["cpf"] = row["cpf"]
    user["status"] = "arquived" if row["exmatriculated"] else "active"
    user["roles"] = [{"code": role} for role in roles]
    return user, ""


def _records(conn: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cursor = conn.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def desired_users(conn: duckdb.DuckDBPyConnection) -> tuple[list[DesiredRow], dict[str, str]]:
    """Users to send, and the reason for each person with roles that cannot be sent."""
    rows, unsendable, outcomes = [], {}, []
    for record in _records(conn, USERS_SQL):
        user, reason = user_object(record)
        if user is None:
            unsendable[record["person_key"]] = reason
        else:
            rows.append(DesiredRow("user", user["code"], user, record["person_key"]))
        outcomes.append((record["person_key"], user["code"] if user else None, reason or None))
    if outcomes:
        conn.register("outcomes", pd.DataFrame(outcomes, columns=["person_key", "code", "reason"]))
        try:
            conn.execute(
                "UPDATE persons SET hub_code = o.code, unsendable_reason = o.reason "
                "FROM outcomes o WHERE persons.person_key = o.person_key"
            )
        finally:
            conn.unregister("outcomes")
    return rows, unsendable


def term_code(begin: datetime, zone: ZoneInfo) -> str:
    """``YYYYS`` or ``YYYYW`` from the local date a semester begins (March–August: summer)."""
    local = begin.astimezone(zone)
    return f"{local.year}{'S' if 3 <= local.month <= 8 else 'W'}"


def desired_terms(conn: duckdb.DuckDBPyConnection, zone: ZoneInfo) -> list[DesiredRow]:
    rows = []
    for semester_id, title, begin, end in conn.execute(
        "SELECT semester_id, title, begin_at, end_at FROM studip_semesters ORDER BY begin_at"
    ).fetchall():
        code = term_code(begin, zone)
        rows.append(
            DesiredRow(
                "term",
                code,
                {
                    "code": code,
                    "name": title,
                    "start_date": begin.astimezone(zone).date().isoformat(),
                    "end_date": end.astimezone(zone).date().isoformat(),
                },
                semester_id,
            )
        )
    return rows


def _current_term(conn: duckdb.DuckDBPyConnection, zone: ZoneInfo, today: date) -> str | None:
    for begin, end in conn.execute("SELECT begin_at, end_at FROM studip_semesters").fetchall():
        if begin.astimezone(zone).date() <= today <= end.astimezone(zone).date():
            return term_code(begin, zone)
    return None


COURSES_SQL = """
SELECT c.course_id, coalesce(nullif(c.number, ''), c.course_id) AS subject, c.title,
       coalesce(c.subtitle, '') AS subtitle, s.title AS semester_title, s.begin_at
FROM studip_courses c JOIN studip_semesters s ON s.semester_id = c.start_semester_id
ORDER BY c.course_id
"""

MEMBERS_SQL = """
SELECT m.course_id, p.hub_code, m.status FROM studip_memberships m
JOIN persons p ON p.studip_user_id = m.user_id
WHERE p.hub_code IS NOT NULL ORDER BY m.course_id, p.hub_code
"""


def desired_courses(conn: duckdb.DuckDBPyConnection, zone: ZoneInfo) -> list[DesiredRow]:
    """Subjects, sections and their links from the Stud.IP courses of the synced semesters."""
    rows, subjects, sections = [], {}, {}
    for course in _records(conn, COURSES_SQL):
        term = term_code(course["begin_at"], zone)
        subtitle = f" – {course['subtitle']}" if course["subtitle"] else ""
        sections[course["course_id"]] = (term, course["subject"])
        subjects.setdefault(course["subject"], course["title"])
        rows.append(
            DesiredRow(
                "section",
                course["course_id"],
                {
                    "code": course["course_id"],
                    "name": f"{course['title']}{subtitle} ({course['semester_title']})",
                    "sis_id": course["course_id"],
                    "term_code": term,
                    "status": "active",
                },
                course["course_id"],
            )
        )
    rows += [
        DesiredRow("subject", code, {"code": code, "name": name, "status": "active"}, code)
        for code, name in subjects.items()
    ]
    for course_id, code, status in conn.execute(MEMBERS_SQL).fetchall():
        if course_id not in sections:
            continue
        term, subject = sections[course_id]
        if status in STUDENT_STATUSES:
            rows.append(section_student(course_id, code, term))
        elif status == "dozent":
            keys = (course_id, code, subject, term)
            rows.append(
                DesiredRow(
                    "sectionteacher",
                    "|".join(keys),
                    {
                        "sis_id": link_sis_id("sectionteacher", *keys),
                        "section": {"code": course_id},
                        "teacher": {"code": code},
                        "subject": {"code": subject},
                        "term_code": term,
                    },
                    course_id,
                )
            )
    return rows


def link_sis_id(kind: str, *keys: str) -> str:
    """The deterministic ``sis_id`` of a link: 20 hex digits of sha1 over its key fields."""
    return hashlib.sha1("|".join((kind, *keys)).encode()).hexdigest()[:20]


def section_student(section: str, student: str, term: str) -> DesiredRow:
    keys = (section, student, term)
    return DesiredRow(
        "sectionstudent",
        "|".join(keys),
        {
            "sis_id": link_sis_id("sectionstudent", *keys),
            "section": {"code": section},
            "student": {"code": student},
            "term_code": term,
        },
        section,
    )


LMS_SQL = """
SELECT r.CourseId, c.CourseCode, c.CourseName, p.hub_code
FROM lms_registrations r JOIN lms_courses c USING (CourseId)
LEFT JOIN persons p ON p.lms_login = r.OrganizationLoginId
ORDER BY r.RegistrationId
"""


def desired_lms(conn: duckdb.DuckDBPyConnection, term: str | None) -> list[DesiredRow]:
    """Subjects, sections and enrolments from the LMS courses that have registrations."""
    rows: dict[tuple[str, str], DesiredRow] = {}
    if term is None:
        return []
    for course_id, course_code, course_name, code in conn.execute(LMS_SQL).fetchall():
        section = f"lms-{course_id}"
        rows[("subject", course_code)] = DesiredRow(
            "subject",
            course_code,
            {"code": course_code, "name": course_name, "status": "active"},
            course_id,
        )
        rows[("section", section)] = DesiredRow(
            "section",
            section,
            {
                "code": section,
                "name": course_name,
                "sis_id": course_id,
                "term_code": term,
                "status": "active",
            },
            course_id,
        )
        if code is not None:
            link = section_student(section, code, term)
            rows[("sectionstudent", link.key)] = link
    return list(rows.values())


@dataclass
class DesiredSummary:
    counts: dict[str, int]
    unsendable: dict[str, str]


def build_hub_desired(
    conn: duckdb.DuckDBPyConnection, zone: ZoneInfo, today: date
) -> DesiredSummary:
    """Rebuild ``hub_desired`` from the graph (``persons`` must be resolved first)."""
    with transaction(conn):
        users, unsendable = desired_users(conn)
        # No de-duplication here: two objects with one key must reach the blocking check.
        rows = [
            *desired_terms(conn, zone),
            *users,
            *desired_courses(conn, zone),
            *desired_lms(conn, _current_term(conn, zone, today)),
        ]
        frame = pd.DataFrame(
            [
                (r.object_type, r.key, r.payload.get("sis_id"), json.dumps(r.payload), r.origin)
                for r in rows
            ],
            columns=["object_type", "key", "sis_id", "payload", "origin"],
        )
        conn.execute("DELETE FROM hub_desired")
        conn.register("desired", frame)
        try:
            conn.execute(
                "INSERT INTO hub_desired SELECT object_type, key, sis_id, "
                "payload::JSON, origin FROM desired"
            )
        finally:
            conn.unregister("desired")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.object_type] = counts.get(row.object_type, 0) + 1
    return DesiredSummary(counts, unsendable)


# -- assets -----------------------------------------------------------------------------------


SOURCE_TABLES = [
    "co_students",
    "studip_users",
    "studip_semesters",
    "studip_courses",
    "studip_memberships",
    "lms_learners",
    "lms_registrations",
    "lms_courses",
]


@dg.asset(group_name="graph", kinds={"duckdb"}, pool="duckdb", deps=SOURCE_TABLES)
def persons(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, graph_settings: GraphSettings
) -> dg.MaterializeResult:
    """One person per human across CAMPUSonline, Stud.IP and the LMS (``persons``), with the
    links that joined them and the rule that matched (``person_links``). Views join each person
    to their records: ``person_co_students|studies|applications``, ``person_studip_users``,
    ``person_studip_courses`` and ``person_lms_registrations``; ``hubsync export students``
    prints them per person."""
    started = time.perf_counter()
    with warehouse.connection() as conn:
        rules = resolve_identities(
            conn, graph_settings.match_rules, graph_settings.studip_student_id_field
        )
        total = conn.execute("SELECT count(*) FROM persons").fetchall()[0][0]
    return dg.MaterializeResult(
        metadata={
            "persons": total,
            **{f"links_{rule.replace(':', '_')}": n for rule, n in rules.items()},
            "dagster/row_count": total,
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset(group_name="graph", kinds={"duckdb"}, pool="duckdb", deps=[persons])
def hub_desired(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, graph_settings: GraphSettings
) -> dg.MaterializeResult:
    """What the HUB should hold: every term, subject, user, section and link the mapping of
    the graph gives (``hub_desired``, one row per object with its exact JSON). Persons the HUB
    could not take are counted by reason, never sent with invented values."""
    zone = ZoneInfo(graph_settings.timezone)
    started = time.perf_counter()
    with warehouse.connection() as conn:
        summary = build_hub_desired(conn, zone, datetime.now(zone).date())
    reasons: dict[str, int] = {}
    for reason in summary.unsendable.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return dg.MaterializeResult(
        metadata={
            **{f"desired_{kind}": n for kind, n in sorted(summary.counts.items())},
            "unsendable_persons": len(summary.unsendable),
            "unsendable_by_reason": dg.MetadataValue.json(reasons),
            "dagster/row_count": sum(summary.counts.values()),
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset_check(asset=persons, pool="duckdb")
def persons_unmatched_and_conflicting(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Non-blocking: how many records of each system stayed unmatched or lost a conflict."""
    with warehouse.connection() as conn:
        rows = conn.execute(
            "SELECT system, rule, count(*) FROM person_links WHERE rule IN "
            "('own', 'conflict') GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()
    counts = {f"{system}_{rule}": n for system, rule, n in rows}
    return dg.AssetCheckResult(
        passed=not any(r == "conflict" for _, r, _ in rows),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"counts": dg.MetadataValue.json(counts)},
    )


GRAPH_ASSETS = [persons, hub_desired]
GRAPH_CHECKS = [persons_unmatched_and_conflicting]
