"""The merged student graph and the HUB's desired state.

``persons`` resolves identities across CAMPUSonline, Stud.IP and the LMS into ``persons`` and
``person_links`` (system, source id, person, rule used); ``hub_desired`` maps the graph onto HUB
objects (README, "Student graph and HUB delivery"). The rules, in their default order
(HUBSYNC_MATCH_RULES reorders them or leaves some out; the fields are STUDIP_STUDENT_ID_FIELD
and LMS_STUDENT_ID_FIELD), first match wins:

1. every CO student is a person (``co:<STPERSONNR>``);
2. a Stud.IP user joins the person whose CO ``STUDID`` equals its ``Matrikelnummer``
   datafield, else whose CO university e-mail equals its e-mail (case-insensitive);
3. an LMS learner with a registration joins the person whose CO ``STUDID`` equals its
   ``StudentId`` profile field, else who has its e-mail (CO or Stud.IP, case-insensitive), else
   whose Stud.IP username equals its login.

Within a rule the smallest person key wins. When several records of one system claim the same
person, the claim by the stronger rule (earlier in HUBSYNC_MATCH_RULES) joins it, among equally
strong claims the smallest id; the others are conflicts (``person_conflicts``) and stay persons of
their own (rule ``conflict``). A Stud.IP account that merely shows a student's e-mail therefore
never displaces the account carrying the student's matriculation number.

A conflict that would change the links or roles an existing person had (``persons`` of the last
build) blocks that person: ``person_blocks`` keeps the links, roles and HUB code last accepted,
and ``hub_desired`` keeps the person's user and links as the HUB acknowledged them (and sends
nothing for the persons whose claims lost to it) until the conflict is gone. Other persons are
delivered as usual. ``sandbox/expected.py`` implements the same rules independently, which is
what the end-to-end tests compare against.

Values the HUB requires but no source has are never invented: a person without a user code
(an applicant without matriculation number), without a date of birth (most LMS-only crew), or
with a teacher role but no CPF or e-mail is not sent; ``persons.unsendable_reason`` says why.

Text sent to the HUB carries no control characters (NUL, line breaks, C1) and no bidi
embedding, override or isolate characters (a U+202E makes a name display as another): they
are removed from ``hub_desired`` and counted; the raw pages keep them as received.

``hub_desired`` is maintained from the changes the merges and ``persons`` note in
``graph_changes`` (``resources/graph_changes.py``): the users of the persons they touch, the
Stud.IP links of the courses they touch and the LMS links of those persons' HUB codes are
rebuilt, terms, subjects and sections (a few per course) always; a full sync, a changed term or
a blocked person rebuilds everything.
"""

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
from pydantic import Field

from resources.graph_changes import REBUILD, note_changes, note_rebuild
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource, transaction

MATCH_RULES = ("studid", "email", "login")  # the default order


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
    then ``choices`` (id, choice, rule, strength: 0 for the strongest rule)."""
    ctes, earlier = [], []
    for rule in (r for r in rules if r in candidates):
        sql = candidates[rule].format(field=field)
        taken = " UNION ".join(f"SELECT id FROM rule_{e}" for e in earlier)
        ctes.append(
            f"rule_{rule} AS (SELECT * FROM ({sql})"
            + (f" WHERE id NOT IN ({taken}))" if earlier else ")")
        )
        earlier.append(rule)
    union = " UNION ALL ".join(
        f"SELECT id, choice, '{r}' AS rule, {i} AS strength FROM rule_{r}"
        for i, r in enumerate(earlier)
    )
    empty = (
        "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS choice, NULL::VARCHAR AS rule, "
        "0 AS strength LIMIT 0"
    )
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
           row_number() OVER (PARTITION BY c.choice ORDER BY c.strength, u.user_id) AS rank
    FROM studip_users u LEFT JOIN choices c ON c.id = u.user_id
)
SELECT user_id, username, email,
       CASE WHEN choice IS NOT NULL AND rank = 1 THEN choice ELSE 'studip:' || user_id END
           AS person_key,
       CASE WHEN choice IS NULL THEN 'own' WHEN rank = 1 THEN rule ELSE 'conflict' END AS rule,
       choice AS claimed, rule AS claim_rule
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
           row_number() OVER (
               PARTITION BY c.choice ORDER BY c.strength, l.OrganizationLoginId) AS rank
    FROM learners l LEFT JOIN choices c ON c.id = l.OrganizationLoginId
)
SELECT login,
       CASE WHEN choice IS NOT NULL AND rank = 1 THEN choice ELSE 'lms:' || login END
           AS person_key,
       CASE WHEN choice IS NULL THEN 'own' WHEN rank = 1 THEN rule ELSE 'conflict' END AS rule,
       choice AS claimed, rule AS claim_rule
FROM ranked;

-- Only the links that changed are written: rewriting all of them (216,000 at 100,000
-- students) took 0.1 s and its commit 0.2 s more on every sync. After deleting every copy of
-- a row that has fewer copies now, what is missing is exactly g_links EXCEPT ALL the table.
CREATE OR REPLACE TEMP TABLE g_links AS
SELECT 'co' AS system, STPERSONNR::VARCHAR AS source_id, person_key, 'anchor' AS rule FROM g_co
UNION ALL SELECT 'studip', user_id, person_key, rule FROM g_studip
UNION ALL SELECT 'lms', login, person_key, rule FROM g_lms;

CREATE OR REPLACE TEMP TABLE g_links_gone AS
SELECT DISTINCT * FROM (SELECT * FROM person_links EXCEPT ALL SELECT * FROM g_links);

DELETE FROM person_links p USING g_links_gone g
WHERE p.system = g.system AND p.source_id = g.source_id AND p.person_key = g.person_key
  AND p.rule = g.rule;

INSERT INTO person_links SELECT * FROM g_links EXCEPT ALL SELECT * FROM person_links;

CREATE OR REPLACE TEMP TABLE g_conflicts AS
SELECT 'studip' AS system, l.user_id AS source_id, l.claimed AS claimed_person,
       l.claim_rule AS rule, w.user_id AS winner_id, w.rule AS winner_rule
FROM g_studip l JOIN g_studip w ON w.person_key = l.claimed
WHERE l.rule = 'conflict'
UNION ALL
SELECT 'lms', l.login, l.claimed, l.claim_rule, w.login, w.rule
FROM g_lms l JOIN g_lms w ON w.person_key = l.claimed
WHERE l.rule = 'conflict';
"""


