"""The diff: what the HUB must be sent, from ``hub_desired`` against ``hub_state`` (objects of
batches still in flight left out), numbered in sending phases."""

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from resources.hub import LINK_TYPES, OBJECT_MODELS

# Sending order: deletes in reverse dependency order, then inserts and updates in it.
PHASES: tuple[tuple[str, str], ...] = (
    *(("delete", t) for t in reversed(OBJECT_MODELS)),
    *(("upsert", t) for t in OBJECT_MODELS),
)


def _sql_list(names: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{name}'" for name in names) + ")"


DIFF_SQL = f"""
WITH in_flight AS (
    SELECT DISTINCT e.object_type, e.key
    FROM hub_events e JOIN hub_batches b USING (sync_key, batch_no)
    WHERE b.status IN ('posting', 'sent')
),
desired AS (
    SELECT * FROM hub_desired d
    WHERE NOT EXISTS (SELECT 1 FROM in_flight f
                      WHERE f.object_type = d.object_type AND f.key = d.key)
),
state AS (
    SELECT * FROM hub_state s
    WHERE NOT EXISTS (SELECT 1 FROM in_flight f
                      WHERE f.object_type = s.object_type AND f.key = s.key)
),
pairs AS (  -- payloads compared minified: the same object in other spacing is no change
    SELECT coalesce(d.object_type, s.object_type) AS object_type,
           coalesce(d.key, s.key) AS key,
           d.sis_id AS desired_sis_id, json(d.payload)::VARCHAR AS desired,
           s.sis_id AS state_sis_id, json(s.payload)::VARCHAR AS acknowledged, s.certain,
           coalesce(d.object_type, s.object_type) IN {_sql_list(LINK_TYPES)} AS is_link
    FROM desired d FULL OUTER JOIN state s USING (object_type, key)
)
SELECT object_type, 'insert' AS action, key, desired_sis_id AS sis_id, desired AS payload
FROM pairs WHERE desired IS NOT NULL AND (acknowledged IS NULL
    OR (is_link AND (NOT certain OR acknowledged <> desired)))
UNION ALL
SELECT object_type, 'update', key, desired_sis_id, desired
FROM pairs WHERE desired IS NOT NULL AND acknowledged IS NOT NULL AND NOT is_link
    AND (NOT certain OR acknowledged <> desired)
UNION ALL
SELECT object_type, 'delete', key, state_sis_id, acknowledged
FROM pairs WHERE acknowledged IS NOT NULL AND (
    (desired IS NULL AND (is_link OR $full))
    OR (is_link AND certain AND desired IS NOT NULL AND acknowledged <> desired))
"""


@dataclass(frozen=True)
class Change:
    object_type: str
    action: str  # insert | update | delete
    key: str
    payload: dict[str, Any]  # the object, or for a delete its key fields

    @property
    def log_sis_id(self) -> str:
        """How getLog will name this item: its sis_id, else its code, else "0"."""
        return str(self.payload.get("sis_id") or self.payload.get("code") or "0")

    @property
    def phase(self) -> int:
        group = "delete" if self.action == "delete" else "upsert"
        return PHASES.index((group, self.object_type))


def delete_payload(object_type: str, key: str, acknowledged: dict[str, Any]) -> dict[str, Any]:
    """The key fields a delete needs (a user delete names the roles to remove: all of them)."""
    if object_type == "user":
        return {"code": key, "roles": acknowledged.get("roles", [])}
    if object_type in LINK_TYPES:
        return acknowledged
    return {"code": key}


def _phase_sql() -> str:
    """The sending phase of a diff row (its index in PHASES), as SQL."""
    cases = " ".join(
        f"WHEN action {'=' if group == 'delete' else '<>'} 'delete' "
        f"AND object_type = '{object_type}' THEN {index}"
        for index, (group, object_type) in enumerate(PHASES)
    )
    return f"CASE {cases} END"


DIFF_CHUNK = 20_000  # changes held in Python at a time


def compute_diff(conn: duckdb.DuckDBPyConnection, *, full: bool) -> Counter[str]:
    """Compute what the HUB must be sent into the temp table ``g_diff``, numbered in sending
    order (phase, then delete/update/insert, then key); return the count per
    ``<object type>_<action>``. :func:`read_diff` reads it back."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE g_diff AS
        SELECT row_number() OVER (ORDER BY {_phase_sql()},
                   CASE action WHEN 'delete' THEN 0 WHEN 'update' THEN 1 ELSE 2 END, key) AS n,
               object_type, action, key, payload
        FROM ({DIFF_SQL})
        """,
        {"full": full},
    )
    rows = conn.execute("SELECT object_type || '_' || action, count(*) FROM g_diff GROUP BY 1")
    return Counter(dict(rows.fetchall()))


def read_diff(conn: duckdb.DuckDBPyConnection, *, chunk: int = DIFF_CHUNK) -> Iterator[Change]:
    """The changes of the last :func:`compute_diff`, in sending order, read ``chunk`` rows at a
    time: a full sync of 100,000 students never holds its half million changes in Python, and
    the same connection may write between chunks."""
    done = 0
    while rows := conn.execute(
        "SELECT object_type, action, key, payload FROM g_diff WHERE n > ? ORDER BY n LIMIT ?",
        [done, chunk],
    ).fetchall():
        done += len(rows)
        for object_type, action, key, payload in rows:
            obj = json.loads(payload)
            if action == "delete":
                obj = delete_payload(object_type, key, obj)
            yield Change(object_type, action, key, obj)


def diff(conn: duckdb.DuckDBPyConnection, *, full: bool) -> list[Change]:
    """All changes at once (benchmarks and tests)."""
    compute_diff(conn, full=full)
    return list(read_diff(conn))
