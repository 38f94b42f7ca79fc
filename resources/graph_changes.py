"""What changed since ``hub_desired`` was last built: the queue ``graph_changes``.

Each current-state merge notes, in its own transaction, the ids of the rows it inserted, changed
or removed (``persons`` notes the persons it replaced); ``hub_desired`` rebuilds only the objects
of what is noted and empties the queue in its own transaction. A build that fails or never runs
loses nothing (the queue waits for the next one); a merge run again notes again, which costs a
little work and changes no result. Changes no id can be traced from (a full sync, a semester,
a blocked person) note ``REBUILD`` with the reason as its id: the next build rebuilds
everything.
"""

from __future__ import annotations

from typing import Any

import duckdb

REBUILD = "rebuild"
# kind -> what its id is
KINDS = {
    REBUILD: "why everything must be rebuilt",
    "co_student": "a co_students STPERSONNR: its person's user",
    "studip_user": "a studip_users user_id: its person's user",
    "lms_learner": "an LMS login whose learner or registrations changed: its person's user and "
    "LMS links",
    "person": "a persons person_key that was replaced: its user",
    "studip_user_relinked": "a Stud.IP user whose person changed: the links of its courses",
    "studip_course": "a Stud.IP course_id whose course or memberships changed: its links",
}

GRAPH_CHANGES_SCHEMA = f"""
CREATE TABLE graph_changes (
    kind VARCHAR NOT NULL,             -- {" | ".join(KINDS)}
    id VARCHAR NOT NULL,
    PRIMARY KEY (kind, id)
);
-- a warehouse built before this table existed has changes nobody noted
INSERT INTO graph_changes VALUES ('{REBUILD}', 'the change queue is new');
"""


def note_changes(
    conn: duckdb.DuckDBPyConnection, kind: str, ids_sql: str, params: Any = None
) -> None:
    """Note the ids ``ids_sql`` selects (one column) as changed, of ``kind``; nothing when a
    rebuild is noted already (a full sync noted 100,000 students for nothing)."""
    if kind not in KINDS:
        raise ValueError(f"unknown graph change kind {kind!r}")
    if rebuild_noted(conn):
        return
    conn.execute(
        f"INSERT OR IGNORE INTO graph_changes SELECT DISTINCT '{kind}', id::VARCHAR "
        f"FROM ({ids_sql}) AS changed(id) WHERE id IS NOT NULL",
        params,
    )


def note_changed_rows(
    conn: duckdb.DuckDBPyConnection, kind: str, table: str, id_column: str, sync_key: str
) -> None:
    """Note, as ``kind``, the ``id_column`` of the rows of ``table`` that ``sync_key`` changed
    (``changed_in_sync``: new rows and rows whose content differs)."""
    note_changes(
        conn,
        kind,
        f"SELECT {id_column} FROM {table} WHERE changed_in_sync = $sync_key",
        {"sync_key": sync_key},
    )


def note_rebuild(conn: duckdb.DuckDBPyConnection, why: str) -> None:
    """Make the next ``hub_desired`` build rebuild everything, saying why."""
    conn.execute("INSERT OR IGNORE INTO graph_changes VALUES (?, ?)", [REBUILD, why])


def rebuild_noted(conn: duckdb.DuckDBPyConnection) -> bool:
    row = conn.execute("SELECT 1 FROM graph_changes WHERE kind = ? LIMIT 1", [REBUILD]).fetchone()
    return row is not None