# The Stud.IP courses that become HUB sections, with the semester of their term:
# the start semester (a course running over several semesters is in the term it started, sent
# whether selected or not), for an unlimited course (no start semester) the earliest selected
# semester Stud.IP returned it for. Study groups are none: a student founds one and is its dozent.
SECTION_COURSES_SQL = """
    SELECT c.*, coalesce(c.start_semester_id, c.first_selected_semester_id) AS term_semester_id
    FROM studip_courses c
    WHERE NOT coalesce(c.studygroup, false)
      AND coalesce(c.start_semester_id, c.first_selected_semester_id) IN (
          SELECT semester_id FROM studip_semesters)"""

# Persons are replaced only where they changed: rewriting all of them (a primary key) took
# seconds at 100,000 students on every sync.
PERSONS_SQL = f"""
CREATE OR REPLACE TEMP TABLE g_persons AS
WITH keys AS (
    SELECT person_key FROM g_co UNION SELECT person_key FROM g_studip
    UNION SELECT person_key FROM g_lms
), courses AS ({SECTION_COURSES_SQL}
), studip_roles AS (
    SELECT m.user_id,
           bool_or(m.status IN {STUDENT_STATUSES}) AS student,
           bool_or(m.status IN {STAFF_STATUSES}) AS staff
    FROM studip_memberships m JOIN courses USING (course_id) GROUP BY m.user_id
)
SELECT k.person_key, c.STPERSONNR AS co_stpersonnr, s.user_id AS studip_user_id,
       l.login AS lms_login,
       list_filter(['aluno', 'professor'], lambda role: (role = 'aluno' AND (
               c.person_key IS NOT NULL OR coalesce(r.student, false) OR l.login IS NOT NULL))
           OR (role = 'professor' AND coalesce(r.staff, false))) AS roles
FROM keys k
LEFT JOIN g_co c USING (person_key)
LEFT JOIN g_studip s USING (person_key)  -- at most one of each system per person
LEFT JOIN g_lms l USING (person_key)
LEFT JOIN studip_roles r ON r.user_id = s.user_id;
"""

# Runs between the new graph (g_persons, g_conflicts) and its storing: ``persons`` still holds
# the last build. A person is blocked when a conflict over it changes the links it had (the
# ones last accepted: its ``person_blocks`` row while it is blocked, else its ``persons`` row);
# so are the persons of the records whose claims on it lost, which exist because of it.
BLOCKS_SQL = """
CREATE OR REPLACE TEMP TABLE g_accepted AS
SELECT person_key, accepted_studip_user_id AS studip_user_id,
       accepted_lms_login AS lms_login, accepted_roles AS roles
FROM person_blocks
UNION ALL
SELECT person_key, studip_user_id, lms_login, roles FROM persons p
WHERE NOT EXISTS (SELECT 1 FROM person_blocks b WHERE b.person_key = p.person_key);

CREATE OR REPLACE TEMP TABLE g_blocked AS
WITH claimed AS (
    SELECT DISTINCT c.claimed_person AS person_key
    FROM g_conflicts c
    JOIN g_accepted a ON a.person_key = c.claimed_person AND a.roles IS NOT NULL
    LEFT JOIN g_persons n ON n.person_key = c.claimed_person
    WHERE n.studip_user_id IS DISTINCT FROM a.studip_user_id
       OR n.lms_login IS DISTINCT FROM a.lms_login
)
SELECT person_key, 'an identity conflict would change its links' AS reason FROM claimed
UNION
SELECT c.system || ':' || c.source_id,
       'its claim lost an identity conflict over a blocked person'
FROM g_conflicts c JOIN claimed ON claimed.person_key = c.claimed_person;

DELETE FROM person_blocks
WHERE person_key NOT IN (SELECT person_key FROM g_blocked);

INSERT INTO person_blocks
SELECT b.person_key, b.reason, p.studip_user_id, p.lms_login, p.roles, p.hub_code, now()
FROM g_blocked b LEFT JOIN persons p USING (person_key)
WHERE NOT EXISTS (SELECT 1 FROM person_blocks o WHERE o.person_key = b.person_key);

DELETE FROM person_conflicts;
INSERT INTO person_conflicts
SELECT c.*, c.claimed_person IN (SELECT person_key FROM g_blocked) FROM g_conflicts c;
"""

_SAME_PERSON = """n.person_key = p.person_key
      AND n.co_stpersonnr IS NOT DISTINCT FROM p.co_stpersonnr
      AND n.studip_user_id IS NOT DISTINCT FROM p.studip_user_id
      AND n.lms_login IS NOT DISTINCT FROM p.lms_login
      AND n.roles = p.roles"""

