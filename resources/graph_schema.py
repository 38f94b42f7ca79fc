"""DDL of the student graph's tables (migration "graph: …" in warehouse.py)."""

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
