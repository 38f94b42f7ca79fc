"""DDL of the student graph's tables (the "graph: …" migrations in resources/warehouse.py)."""

GRAPH_SCHEMA = """
CREATE TABLE persons (
    person_key VARCHAR PRIMARY KEY,    -- co:<STPERSONNR> | studip:<user_id> | lms:<login>
    co_stpersonnr BIGINT,
    studip_user_id VARCHAR,
    lms_login VARCHAR,
    roles VARCHAR[] NOT NULL,          -- aluno, professor
    hub_code VARCHAR,                  -- the HUB user code, when sendable
    unsendable_reason VARCHAR          -- why a person with roles is not sent
);
CREATE TABLE person_links (
    system VARCHAR NOT NULL,           -- co | studip | lms
    source_id VARCHAR NOT NULL,
    person_key VARCHAR NOT NULL,
    rule VARCHAR NOT NULL              -- anchor | studid | email | login | own | conflict
);
"""

# Identity conflicts (rebuilt by every graph build) and the persons whose delivery they hold
# back (kept across builds: the links and roles last accepted, until the conflict is gone).
GRAPH_CONFLICTS_SCHEMA = """
CREATE TABLE person_conflicts (
    system VARCHAR NOT NULL,           -- studip | lms: the record whose claim lost
    source_id VARCHAR NOT NULL,
    claimed_person VARCHAR NOT NULL,   -- the person it claimed (it stays a person of its own)
    rule VARCHAR NOT NULL,             -- the rule of its claim
    winner_id VARCHAR NOT NULL,        -- the record of the same system that joined the person
    winner_rule VARCHAR NOT NULL,
    blocked BOOLEAN NOT NULL           -- the conflict holds back the person's HUB changes
);
CREATE TABLE person_blocks (
    person_key VARCHAR PRIMARY KEY,    -- a person whose HUB changes are not delivered
    reason VARCHAR NOT NULL,
    accepted_studip_user_id VARCHAR,   -- the links, roles and HUB code last accepted
    accepted_lms_login VARCHAR,        -- (all NULL: a person that did not exist before)
    accepted_roles VARCHAR[],
    accepted_hub_code VARCHAR,
    blocked_at TIMESTAMPTZ NOT NULL
);
"""

# Each person joined to the records of every source that belong to them (one row per record).
GRAPH_VIEWS = """
CREATE VIEW person_co_students AS
SELECT p.person_key, c.* EXCLUDE (row_hash, changed_in_sync)
FROM persons p JOIN co_students c ON c.STPERSONNR = p.co_stpersonnr;

CREATE VIEW person_co_studies AS
SELECT p.person_key, s.* EXCLUDE (row_hash, changed_in_sync)
FROM persons p JOIN co_studies s ON s.STPERSONNR = p.co_stpersonnr;

CREATE VIEW person_co_applications AS
SELECT p.person_key, a.* EXCLUDE (row_hash, changed_in_sync)
FROM persons p JOIN co_applications a ON a.STPERSONNR = p.co_stpersonnr;

CREATE VIEW person_studip_users AS
SELECT p.person_key, u.* EXCLUDE (changed_in_sync)
FROM persons p JOIN studip_users u ON u.user_id = p.studip_user_id;

CREATE VIEW person_studip_courses AS
SELECT p.person_key, m.status AS membership_status, c.* EXCLUDE (changed_in_sync),
       s.title AS start_semester
FROM persons p
JOIN studip_memberships m ON m.user_id = p.studip_user_id
JOIN studip_courses c ON c.course_id = m.course_id
LEFT JOIN studip_semesters s ON s.semester_id = c.start_semester_id;

CREATE VIEW person_lms_registrations AS
SELECT p.person_key, r.* EXCLUDE (row_hash, changed_in_sync, fetched_in_sync)
FROM persons p JOIN lms_registrations r ON r.OrganizationLoginId = p.lms_login;
"""

GRAPH_VIEW_NAMES = [
    "person_co_students",
    "person_co_studies",
    "person_co_applications",
    "person_studip_users",
    "person_studip_courses",
    "person_lms_registrations",
]