# The persons replaced (old rows and new), with their Stud.IP users and LMS logins: the next
# hub_desired build rebuilds their users and the links of those accounts' courses.
REPLACED_PERSONS_SQL = f"""
CREATE OR REPLACE TEMP TABLE g_replaced AS
SELECT false AS new, person_key, studip_user_id, lms_login FROM persons p
WHERE NOT EXISTS (SELECT 1 FROM g_persons n WHERE {_SAME_PERSON})
UNION ALL
SELECT true, person_key, studip_user_id, lms_login FROM g_persons n
WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE {_SAME_PERSON});
"""

STORE_PERSONS_SQL = """
DELETE FROM persons WHERE person_key IN (SELECT person_key FROM g_replaced WHERE NOT new);

INSERT INTO persons
SELECT n.*, NULL, NULL FROM g_persons n
WHERE person_key IN (SELECT person_key FROM g_replaced WHERE new);
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
WHERE len(p.roles) > 0 /*PERSONS_SCOPE*/
"""


def _blocked_count(conn: duckdb.DuckDBPyConnection) -> int:
    (blocked,) = conn.execute("SELECT count(*) FROM person_blocks").fetchone() or (0,)
    return int(blocked)


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
        blocked_before = _blocked_count(conn)
        conn.execute(BLOCKS_SQL)
        if blocked_before or _blocked_count(conn):
            # blocked persons keep what the HUB acknowledged: only a whole build applies that
            note_rebuild(conn, "identity conflicts block persons (person_blocks)")
        conn.execute(REPLACED_PERSONS_SQL)
        note_changes(conn, "person", "SELECT person_key FROM g_replaced")
        note_changes(conn, "studip_user_relinked", "SELECT studip_user_id FROM g_replaced")
        conn.execute(STORE_PERSONS_SQL)
    rows = conn.execute("SELECT system || ':' || rule, count(*) FROM person_links GROUP BY 1")
    return dict(rows.fetchall())


USER_OUTCOMES_SQL = f"""
CREATE OR REPLACE TEMP TABLE g_users AS
SELECT *, CASE
    WHEN coalesce(code, '') = '' THEN 'no code: a CO student without STUDID'
    WHEN coalesce(dob, '') = '' THEN 'no date of birth'
    WHEN NOT list_has_all(['aluno'], roles) AND (coalesce(cpf, '') = '' OR coalesce(email, '') = '')
        THEN 'a teacher without cpf or e-mail'
    END AS reason
FROM ({USERS_SQL});

UPDATE persons SET hub_code = u.hub_code, unsendable_reason = u.reason
FROM (SELECT person_key, CASE WHEN reason IS NULL THEN code END AS hub_code, reason
      FROM g_users) u
WHERE persons.person_key = u.person_key
  AND (persons.hub_code IS DISTINCT FROM u.hub_code
       OR persons.unsendable_reason IS DISTINCT FROM u.reason);
"""

# json_merge_patch onto {} leaves out the members that are null: the optional ones.
DESIRED_USERS_SQL = """
INSERT INTO hub_desired
SELECT 'user', code, sis_id, json_merge_patch('{}', json_object(
    'code', code,
    'sis_id', sis_id,
    'name', coalesce(given, '') || ' ' || coalesce(family, ''),
    'dob', dob,
    'gender', CASE WHEN gender_key IS NOT NULL
                   THEN CASE gender_key WHEN 'M' THEN 'M' WHEN 'W' THEN 'F' ELSE 'O' END END,
    'email', nullif(email, ''),
    'cpf', nullif(cpf, ''),
    'status', CASE WHEN exmatriculated THEN 'arquived' ELSE 'active' END,
    'roles', to_json(list_transform(roles, lambda role: {'code': role})))),
    person_key
FROM g_users WHERE reason IS NULL
"""

DESIRED_COURSES_SQL = f"""
CREATE OR REPLACE TEMP TABLE g_sections AS
SELECT c.course_id, coalesce(nullif(c.number, ''), c.course_id) AS subject, c.title,
       coalesce(c.subtitle, '') AS subtitle, s.title AS semester_title, t.term_code
FROM ({SECTION_COURSES_SQL}) c JOIN studip_semesters s ON s.semester_id = c.term_semester_id
JOIN g_terms t ON t.semester_id = s.semester_id;

INSERT INTO hub_desired
SELECT 'section', course_id, course_id, json_object(
    'code', course_id,
    'name', title || CASE WHEN subtitle <> '' THEN ' – ' || subtitle ELSE '' END
                  || ' (' || semester_title || ')',
    'sis_id', course_id,
    'term_code', term_code,
    'status', 'active'), course_id
FROM g_sections;

INSERT INTO hub_desired
SELECT 'subject', subject, NULL, json_object('code', subject, 'name', name, 'status', 'active'),
       subject
FROM (SELECT subject, arg_min(title, course_id) AS name FROM g_sections GROUP BY subject);

CREATE OR REPLACE TEMP TABLE g_members AS
SELECT m.course_id, p.hub_code, m.status, g.subject, g.term_code
FROM studip_memberships m JOIN persons p ON p.studip_user_id = m.user_id
JOIN g_sections g ON g.course_id = m.course_id
WHERE p.hub_code IS NOT NULL /*COURSES_SCOPE*/;

INSERT INTO hub_desired
SELECT 'sectionstudent', key, sis_id, json_object(
    'sis_id', sis_id,
    'section', json_object('code', course_id),
    'student', json_object('code', hub_code),
    'term_code', term_code), course_id
FROM (SELECT *, concat_ws('|', course_id, hub_code, term_code) AS key,
             sha1('sectionstudent|' || key)[:20] AS sis_id
      FROM g_members WHERE status IN {STUDENT_STATUSES});

INSERT INTO hub_desired
SELECT 'sectionteacher', key, sis_id, json_object(
    'sis_id', sis_id,
    'section', json_object('code', course_id),
    'teacher', json_object('code', hub_code),
    'subject', json_object('code', subject),
    'term_code', term_code), course_id
FROM (SELECT *, concat_ws('|', course_id, hub_code, subject, term_code) AS key,
             sha1('sectionteacher|' || key)[:20] AS sis_id
      FROM g_members WHERE status = 'dozent');
"""

# LMS courses with registrations become sections of the current term (none without one). A
# course code shared by several courses names its subject after the latest registration's course.
DESIRED_LMS_SQL = """
CREATE OR REPLACE TEMP TABLE g_lms AS
SELECT r.RegistrationId, r.CourseId, c.CourseCode, c.CourseName, p.hub_code,
       'lms-' || r.CourseId AS section, t.term_code
FROM lms_registrations r JOIN lms_courses c USING (CourseId)
LEFT JOIN persons p ON p.lms_login = r.OrganizationLoginId
CROSS JOIN (SELECT term_code FROM g_terms WHERE is_current) t;

INSERT INTO hub_desired
SELECT 'subject', CourseCode, NULL,
       json_object('code', CourseCode, 'name', name, 'status', 'active'), origin
FROM (SELECT CourseCode, arg_max(CourseName, RegistrationId) AS name,
             arg_max(CourseId, RegistrationId) AS origin
      FROM g_lms GROUP BY CourseCode);

INSERT INTO hub_desired
SELECT DISTINCT 'section', section, CourseId, json_object(
    'code', section,
    'name', CourseName,
    'sis_id', CourseId,
    'term_code', term_code,
    'status', 'active'), CourseId
FROM g_lms;

"""

DESIRED_LMS_LINKS_SQL = """
INSERT INTO hub_desired
SELECT DISTINCT 'sectionstudent', key, sis_id, json_object(
    'sis_id', sis_id,
    'section', json_object('code', section),
    'student', json_object('code', hub_code),
    'term_code', term_code), section
FROM (SELECT section, hub_code, concat_ws('|', section, hub_code, term_code) AS key, term_code,
             sha1('sectionstudent|' || key)[:20] AS sis_id
      FROM g_lms WHERE hub_code IS NOT NULL /*LMS_SCOPE*/);
"""

# Blocked persons (``person_blocks``) keep what the HUB acknowledged: their user and links as
# built from the new graph are replaced by the acknowledged ones (under the HUB code last
# accepted), so the diff sends nothing for them; a link whose section is no longer desired
# is left out with its section.
BLOCKED_DESIRED_SQL = """
CREATE OR REPLACE TEMP TABLE g_blocked_codes AS
SELECT accepted_hub_code AS code, true AS accepted FROM person_blocks
WHERE accepted_hub_code IS NOT NULL
UNION
SELECT p.hub_code, false FROM person_blocks b JOIN persons p USING (person_key)
WHERE p.hub_code IS NOT NULL;

CREATE OR REPLACE TEMP TABLE g_link_people AS
SELECT object_type, key, CASE object_type WHEN 'sectionstudent' THEN payload->>'$.student.code'
                                          ELSE payload->>'$.teacher.code' END AS code,
       payload->>'$.section.code' AS section
FROM hub_state WHERE object_type IN ('sectionstudent', 'sectionteacher')
  AND payload IS NOT NULL;

DELETE FROM hub_desired
WHERE (object_type = 'user' AND key IN (SELECT code FROM g_blocked_codes))
   OR (object_type = 'sectionstudent'
       AND payload->>'$.student.code' IN (SELECT code FROM g_blocked_codes))
   OR (object_type = 'sectionteacher'
       AND payload->>'$.teacher.code' IN (SELECT code FROM g_blocked_codes));

INSERT INTO hub_desired
SELECT s.object_type, s.key, s.sis_id, s.payload, 'blocked'
FROM hub_state s
WHERE s.payload IS NOT NULL AND (
    (s.object_type = 'user'
     AND s.key IN (SELECT code FROM g_blocked_codes WHERE accepted))
    OR EXISTS (
        SELECT 1 FROM g_link_people l
        WHERE l.object_type = s.object_type AND l.key = s.key
          AND l.code IN (SELECT code FROM g_blocked_codes WHERE accepted)
          AND l.section IN (SELECT key FROM hub_desired WHERE object_type = 'section')));
"""


def term_code(begin: datetime, zone: ZoneInfo) -> str:
    """``YYYYS`` or ``YYYYW`` from the local date a semester begins (March–August: summer)."""
    local = begin.astimezone(zone)
    return f"{local.year}{'S' if 3 <= local.month <= 8 else 'W'}"


def store_terms(
    conn: duckdb.DuckDBPyConnection, zone: ZoneInfo, today: date, target: str = "hub_desired"
) -> None:
    """Insert the desired terms into ``target`` and fill ``g_terms`` (semester id, term code,
    whether ``today`` falls in it: the first such semester is the current term) for the
    courses."""
    semesters = conn.execute(
        "SELECT semester_id, title, begin_at, end_at FROM studip_semesters ORDER BY begin_at"
    ).fetchall()
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE g_terms "
        "(semester_id VARCHAR, term_code VARCHAR, is_current BOOLEAN)"
    )
    current_found = False
    for semester_id, title, begin, end in semesters:
        code = term_code(begin, zone)
        first, last = begin.astimezone(zone).date(), end.astimezone(zone).date()
        is_current = not current_found and first <= today <= last
        current_found = current_found or is_current
        term = {
            "code": code,
            "name": title,
            "start_date": first.isoformat(),
            "end_date": last.isoformat(),
        }
        conn.execute(
            f"INSERT INTO {target} VALUES ('term', ?, NULL, ?, ?)",
            [code, json.dumps(term), semester_id],
        )
        conn.execute("INSERT INTO g_terms VALUES (?, ?, ?)", [semester_id, code, is_current])


# What the mapping leaves out, per reason: nothing is dropped without being counted.
DROPPED_SQL = f"""
WITH lms AS (
    SELECT r.RegistrationId, c.CourseId AS course, p.hub_code, t.term_code
    FROM lms_registrations r LEFT JOIN lms_courses c USING (CourseId)
    LEFT JOIN persons p ON p.lms_login = r.OrganizationLoginId
    LEFT JOIN (SELECT term_code FROM g_terms WHERE is_current) t ON true
), studip AS (
    SELECT m.status, g.course_id IS NOT NULL AS section, p.hub_code
    FROM studip_memberships m LEFT JOIN g_sections g USING (course_id)
    LEFT JOIN persons p ON p.studip_user_id = m.user_id
    WHERE m.status IN {(*STUDENT_STATUSES, "dozent")}
)
SELECT 'studip_study_groups', count(*) FROM studip_courses WHERE studygroup
UNION ALL SELECT 'studip_courses_without_term', count(*) FROM studip_courses c
    WHERE NOT coalesce(c.studygroup, false)
      AND c.course_id NOT IN (SELECT course_id FROM g_sections)
UNION ALL SELECT 'studip_memberships_without_section', count(*) FROM studip WHERE NOT section
UNION ALL SELECT 'studip_memberships_without_sendable_person', count(*) FROM studip
    WHERE section AND hub_code IS NULL
UNION ALL SELECT 'lms_registrations_without_course', count(*) FROM lms WHERE course IS NULL
UNION ALL SELECT 'lms_registrations_without_term', count(*) FROM lms
    WHERE course IS NOT NULL AND term_code IS NULL
UNION ALL SELECT 'lms_registrations_without_sendable_person', count(*) FROM lms
    WHERE course IS NOT NULL AND term_code IS NOT NULL AND hub_code IS NULL
"""

DROP_EXPLANATIONS = {
    "studip_study_groups": "Stud.IP study groups are not HUB sections",
    "studip_courses_without_term": "Stud.IP courses have no semester to take a HUB term from",
    "studip_memberships_without_section": "Stud.IP memberships are of courses that are no "
    "HUB section (study groups, courses without a term)",
    "studip_memberships_without_sendable_person": "Stud.IP memberships are of persons the HUB "
    "cannot take (see unsendable_by_reason)",
    "lms_registrations_without_course": "LMS registrations name a course the LMS did not list",
    "lms_registrations_without_term": "LMS registrations get no HUB section: no Stud.IP "
    "semester covers today, so there is no current term",
    "lms_registrations_without_sendable_person": "LMS registrations are of persons the HUB "
    "cannot take (see unsendable_by_reason)",
}
# C0 and C1 control characters, the line and paragraph separators, and the bidi embedding,
# override and isolate characters (the "Trojan Source" set, CVE-2021-42574).
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_RE2 = r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}\x{202a}-\x{202e}\x{2066}-\x{2069}]"
# A payload (JSON text) that may hold one: raw, or escaped as \u00XX, \u20XX or \n etc. It
# over-matches (an escaped backslash before an n, a Python-escaped accent); each row it finds
# is looked at in full.
_MAYBE_UNSAFE_JSON = _UNSAFE_RE2 + r"|\\u00|\\u20[26]|\\[bfnrt]"


def clean_text(value: object) -> object:
    """``value`` with UNSAFE_TEXT removed from every string in it (JSON values)."""
    if isinstance(value, str):
        return UNSAFE_TEXT.sub("", value)
    if isinstance(value, list):
        return [clean_text(item) for item in value]
    if isinstance(value, dict):
        return {name: clean_text(item) for name, item in value.items()}
    return value


def clean_hub_desired(conn: duckdb.DuckDBPyConnection, table: str = "hub_desired") -> int:
    """Remove UNSAFE_TEXT from the keys and payloads of ``table`` (``hub_desired``, or the
    objects an incremental build made); how many objects had some. One place for every object
    type, after they are built in SQL."""
    # Keys and sis_ids are made of codes the payload holds too, so the payload tells (0.3 s
    # for the 500,000 objects of 100,000 students).
    rows = conn.execute(
        f"SELECT rowid, key, sis_id, payload FROM {table} WHERE regexp_matches(payload, ?)",
        [_MAYBE_UNSAFE_JSON],
    ).fetchall()
    cleaned = 0
    for rowid, key, sis_id, payload in rows:
        parsed = json.loads(payload)
        clean_payload = clean_text(parsed)
        clean_key, clean_sis_id = clean_text(key), clean_text(sis_id)
        if (clean_key, clean_sis_id, clean_payload) == (key, sis_id, parsed):
            continue
        text = json.dumps(clean_payload, ensure_ascii=False, separators=(",", ":"))
        conn.execute(
            f"UPDATE {table} SET key = ?, sis_id = ?, payload = ? WHERE rowid = ?",
            [clean_key, clean_sis_id, text, rowid],
        )
        cleaned += 1
    return cleaned


@dataclass
class DesiredSummary:
    counts: dict[str, int]
    unsendable: dict[str, str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records left out
    cleaned: int = 0  # objects that had control or bidi characters removed
    blocked: int = 0  # persons whose HUB changes an identity conflict holds back
    build: str = "rebuild"  # rebuild | incremental
    why: list[str] = field(default_factory=list)  # why it rebuilt
    persons_rebuilt: int = 0  # an incremental build's persons whose user it rebuilt
    courses_rebuilt: int = 0  # an incremental build's Stud.IP courses whose links it rebuilt
    lms_courses_rebuilt: int = 0  # and LMS courses


# An incremental build rebuilds the users of the persons the noted changes touch ...
DIRTY_PERSONS_SQL = """
CREATE OR REPLACE TEMP TABLE g_dirty_persons AS
SELECT id AS person_key FROM graph_changes WHERE kind = 'person'
UNION SELECT p.person_key FROM persons p JOIN graph_changes c
    ON c.kind = 'co_student' AND c.id = p.co_stpersonnr::VARCHAR
UNION SELECT p.person_key FROM persons p JOIN graph_changes c
    ON c.kind = 'studip_user' AND c.id = p.studip_user_id
UNION SELECT p.person_key FROM persons p JOIN graph_changes c
    ON c.kind = 'lms_learner' AND c.id = p.lms_login;

CREATE OR REPLACE TEMP TABLE g_old_codes AS
SELECT person_key, studip_user_id, lms_login, hub_code FROM persons
WHERE person_key IN (SELECT person_key FROM g_dirty_persons);
"""

# ... and the Stud.IP links of the courses whose course or memberships changed, or one of whose
# members now has another HUB code (g_recoded: USER_OUTCOMES_SQL has run) or belongs to another
# person.
DIRTY_COURSES_SQL = """
CREATE OR REPLACE TEMP TABLE g_recoded AS
SELECT o.studip_user_id FROM g_old_codes o JOIN persons p USING (person_key)
WHERE o.hub_code IS DISTINCT FROM p.hub_code;

CREATE OR REPLACE TEMP TABLE g_dirty_courses AS
SELECT id AS course_id FROM graph_changes WHERE kind = 'studip_course'
UNION SELECT course_id FROM studip_memberships WHERE user_id IN (
    SELECT id FROM graph_changes WHERE kind = 'studip_user_relinked'
    UNION SELECT studip_user_id FROM g_recoded);
"""

# ... and the LMS links of those persons' HUB codes, before and after (an LMS course has
# thousands of registrations: rebuilding a course for one of them rebuilt 6,000 links), and of
# the LMS courses whose section changed (its name, or a new current term: all of them). The
# LMS's sections are in g_new already; hub_desired's users are still the last build's.
DIRTY_LMS_SQL = """
CREATE OR REPLACE TEMP TABLE g_dirty_codes AS
SELECT key AS code FROM hub_desired
WHERE object_type = 'user' AND origin IN (SELECT person_key FROM g_dirty_persons)
UNION SELECT hub_code FROM persons
WHERE person_key IN (SELECT person_key FROM g_dirty_persons) AND hub_code IS NOT NULL;

CREATE OR REPLACE TEMP TABLE g_dirty_lms_courses AS
WITH sections AS (
    SELECT key, payload::VARCHAR FROM g_new
    WHERE object_type = 'section' AND starts_with(key, 'lms-')
    EXCEPT SELECT key, payload::VARCHAR FROM hub_desired
    WHERE object_type = 'section' AND starts_with(key, 'lms-')
)
SELECT DISTINCT CourseId FROM g_lms WHERE section IN (SELECT key FROM sections);
"""

# What an incremental build rebuilds (into g_new): the terms, subjects and sections (a few per
# course, all rebuilt), the users of the dirty persons, the links of the dirty Stud.IP courses
# (a link's origin is its section) and the LMS links of the dirty codes and LMS courses.
REBUILT_SCOPE = """
object_type IN ('term', 'subject', 'section')
OR (object_type = 'user' AND origin IN (SELECT person_key FROM g_dirty_persons))
OR (object_type IN ('sectionstudent', 'sectionteacher') AND (
    origin IN (SELECT course_id FROM g_dirty_courses)
    OR origin IN (SELECT 'lms-' || CourseId FROM g_dirty_lms_courses)
    OR (starts_with(origin, 'lms-')
        AND payload->>'$.student.code' IN (SELECT code FROM g_dirty_codes))))
"""

# Replace the rebuilt objects by g_new, writing only the rows that differ: most of them come
# out as they were (every section, every link of a big course one member joined), and each
# row deleted or written costs again when DuckDB checkpoints (0.36 s at 100,000 students when
# all 64,000 were replaced). Rows compare as a multiset: rows with one hash are numbered
# (copy), and a pair counts as the same only when every column is equal.
REPLACE_REBUILT_SQL = f"""
CREATE OR REPLACE TEMP TABLE g_old AS
SELECT row_id, h, row_number() OVER (PARTITION BY h) AS copy,
       object_type, key, sis_id, payload, origin
FROM (SELECT rowid AS row_id, hash(object_type, key, sis_id, payload::VARCHAR, origin) AS h,
             object_type, key, sis_id, payload::VARCHAR AS payload, origin
      FROM hub_desired WHERE {REBUILT_SCOPE});

CREATE OR REPLACE TEMP TABLE g_new AS
SELECT *, row_number() OVER (PARTITION BY h) AS copy
FROM (SELECT *, hash(object_type, key, sis_id, payload::VARCHAR, origin) AS h FROM g_new);

CREATE OR REPLACE TEMP TABLE g_same AS
SELECT o.row_id, n.h, n.copy
FROM g_old o JOIN g_new n ON n.h = o.h AND n.copy = o.copy
WHERE n.object_type = o.object_type AND n.key = o.key AND n.payload::VARCHAR = o.payload
  AND n.sis_id IS NOT DISTINCT FROM o.sis_id AND n.origin IS NOT DISTINCT FROM o.origin;

DELETE FROM hub_desired
WHERE rowid IN (SELECT row_id FROM g_old ANTI JOIN g_same USING (row_id));

INSERT INTO hub_desired
SELECT object_type, key, sis_id, payload, origin FROM g_new ANTI JOIN g_same USING (h, copy);

DROP TABLE g_old;
DROP TABLE g_same;
"""

PERSONS_SCOPE = "AND p.person_key IN (SELECT person_key FROM g_dirty_persons)"
COURSES_SCOPE = "AND m.course_id IN (SELECT course_id FROM g_dirty_courses)"
LMS_SCOPE = """AND (CourseId IN (SELECT CourseId FROM g_dirty_lms_courses)
    OR hub_code IN (SELECT code FROM g_dirty_codes))"""


def _into(sql: str, target: str) -> str:
    return sql.replace("INSERT INTO hub_desired", f"INSERT INTO {target}")


def _rebuild_reasons(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Why this build cannot be incremental (none: it can)."""
    why = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM graph_changes WHERE kind = ? ORDER BY id", [REBUILD]
        ).fetchall()
    ]
    if _blocked_count(conn):
        why.append("identity conflicts block persons (person_blocks)")
    return sorted(set(why))


def _terms(conn: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str, str]]:
    return sorted(
        conn.execute(
            f"SELECT key, payload::VARCHAR, origin FROM {table} WHERE object_type = 'term'"
        ).fetchall()
    )


def _build_everything(conn: duckdb.DuckDBPyConnection, zone: ZoneInfo, today: date) -> int:
    """Rebuild ``hub_desired`` whole; how many objects had text cleaned."""
    conn.execute("DELETE FROM hub_desired")
    store_terms(conn, zone, today)
    conn.execute(USER_OUTCOMES_SQL)
    conn.execute(DESIRED_USERS_SQL)
    conn.execute(DESIRED_COURSES_SQL)
    conn.execute(DESIRED_LMS_SQL)
    conn.execute(DESIRED_LMS_LINKS_SQL)
    cleaned = clean_hub_desired(conn)
    if _blocked_count(conn):  # else it changes nothing, after reading every link's JSON twice
        conn.execute(BLOCKED_DESIRED_SQL)
    return cleaned


def _build_changes(conn: duckdb.DuckDBPyConnection) -> tuple[int, int, int, int]:
    """Replace the objects the noted changes touch (``g_new`` holds the terms already);
    return (objects cleaned, persons, Stud.IP courses and LMS courses rebuilt)."""
    conn.execute(DIRTY_PERSONS_SQL)
    conn.execute(USER_OUTCOMES_SQL.replace("/*PERSONS_SCOPE*/", PERSONS_SCOPE))
    conn.execute(_into(DESIRED_USERS_SQL, "g_new"))
    conn.execute(DIRTY_COURSES_SQL)
    conn.execute(_into(DESIRED_COURSES_SQL.replace("/*COURSES_SCOPE*/", COURSES_SCOPE), "g_new"))
    conn.execute(_into(DESIRED_LMS_SQL, "g_new"))
    conn.execute(DIRTY_LMS_SQL)
    conn.execute(_into(DESIRED_LMS_LINKS_SQL.replace("/*LMS_SCOPE*/", LMS_SCOPE), "g_new"))
    cleaned = clean_hub_desired(conn, "g_new")
    conn.execute(REPLACE_REBUILT_SQL)
    persons, courses, lms_courses = conn.execute(
        "SELECT (SELECT count(*) FROM g_dirty_persons), (SELECT count(*) FROM g_dirty_courses), "
        "(SELECT count(*) FROM g_dirty_lms_courses)"
    ).fetchone() or (0, 0, 0)
    return cleaned, int(persons), int(courses), int(lms_courses)


def build_hub_desired(
    conn: duckdb.DuckDBPyConnection, zone: ZoneInfo, today: date
) -> DesiredSummary:
    """Bring ``hub_desired`` up to the graph (``persons`` must be resolved first): rebuild
    only the objects of the changes noted in ``graph_changes`` (``incremental``), or all of
    them after a change nothing can be traced from (``rebuild``, and why). Either way the
    result is what a rebuild from nothing gives. Objects are not de-duplicated here: two
    objects with one key must reach the blocking check."""
    with transaction(conn):
        why = _rebuild_reasons(conn)
        persons = courses = lms_courses = 0
        if not why:
            conn.execute("CREATE OR REPLACE TEMP TABLE g_new AS FROM hub_desired LIMIT 0")
            store_terms(conn, zone, today, target="g_new")
            cleaned = clean_hub_desired(conn, "g_new")
            if _terms(conn, "g_new") != _terms(conn, "hub_desired"):
                why = ["the terms changed"]
            else:
                cleaned_objects, persons, courses, lms_courses = _build_changes(conn)
                cleaned += cleaned_objects
            conn.execute("DROP TABLE g_new")
        if why:
            cleaned = _build_everything(conn, zone, today)
        conn.execute("DELETE FROM graph_changes")
        unsendable = dict(
            conn.execute(
                "SELECT person_key, unsendable_reason FROM persons "
                "WHERE unsendable_reason IS NOT NULL"
            ).fetchall()
        )
        dropped = dict(conn.execute(DROPPED_SQL).fetchall())
        blocked = _blocked_count(conn)
    counts = conn.execute("SELECT object_type, count(*) FROM hub_desired GROUP BY 1").fetchall()
    return DesiredSummary(
        dict(counts),
        unsendable,
        dropped,
        cleaned,
        blocked,
        build="rebuild" if why else "incremental",
        why=why,
        persons_rebuilt=persons,
        courses_rebuilt=courses,
        lms_courses_rebuilt=lms_courses,
    )


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


def conflict_counts(conn: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(identity conflicts of the last build, persons blocked from delivery by them)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM person_conflicts), (SELECT count(*) FROM person_blocks)"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


CONFLICTS_LISTED = 100  # conflicts and blocked persons named in the check's metadata

# Inline (run at the end of the persons step, on its connection): as a step of its own it
# cost an incremental sync about 70 ms for queries of a few ms.
UNMATCHED_AND_CONFLICTING = dg.AssetCheckSpec(
    "persons_unmatched_and_conflicting",
    asset="persons",
    description="Warns (does not block the sync) when records lost an identity conflict: how "
    "many records of each system stayed unmatched or lost, the conflicts (ids only: the losing "
    "record, the person it claimed by which rule, the record that won by which rule) and the "
    "persons whose delivery they block.",
)


def unmatched_and_conflicting(
    conn: duckdb.DuckDBPyConnection, n_conflicts: int, n_blocked: int
) -> dg.AssetCheckResult:
    """The result of ``UNMATCHED_AND_CONFLICTING`` for the persons just resolved
    (``conflict_counts``: ``n_conflicts``, ``n_blocked``)."""
    rows = conn.execute(
        "SELECT system, rule, count(*) FROM person_links WHERE rule IN "
        "('own', 'conflict') GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    conflicts = conn.execute(
        "SELECT system, source_id, claimed_person, rule, winner_id, winner_rule, blocked "
        "FROM person_conflicts ORDER BY ALL LIMIT ?",
        [CONFLICTS_LISTED],
    ).fetchall()
    blocked = conn.execute(
        "SELECT person_key, reason FROM person_blocks ORDER BY 1 LIMIT ?", [CONFLICTS_LISTED]
    ).fetchall()
    counts = {f"{system}_{rule}": n for system, rule, n in rows}
    listed = [
        {
            "record": f"{system}:{source_id}",
            "claimed": claimed,
            "rule": rule,
            "winner": f"{system}:{winner}",
            "winner_rule": winner_rule,
            "blocked": is_blocked,
        }
        for system, source_id, claimed, rule, winner, winner_rule, is_blocked in conflicts
    ]
    return dg.AssetCheckResult(
        check_name=UNMATCHED_AND_CONFLICTING.name,
        passed=n_conflicts == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "counts": dg.MetadataValue.json(counts),
            "identity_conflicts": n_conflicts,
            "blocked_persons": n_blocked,
            "conflicts": dg.MetadataValue.json(listed),
            "blocked": dg.MetadataValue.json(dict(blocked)),
        },
    )


@dg.asset(
    group_name="graph",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    deps=SOURCE_TABLES,
    check_specs=[UNMATCHED_AND_CONFLICTING],
)
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
        conflicts, blocked = conflict_counts(conn)
        check = unmatched_and_conflicting(conn, conflicts, blocked)
    if conflicts:
        context.log.warning(
            f"{conflicts} identity conflict(s): the weaker claims stay unlinked; {blocked} "
            "person(s) blocked from delivery until resolved (see person_conflicts, "
            "person_blocks)"
        )
    return dg.MaterializeResult(
        metadata={
            "persons": total,
            "identity_conflicts": conflicts,
            "blocked_persons": blocked,
            **{f"links_{rule.replace(':', '_')}": n for rule, n in rules.items()},
            "dagster/row_count": total,
            "duration_s": round(time.perf_counter() - started, 3),
        },
        check_results=[check],
    )


@dg.asset(group_name="graph", kinds={"duckdb"}, pool=WAREHOUSE_POOL, deps=[persons])
def hub_desired(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, graph_settings: GraphSettings
) -> dg.MaterializeResult:
    """What the HUB should hold: every term, subject, user, section and link the mapping of
    the graph gives (``hub_desired``, one row per object with its exact JSON). Persons the HUB
    could not take are counted by reason, never sent with invented values. An incremental
    sync rebuilds only the objects its changes touch (``build``: incremental, with what it
    rebuilt); a full sync rebuilds everything (``rebuilt_because``)."""
    zone = ZoneInfo(graph_settings.timezone)
    started = time.perf_counter()
    with warehouse.connection() as conn:
        summary = build_hub_desired(conn, zone, datetime.now(zone).date())
    reasons: dict[str, int] = {}
    for reason in summary.unsendable.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for name, count in summary.dropped.items():
        if count:
            context.log.warning(f"left out of the HUB: {count} {DROP_EXPLANATIONS[name]}")
    return dg.MaterializeResult(
        metadata={
            **{f"desired_{kind}": n for kind, n in sorted(summary.counts.items())},
            **{f"dropped_{name}": n for name, n in summary.dropped.items()},
            "unsendable_persons": len(summary.unsendable),
            "blocked_persons": summary.blocked,
            "unsendable_by_reason": dg.MetadataValue.json(reasons),
            "text_cleaned_objects": summary.cleaned,
            "build": summary.build,
            "rebuilt_because": dg.MetadataValue.json(summary.why),
            "persons_rebuilt": summary.persons_rebuilt,
            "studip_courses_rebuilt": summary.courses_rebuilt,
            "lms_courses_rebuilt": summary.lms_courses_rebuilt,
            "dagster/row_count": sum(summary.counts.values()),
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


GRAPH_ASSETS = [persons, hub_desired]
