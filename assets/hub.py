"""HUB delivery: diff the desired state against what the HUB acknowledged, send it, record it.

``hub_payload`` turns the difference between ``hub_desired`` and ``hub_state`` into events and
batches (stored as the exact JSON to post); blocking checks guard it; ``hub_delivery`` posts the
batches phase by phase, each phase acknowledged through ``getLog`` before the next starts (so a
section never arrives before its term); ``hub_acknowledgement`` applies whatever finished later.

Nothing is sent twice and nothing is lost:

* Objects of batches still in flight (posted, log not finished) are left out of every diff.
* A batch is marked ``posting`` before its POST and gets its fate after: a crash in between
  leaves ``posting``, which the next run treats as *unknown*.
* When a post's fate is unknown (it went out, no usable answer came back) its objects become
  *uncertain* in ``hub_state``: the next diff sends an entity again as an ``update`` (harmless if
  the HUB has it; on "not found" a follow-up batch of the same phase inserts it, before the
  links that name it), never as a second insert. Links have no update, so an uncertain link is
  inserted again and "already exists" reconciles it.
* "Already exists" on an insert and "not found" on an update or delete are reconciled, other
  errors leave ``hub_state`` unchanged so the next diff tries again.
* A batch the HUB refuses (400) does not hold back the rest: the phase's other batches go, then
  the refused one is split in halves and re-posted until the objects the HUB refuses are
  isolated (at most 2·ceil(log2 n) extra posts per refused batch). A refused object is logged
  (outcome ``refused``), stays out of ``hub_state`` and is sent again by the next sync; the sync
  fails once everything deliverable was delivered.
* A message the HUB does not know (getLog 404, e.g. a HUB restored from a backup) or still
  processes past HUB_MESSAGE_MAX_AGE is an unknown outcome, like a lost answer: its objects
  become uncertain and are sent again (outcome ``unknown`` in ``hub_log``).
* Entity deletes (users, sections, subjects, terms) only come from full syncs; link deletes also
  from incremental ones (they come from re-read course memberships).
"""

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import duckdb

if TYPE_CHECKING:
    import pandas as pd

from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import sync_run
from resources.hub import (
    ALREADY_EXISTS,
    LINK_TYPES,
    NOT_FOUND,
    OBJECT_MODELS,
    OBJECT_TYPES,
    BaseItem,
    HubClient,
    HubResource,
    MessageNotFound,
    PostOutcome,
    PostResult,
    SyncLog,
    envelope,
)
from resources.hub_identity import HubIdentity, HubIdentityError, check_hub_identity
from resources.warehouse import WarehouseResource, transaction

PHASES: tuple[tuple[str, str], ...] = (
    *(("delete", t) for t in reversed(OBJECT_MODELS)),
    *(("upsert", t) for t in OBJECT_MODELS),
)
MAX_BATCH_BYTES = 1_000_000
ALLOW_DELETES_TAG = "hubsync/allow-deletes"
# Delivery and acknowledgement list the messageIds left processing; hub_log_sensor polls them.
PENDING_MESSAGES_METADATA = "pending_message_ids"


# -- the diff ---------------------------------------------------------------------------------


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


# -- batches ----------------------------------------------------------------------------------


@dataclass
class Batch:
    batch_no: int
    phase: int
    object_type: str
    action: str
    changes: list[Change] = field(default_factory=list)
    size: int = 0


def iter_batches(
    changes: Iterable[Change],
    *,
    batch_size: int,
    first_batch_no: int = 1,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[Batch]:
    """Group changes into batches of one object type and action, ≤ batch_size and ≤ max_bytes;
    each batch is yielded once it is complete."""
    current: Batch | None = None
    batch_no = first_batch_no
    for change in changes:
        size = len(json.dumps(change.payload, ensure_ascii=False)) + 1
        if (
            current is None
            or current.object_type != change.object_type
            or current.action != change.action
            or len(current.changes) >= batch_size
            or current.size + size > max_bytes - 512
        ):
            if current is not None:
                yield current
                batch_no += 1
            current = Batch(batch_no, change.phase, change.object_type, change.action)
        current.changes.append(change)
        current.size += size
    if current is not None:
        yield current


def envelope_text(batch: Batch, *, org_id: str, who: str, doo: str) -> str:
    event = {
        "typ": batch.action,
        "obj": {batch.object_type: [change.payload for change in batch.changes]},
    }
    return json.dumps(envelope([event], org_id=org_id, who=who, doo=doo), ensure_ascii=False)


@dataclass
class PayloadSummary:
    changes: Counter[str]
    batches: int
    bytes: int
    superseded: int
    recovered: int
    diff_s: float = 0.0  # the diff's share of the step (benchmarks report it)


def recover_interrupted(conn: duckdb.DuckDBPyConnection) -> int:
    """Batches left ``posting`` by a crash: their fate is unknown, their objects uncertain."""
    rows = conn.execute(
        "SELECT sync_key, batch_no FROM hub_batches WHERE status = 'posting'"
    ).fetchall()
    for sync_key, batch_no in rows:
        with transaction(conn):
            conn.execute(
                "UPDATE hub_batches SET status = 'unknown' WHERE sync_key = ? AND batch_no = ?",
                [sync_key, batch_no],
            )
            mark_uncertain(conn, sync_key, batch_no)
    return len(rows)


@dataclass(frozen=True)
class Envelope:
    """What every stored batch carries besides its events (from the HUB resource)."""

    org_id: str
    who: str
    batch_size: int
    max_bytes: int = MAX_BATCH_BYTES


def _doo(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def build_payload(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    *,
    full: bool,
    batch_size: int,
    org_id: str,
    who: str,
    now: datetime | None = None,
    max_bytes: int = MAX_BATCH_BYTES,
) -> PayloadSummary:
    """Replace this sync's unsent events and batches with the current diff."""
    recovered = recover_interrupted(conn)
    with transaction(conn):
        superseded = _supersede_unsent(conn, sync_key)
        diff_started = time.perf_counter()
        counts = compute_diff(conn, full=full)
        diff_s = time.perf_counter() - diff_started
        batches, total_bytes = store_batches(
            conn, sync_key, read_diff(conn), Envelope(org_id, who, batch_size, max_bytes), _doo(now)
        )
    return PayloadSummary(counts, batches, total_bytes, superseded, recovered, round(diff_s, 3))


STORE_CHUNK = 20_000  # events buffered before they are written


def store_batches(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    changes: Iterable[Change],
    envelope: Envelope,
    doo: str,
) -> tuple[int, int]:
    """Store ``changes`` as this sync's next pending batches, each with the exact JSON to post;
    return (batches, bytes). Written in chunks as the changes arrive."""
    row = conn.execute(
        "SELECT coalesce(max(batch_no), 0), coalesce(max(seq), 0) "
        "FROM hub_events WHERE sync_key = ?",
        [sync_key],
    ).fetchall()[0]
    last_batch, seq = row if row else (0, 0)
    batch_rows: list[tuple] = []
    event_rows: list[tuple] = []
    batches = total_bytes = 0

    def flush() -> None:
        _insert_rows(conn, "hub_batches", BATCH_COLUMNS, batch_rows, BATCH_SELECT)
        _insert_rows(conn, "hub_events", EVENT_COLUMNS, event_rows, EVENT_SELECT)
        batch_rows.clear()
        event_rows.clear()

    for batch in iter_batches(
        changes,
        batch_size=envelope.batch_size,
        first_batch_no=last_batch + 1,
        max_bytes=envelope.max_bytes,
    ):
        text = envelope_text(batch, org_id=envelope.org_id, who=envelope.who, doo=doo)
        size = len(text.encode())
        batch_rows.append(
            (
                sync_key,
                batch.batch_no,
                batch.phase,
                batch.object_type,
                batch.action,
                len(batch.changes),
                text,
                size,
            )
        )
        batches += 1
        total_bytes += size
        for change in batch.changes:
            seq += 1
            event_rows.append(
                (
                    sync_key,
                    seq,
                    batch.batch_no,
                    change.object_type,
                    change.action,
                    change.key,
                    change.log_sis_id,
                    json.dumps(change.payload),
                )
            )
        if len(event_rows) >= STORE_CHUNK:
            flush()
    flush()
    return batches, total_bytes


BATCH_SELECT = (
    "sync_key, batch_no, phase, object_type, action, objects, envelope::JSON, bytes, 'pending'"
)
EVENT_SELECT = "sync_key, seq, batch_no, object_type, action, key, log_sis_id, payload::JSON"
BATCH_COLUMNS = [
    "sync_key",
    "batch_no",
    "phase",
    "object_type",
    "action",
    "objects",
    "envelope",
    "bytes",
]
EVENT_COLUMNS = [
    "sync_key",
    "seq",
    "batch_no",
    "object_type",
    "action",
    "key",
    "log_sis_id",
    "payload",
]


def _insert_rows(
    conn: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple], select: str
) -> None:
    """Insert many rows in one statement (DuckDB inserts a frame far faster than row by row)."""
    if not rows:
        return
    import pandas as pd  # imported where used: it adds 0.5 s to every command's start

    conn.register("new_rows", pd.DataFrame(rows, columns=columns))
    try:
        target = f"{table} ({', '.join(columns)}{', status' if table == 'hub_batches' else ''})"
        conn.execute(f"INSERT INTO {target} SELECT {select} FROM new_rows")
    finally:
        conn.unregister("new_rows")


def _supersede_unsent(conn: duckdb.DuckDBPyConnection, sync_key: str) -> int:
    """Unsent batches are recomputed: this key's are dropped, older keys' marked superseded."""
    conn.execute(
        "DELETE FROM hub_events WHERE sync_key = ? AND batch_no IN (SELECT batch_no "
        "FROM hub_batches WHERE sync_key = ? AND status = 'pending')",
        [sync_key, sync_key],
    )
    conn.execute("DELETE FROM hub_batches WHERE sync_key = ? AND status = 'pending'", [sync_key])
    row = conn.execute("SELECT count(*) FROM hub_batches WHERE status = 'pending'").fetchall()[0]
    conn.execute("UPDATE hub_batches SET status = 'superseded' WHERE status = 'pending'")
    return int(row[0]) if row else 0


# -- hub_state changes ------------------------------------------------------------------------


def _events(
    conn: duckdb.DuckDBPyConnection, sync_key: str, batch_no: int
) -> list[tuple[int, str, str, str, str, str]]:
    return conn.execute(
        "SELECT seq, object_type, action, key, log_sis_id, payload::VARCHAR FROM hub_events "
        "WHERE sync_key = ? AND batch_no = ? ORDER BY seq",
        [sync_key, batch_no],
    ).fetchall()


# Rows of one batch's events with what to do to hub_state: 'upsert' (certain or not), 'drop',
# or nothing. Applied set-based: DuckDB is fast at sets and slow at row-by-row upserts.
STATE_CHANGES_SQL = """
DELETE FROM hub_state USING changes c
WHERE hub_state.object_type = c.object_type AND hub_state.key = c.key
  AND c.state_op IN ('upsert', 'drop');
INSERT INTO hub_state
SELECT e.object_type, e.key, e.payload->>'$.sis_id', e.payload, c.certain, e.sync_key,
       $message_id, now()
FROM changes c JOIN hub_events e ON e.sync_key = $sync_key AND e.seq = c.seq
WHERE c.state_op = 'upsert';
"""


def _apply_state_changes(
    conn: duckdb.DuckDBPyConnection, sync_key: str, message_id: str | None, changes: "pd.DataFrame"
) -> None:
    conn.register("changes", changes)
    try:
        delete, insert = filter(str.strip, STATE_CHANGES_SQL.split(";"))
        conn.execute(delete)
        conn.execute(insert, {"message_id": message_id, "sync_key": sync_key})
    finally:
        conn.unregister("changes")


def mark_uncertain(conn: duckdb.DuckDBPyConnection, sync_key: str, batch_no: int) -> None:
    """A batch whose fate is unknown: its objects may or may not be at the HUB."""
    conn.execute(
        "UPDATE hub_state SET certain = false FROM hub_events e WHERE e.sync_key = ? AND "
        "e.batch_no = ? AND e.action = 'delete' AND hub_state.object_type = e.object_type "
        "AND hub_state.key = e.key",
        [sync_key, batch_no],
    )
    changes = conn.execute(
        "SELECT seq, object_type, key, 'upsert' AS state_op, false AS certain FROM hub_events "
        "WHERE sync_key = ? AND batch_no = ? AND action <> 'delete'",
        [sync_key, batch_no],
    ).df()
    _apply_state_changes(conn, sync_key, None, changes)


# -- acknowledgement --------------------------------------------------------------------------


@dataclass
class ItemOutcomes:
    applied: int = 0
    reconciled: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, message)
    first_errors: list[tuple[str, str, str]] = field(default_factory=list)  # type, key, message
    messages_lost: int = 0  # getLog 404: settled as unknown
    messages_given_up: int = 0  # still processing past HUB_MESSAGE_MAX_AGE: settled as unknown

    def add(self, other: "ItemOutcomes") -> None:
        self.applied += other.applied
        self.reconciled += other.reconciled
        self.failed += other.failed
        self.errors.update(other.errors)
        self.errors_by_type.update(other.errors_by_type)
        self.first_errors.extend(other.first_errors[: 20 - len(self.first_errors)])
        self.messages_lost += other.messages_lost
        self.messages_given_up += other.messages_given_up


def _worst(item: BaseItem) -> tuple[str, str]:
    levels = [m.level_Error for m in item.mensagem]
    level = "e" if "e" in levels else "w" if "w" in levels else "i"
    return level, "; ".join(m.dsc_error for m in item.mensagem)


def _outcome(object_type: str, action: str, item: BaseItem | None) -> tuple[str, str, str]:
    """(outcome, level, message) of one event's log item."""
    if item is None:
        return "failed", "e", "no answer for this item in getLog"
    level, message = _worst(item)
    if level != "e":
        return "applied", level, message
    texts = {m.dsc_error for m in item.mensagem if m.level_Error == "e"}
    if action == "insert" and ALREADY_EXISTS[object_type] in texts:
        return "reconciled", level, message
    if action in ("update", "delete") and NOT_FOUND[object_type] in texts:
        return "reconciled", level, message
    return "failed", level, message


def apply_log(
    conn: duckdb.DuckDBPyConnection, sync_key: str, batch_no: int, log: SyncLog
) -> ItemOutcomes:
    """Record a finished message's log and apply what succeeded to ``hub_state``."""
    items: dict[tuple[str, str], list[BaseItem]] = defaultdict(list)
    for item in log.items:
        items[(item.obj, item.sis_id)].append(item)
    outcomes = ItemOutcomes()
    rows = []
    for seq, object_type, action, key, log_sis_id, _payload in _events(conn, sync_key, batch_no):
        matches = items.get((object_type, log_sis_id))
        outcome, level, message = _outcome(object_type, action, matches.pop(0) if matches else None)
        rows.append(
            (
                seq,
                object_type,
                key,
                log_sis_id,
                level,
                outcome,
                message,
                *_state_change(outcome, object_type, action),
            )
        )
        setattr(outcomes, outcome, getattr(outcomes, outcome) + 1)
        if outcome == "failed":
            outcomes.errors[message] += 1
            outcomes.errors_by_type[(object_type, message)] += 1
            if len(outcomes.first_errors) < 20:
                outcomes.first_errors.append((object_type, key, message))
    for leftover in (i for group in items.values() for i in group):
        level, message = _worst(leftover)
        rows.append(
            (
                None,
                leftover.obj,
                None,
                leftover.sis_id,
                level,
                "failed",
                f"unmatched log item: {message}",
                "none",
                False,
            )
        )
    import pandas as pd

    answers = pd.DataFrame(
        rows,
        columns=[
            "seq",
            "object_type",
            "key",
            "sis_id",
            "level",
            "outcome",
            "message",
            "state_op",
            "certain",
        ],
    )
    with transaction(conn):
        _apply_state_changes(conn, sync_key, log.message_id, answers)
        conn.register("answers", answers)
        try:
            conn.execute(
                "INSERT INTO hub_log SELECT ?, ?, ?, seq, object_type, sis_id, level, "
                "outcome, message, now() FROM answers",
                [sync_key, batch_no, log.message_id],
            )
        finally:
            conn.unregister("answers")
        conn.execute(
            "UPDATE hub_batches SET status = 'acknowledged', log_status = ?, "
            "acknowledged_at = now() WHERE sync_key = ? AND batch_no = ?",
            [log.status, sync_key, batch_no],
        )
    return outcomes


def _state_change(outcome: str, object_type: str, action: str) -> tuple[str, bool]:
    """What an item's outcome does to hub_state: (upsert | drop | none, certain)."""
    if outcome == "failed":
        return "none", False
    if action == "delete" or (outcome == "reconciled" and action == "update"):
        return "drop", False  # gone, or (not found) to be inserted by the next sync
    # an applied insert/update is held as sent; an insert that "already exists" is held with
    # unknown content for an entity (the next diff updates it), exactly as sent for a link
    return "upsert", outcome == "applied" or object_type in LINK_TYPES


def in_flight_batches(
    conn: duckdb.DuckDBPyConnection, sync_key: str | None = None, phase: int | None = None
) -> list[tuple[str, int, str]]:
    """Posted batches whose log has not finished: (sync_key, batch_no, message_id)."""
    sql = "SELECT sync_key, batch_no, message_id FROM hub_batches WHERE status = 'sent'"
    params: list[object] = []
    if sync_key is not None:
        sql += " AND sync_key = ?"
        params.append(sync_key)
    if phase is not None:
        sql += " AND phase = ?"
        params.append(phase)
    return conn.execute(sql + " ORDER BY sync_key, batch_no", params).fetchall()


def pending_message_ids(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [message_id for _, _, message_id in in_flight_batches(conn)]


def _age_s(conn: duckdb.DuckDBPyConnection, sync_key: str, batch_no: int) -> float:
    """Seconds since the batch was posted."""
    row = conn.execute(
        "SELECT epoch(now()) - epoch(posted_at) FROM hub_batches WHERE sync_key = ? "
        "AND batch_no = ?",
        [sync_key, batch_no],
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def settle_unknown(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    batch_no: int,
    message_id: str,
    reason: str,
    *,
    log_status: int | None = None,
    settled_in: str | None = None,
) -> None:
    """A posted message whose fate can no longer be learned: treated like a lost answer (its
    objects uncertain, sent again as updates) and logged per object with the reason."""
    with transaction(conn):
        conn.execute(
            "UPDATE hub_batches SET status = 'unknown', log_status = coalesce(?, log_status), "
            "given_up_in = ? WHERE sync_key = ? AND batch_no = ?",
            [log_status, settled_in, sync_key, batch_no],
        )
        mark_uncertain(conn, sync_key, batch_no)
        conn.execute(
            "INSERT INTO hub_log SELECT sync_key, batch_no, ?, seq, object_type, log_sis_id, "
            "'e', 'unknown', ?, now() FROM hub_events WHERE sync_key = ? AND batch_no = ?",
            [message_id, reason, sync_key, batch_no],
        )


def acknowledge(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    batches: list[tuple[str, int, str]],
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    sleep: Any = time.sleep,
    lost_after_s: float | None = None,
    max_age_s: float | None = None,
    settled_in: str | None = None,
) -> tuple[ItemOutcomes, int]:
    """Poll the batches' logs until finished or the timeout; return outcomes and how many are
    still unfinished (they stay ``sent`` for the next run or the log sensor).

    With ``lost_after_s``, a message getLog does not know (404) that was posted longer ago is
    settled as unknown (younger, it may not be registered yet, so it counts as processing);
    with ``max_age_s``, so is one still processing that was posted longer ago. Both are noted
    as settled by ``settled_in``."""
    outcomes = ItemOutcomes()
    waiting = list(batches)
    deadline = time.monotonic() + timeout_s
    delay = poll_s
    while waiting:
        still = []
        for sync_key, batch_no, message_id in waiting:
            try:
                log = client.get_log(message_id, only_if_finished=True)
            except MessageNotFound:
                age = _age_s(conn, sync_key, batch_no)
                if lost_after_s is None or age <= lost_after_s:
                    still.append((sync_key, batch_no, message_id))
                    continue
                reason = (
                    f"getLog does not know messageId {message_id} ({age:.0f} s after posting; "
                    "a HUB restored from a backup?): outcome unknown, sent again"
                )
                settle_unknown(conn, sync_key, batch_no, message_id, reason, settled_in=settled_in)
                outcomes.messages_lost += 1
                continue
            if log.finished:
                outcomes.add(apply_log(conn, sync_key, batch_no, log))
                continue
            age = _age_s(conn, sync_key, batch_no) if max_age_s is not None else 0.0
            if max_age_s is not None and age > max_age_s:
                reason = (
                    f"given up: getLog status {log.status} (processing) {age:.0f} s after "
                    f"posting, over HUB_MESSAGE_MAX_AGE ({max_age_s:g} s): outcome unknown, "
                    "sent again"
                )
                settle_unknown(
                    conn,
                    sync_key,
                    batch_no,
                    message_id,
                    reason,
                    log_status=log.status,
                    settled_in=settled_in,
                )
                outcomes.messages_given_up += 1
                continue
            conn.execute(
                "UPDATE hub_batches SET log_status = ? WHERE sync_key = ? AND batch_no = ?",
                [log.status, sync_key, batch_no],
            )
            still.append((sync_key, batch_no, message_id))
        waiting = still
        if not waiting or time.monotonic() + delay > deadline:
            break
        sleep(delay)
        delay = min(delay * 2, 5.0)
    return outcomes, len(waiting)


def settle_in_flight(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    sync_key: str,
    *,
    lost_after_s: float,
    max_age_s: float,
) -> ItemOutcomes:
    """Before a diff: ask once for every message in flight; apply the finished ones, and settle
    as unknown those the HUB no longer knows or still processes past ``max_age_s``, so that
    their objects are in this sync's diff (sent again as updates) instead of held back."""
    outcomes, _ = acknowledge(
        conn,
        client,
        in_flight_batches(conn),
        timeout_s=0,
        lost_after_s=lost_after_s,
        max_age_s=max_age_s,
        settled_in=sync_key,
    )
    return outcomes


def stuck_messages(conn: duckdb.DuckDBPyConnection, older_than_s: float) -> list[tuple]:
    """Messages still processing at the HUB that were posted more than ``older_than_s`` ago:
    (sync_key, batch_no, message_id, object_type, objects, age in seconds), oldest first."""
    return conn.execute(
        "SELECT sync_key, batch_no, message_id, object_type, objects, "
        "round(epoch(now()) - epoch(posted_at)) AS age_s FROM hub_batches "
        "WHERE status = 'sent' AND posted_at < now() - to_seconds(?) ORDER BY posted_at",
        [older_than_s],
    ).fetchall()


# -- posting ----------------------------------------------------------------------------------

_STATUS_OF = {
    PostOutcome.ACCEPTED: "sent",
    PostOutcome.REJECTED: "rejected",
    PostOutcome.NOT_ARRIVED: "not_arrived",
    PostOutcome.UNKNOWN: "unknown",
}


def post(
    conn: duckdb.DuckDBPyConnection, client: HubClient, sync_key: str, batch_no: int, text: str
) -> PostResult:
    """Post one stored batch, recording ``posting`` first and the fate after."""
    with transaction(conn):
        conn.execute(
            "UPDATE hub_batches SET status = 'posting', posted_at = now() "
            "WHERE sync_key = ? AND batch_no = ?",
            [sync_key, batch_no],
        )
    result = client.post_batch(text)
    with transaction(conn):
        conn.execute(
            "UPDATE hub_batches SET status = ?, message_id = ?, http_status = ?, "
            "http_body = ?, attempts = ? WHERE sync_key = ? AND batch_no = ?",
            [
                _STATUS_OF[result.outcome],
                result.message_id,
                result.status,
                result.body or None,
                result.attempts,
                sync_key,
                batch_no,
            ],
        )
        if result.outcome is PostOutcome.UNKNOWN:
            mark_uncertain(conn, sync_key, batch_no)
    return result


@dataclass
class DeliverySummary:
    posted: Counter[str] = field(default_factory=Counter)  # by PostOutcome value
    outcomes: ItemOutcomes = field(default_factory=ItemOutcomes)
    unfinished: int = 0
    stopped: str = ""  # why delivery stopped early, if it did
    refused: Counter[str] = field(default_factory=Counter)  # objects the HUB refused, by type
    refusals: list[tuple[str, str, str]] = field(default_factory=list)  # type, key, answer
    split_posts: int = 0  # posts of halves of refused batches


# The HUB refused the envelope's content (400 Invalid Request) or its size (413): halves of it
# may pass. Any other refusal (401, 403, 404, …) refuses every batch alike.
SPLITTABLE_STATUSES = frozenset({400, 413})


def split_budget(objects: int) -> int:
    """Extra posts allowed to isolate the refused objects of a refused batch of ``objects``:
    two per halving, enough to corner one bad object (2·ceil(log2 n))."""
    return 2 * math.ceil(math.log2(objects)) if objects > 1 else 0


def split_batch(
    conn: duckdb.DuckDBPyConnection, sync_key: str, batch_no: int
) -> list[tuple[int, str, int]]:
    """Move a refused batch's events into two new pending batches of the same phase (first
    half, second half) with their envelopes; return [(batch_no, envelope text, objects)]."""
    phase, object_type, action, text = conn.execute(
        "SELECT phase, object_type, action, envelope::VARCHAR FROM hub_batches "
        "WHERE sync_key = ? AND batch_no = ?",
        [sync_key, batch_no],
    ).fetchall()[0]
    head = json.loads(text)
    events = conn.execute(
        "SELECT seq, payload::VARCHAR FROM hub_events WHERE sync_key = ? AND batch_no = ? "
        "ORDER BY seq",
        [sync_key, batch_no],
    ).fetchall()
    middle = (len(events) + 1) // 2
    halves = []
    with transaction(conn):
        (last,) = conn.execute(
            "SELECT max(batch_no) FROM hub_batches WHERE sync_key = ?", [sync_key]
        ).fetchall()[0]
        for offset, part in enumerate((events[:middle], events[middle:]), start=1):
            event = {"typ": action, "obj": {object_type: [json.loads(p) for _, p in part]}}
            half_text = json.dumps(
                envelope(
                    [event], org_id=head["org_id"], who=head["who"], doo=head["doo"],
                    ver=head["ver"],
                ),
                ensure_ascii=False,
            )  # fmt: skip
            conn.execute(
                "INSERT INTO hub_batches (sync_key, batch_no, phase, object_type, action, "
                "objects, envelope, bytes, status, split_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?::JSON, ?, 'pending', ?)",
                [sync_key, last + offset, phase, object_type, action, len(part), half_text,
                 len(half_text.encode()), batch_no],
            )  # fmt: skip
            conn.execute(
                "UPDATE hub_events SET batch_no = ? WHERE sync_key = ? AND batch_no = ? "
                "AND seq BETWEEN ? AND ?",
                [last + offset, sync_key, batch_no, part[0][0], part[-1][0]],
            )
            halves.append((last + offset, half_text, len(part)))
    return halves


def record_refused(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    batch_no: int,
    result: PostResult,
    summary: DeliverySummary,
) -> None:
    """Log every object of a refused batch with the HUB's answer (outcome ``refused``); they
    stay out of ``hub_state``, so the next sync sends them again."""
    rows = conn.execute(
        "SELECT object_type, key FROM hub_events WHERE sync_key = ? AND batch_no = ? ORDER BY seq",
        [sync_key, batch_no],
    ).fetchall()
    answer = f"HTTP {result.status}: {result.body}".strip()
    if len(rows) > 1:
        answer += f" (refused with {len(rows) - 1} other objects, not isolated)"
    conn.execute(
        "INSERT INTO hub_log SELECT sync_key, batch_no, NULL, seq, object_type, log_sis_id, "
        "'e', 'refused', ?, now() FROM hub_events WHERE sync_key = ? AND batch_no = ?",
        [answer, sync_key, batch_no],
    )
    for object_type, key in rows:
        summary.refused[object_type] += 1
        if len(summary.refusals) < 20:
            summary.refusals.append((object_type, key, answer))


def isolate_refused(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    sync_key: str,
    batch_no: int,
    result: PostResult,
    summary: DeliverySummary,
) -> bool:
    """Split a refused batch in halves and post them, again for each refused half, until the
    refused objects are alone or the batch's :func:`split_budget` is spent; record what stays
    refused. False when delivery must stop (a half did not arrive)."""
    (objects,) = conn.execute(
        "SELECT count(*) FROM hub_events WHERE sync_key = ? AND batch_no = ?",
        [sync_key, batch_no],
    ).fetchall()[0]
    budget = split_budget(objects)
    stack = [(batch_no, result, objects)]
    while stack:
        refused_no, refused, size = stack.pop()
        if size < 2 or refused.status not in SPLITTABLE_STATUSES or budget < 2:
            record_refused(conn, sync_key, refused_no, refused, summary)
            continue
        budget -= 2
        refused_halves = []
        for half_no, text, half_size in split_batch(conn, sync_key, refused_no):
            half = post(conn, client, sync_key, half_no, text)
            summary.posted[half.outcome.value] += 1
            summary.split_posts += 1
            if half.outcome is PostOutcome.NOT_ARRIVED:
                summary.stopped = f"the HUB did not take batch {half_no}: {half.body[:200]}"
                return False
            if half.outcome is PostOutcome.REJECTED:
                refused_halves.append((half_no, half, half_size))
        stack.extend(reversed(refused_halves))
    return True


def _pending(
    conn: duckdb.DuckDBPyConnection, sync_key: str, phase: int | None = None
) -> list[tuple[int, list[tuple[int, str]]]]:
    """This sync's unsent batches by phase, in sending order: [(phase, [(batch_no, json)])]."""
    rows = conn.execute(
        "SELECT phase, batch_no, envelope::VARCHAR FROM hub_batches "
        "WHERE sync_key = ? AND status = 'pending' AND (phase = ? OR ? IS NULL) ORDER BY batch_no",
        [sync_key, phase, phase],
    ).fetchall()
    phases: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for batch_phase, batch_no, text in rows:
        phases[batch_phase].append((batch_no, text))
    return sorted(phases.items())


# Entities of this sync's phase that an update found missing at the HUB (an uncertain object
# whose post never arrived), still desired, not held, and not inserted since: insert them now.
MISSING_AFTER_UPDATE_SQL = """
SELECT DISTINCT d.object_type, d.key, d.payload::VARCHAR
FROM hub_log l
JOIN hub_events e ON e.sync_key = l.sync_key AND e.seq = l.seq
JOIN hub_batches b ON b.sync_key = e.sync_key AND b.batch_no = e.batch_no
JOIN hub_desired d ON d.object_type = e.object_type AND d.key = e.key
WHERE l.sync_key = $sync_key AND b.phase = $phase AND e.action = 'update'
  AND l.outcome = 'reconciled'
  AND NOT EXISTS (SELECT 1 FROM hub_state s WHERE s.object_type = d.object_type AND s.key = d.key)
  AND NOT EXISTS (SELECT 1 FROM hub_events i WHERE i.sync_key = e.sync_key
                  AND i.action = 'insert' AND i.object_type = e.object_type AND i.key = e.key
                  AND i.seq > e.seq)
ORDER BY 1, 2
"""


def queue_missing_inserts(
    conn: duckdb.DuckDBPyConnection, sync_key: str, phase: int, envelope: Envelope
) -> int:
    """Store inserts for this phase's entities that their update found missing, so they reach
    the HUB in this run (before the links that name them) rather than the next."""
    rows = conn.execute(MISSING_AFTER_UPDATE_SQL, {"sync_key": sync_key, "phase": phase})
    changes = [Change(kind, "insert", key, json.loads(obj)) for kind, key, obj in rows.fetchall()]
    if not changes:
        return 0
    with transaction(conn):
        store_batches(conn, sync_key, changes, envelope, _doo())
    return len(changes)


def deliver(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    sync_key: str,
    *,
    ack_timeout_s: float,
    poll_s: float = 0.2,
    envelope: Envelope | None = None,
) -> DeliverySummary:
    """Post this sync's batches phase by phase; see the module docstring. With ``envelope``,
    entities an update found missing are inserted in a follow-up batch of the same phase."""
    summary = DeliverySummary()
    earlier, summary.unfinished = acknowledge(
        conn,
        client,
        in_flight_batches(conn),
        timeout_s=ack_timeout_s,
        poll_s=poll_s,
        lost_after_s=ack_timeout_s,
        settled_in=sync_key,
    )
    summary.outcomes.add(earlier)
    if summary.unfinished:
        summary.stopped = "earlier messages are still being processed by the HUB"
        return summary
    for phase, batches in _pending(conn, sync_key):
        if not _deliver_phase(
            conn, client, sync_key, phase, batches, summary, ack_timeout_s, poll_s
        ):
            return summary
        if envelope is not None and queue_missing_inserts(conn, sync_key, phase, envelope):
            for _, follow_ups in _pending(conn, sync_key, phase):
                if not _deliver_phase(
                    conn, client, sync_key, phase, follow_ups, summary, ack_timeout_s, poll_s
                ):
                    return summary
    return summary


def _deliver_phase(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    sync_key: str,
    phase: int,
    batches: list[tuple[int, str]],
    summary: DeliverySummary,
    ack_timeout_s: float,
    poll_s: float,
) -> bool:
    """Post one phase's batches and wait for their logs; False when delivery must stop."""
    refused: list[tuple[int, PostResult]] = []

    def stop(why: str) -> bool:
        for refused_no, refusal in refused:  # refused, not split: logged all the same
            record_refused(conn, sync_key, refused_no, refusal, summary)
        summary.stopped = why
        return False

    for batch_no, text in batches:
        result = post(conn, client, sync_key, batch_no, text)
        summary.posted[result.outcome.value] += 1
        if result.outcome is PostOutcome.NOT_ARRIVED:
            return stop(f"the HUB did not take batch {batch_no}: {result.body[:200]}")
        if result.outcome is PostOutcome.REJECTED:
            refused.append((batch_no, result))  # the phase's other batches go first
            if result.status not in SPLITTABLE_STATUSES:
                return stop(f"the HUB refused batch {batch_no}: {result.body[:200]}")
    while refused:
        batch_no, result = refused.pop(0)
        if not isolate_refused(conn, client, sync_key, batch_no, result, summary):
            return stop(summary.stopped)
    outcomes, summary.unfinished = acknowledge(
        conn,
        client,
        in_flight_batches(conn, sync_key, phase),
        timeout_s=ack_timeout_s,
        poll_s=poll_s,
        lost_after_s=ack_timeout_s,
        settled_in=sync_key,
    )
    summary.outcomes.add(outcomes)
    if summary.unfinished:
        summary.stopped = f"phase {PHASES[phase]} is still being processed by the HUB"
        return False
    return True


# -- assets -----------------------------------------------------------------------------------

HUB_DESIRED = dg.AssetKey("hub_desired")


def _errors_table(outcomes: ItemOutcomes) -> str:
    rows = ["| object | key | message |", "|---|---|---|"]
    rows += [f"| {t} | {k} | {m} |" for t, k, m in outcomes.first_errors]
    return "\n".join(rows)


@dg.asset(
    partitions_def=sync_runs_partitions,
    group_name="hub",
    kinds={"duckdb"},
    pool="duckdb",
    deps=[sync_run, HUB_DESIRED],
)
def hub_payload(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """The events this sync sends the HUB: the diff of ``hub_desired`` against ``hub_state``,
    grouped into batches (one object type and action each, at most HUB_BATCH_SIZE objects and
    1 MB), stored as the exact JSON to post. Re-running replaces the unsent batches.

    First every message still in flight is asked once: finished ones are applied, and one the
    HUB no longer knows (getLog 404) or still processes past HUB_MESSAGE_MAX_AGE is settled as
    an unknown outcome, so its objects are in this diff (sent again as updates)."""
    started = time.monotonic()
    full = parse_sync_key(context.partition_key).mode == "full"
    client = hub.client()
    with warehouse.connection() as conn:
        settled = settle_in_flight(
            conn,
            client,
            context.partition_key,
            lost_after_s=hub.ack_timeout_s,
            max_age_s=hub.message_max_age_s,
        )
        summary = build_payload(
            conn,
            context.partition_key,
            full=full,
            batch_size=hub.batch_size,
            org_id=hub.org_id,
            who=hub.who,
        )
    notes = []
    if settled.messages_lost:
        notes.append(
            f"{settled.messages_lost} message(s) the HUB does not know (getLog 404): outcome "
            "unknown, objects sent again"
        )
    if settled.messages_given_up:
        notes.append(
            f"{settled.messages_given_up} message(s) still processing past HUB_MESSAGE_MAX_AGE "
            f"({hub.message_max_age_s:g} s) given up: outcome unknown, objects sent again"
        )
    for note in notes:
        context.log.warning(note)
    metadata: dict[str, Any] = {f"events_{name}": n for name, n in sorted(summary.changes.items())}
    metadata.update(
        events=sum(summary.changes.values()),
        batches=summary.batches,
        bytes=summary.bytes,
        superseded_batches=summary.superseded,
        recovered_batches=summary.recovered,
        items_acknowledged_late=settled.applied + settled.reconciled + settled.failed,
        messages_lost=settled.messages_lost,
        messages_given_up=settled.messages_given_up,
        diff_s=summary.diff_s,
        duration_s=_since(started),
    )
    metadata[HUB_NOTES_METADATA] = dg.MetadataValue.json(notes)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=sync_runs_partitions,
    group_name="hub",
    kinds={"api", "duckdb"},
    pool="duckdb",
    deps=[hub_payload],
)
def hub_delivery(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """Posts this sync's batches to the HUB phase by phase (terms, subjects, users, sections,
    links; deletes first, in reverse), waiting for each phase's getLog before the next, and
    applies the acknowledged items to ``hub_state``. A POST is repeated only when it provably
    did not arrive; batches still processing when the wait ends are picked up later."""
    started = time.monotonic()
    client = hub.client()
    with warehouse.connection() as conn:
        ensure_same_hub(conn, hub)
        summary = deliver(
            conn,
            client,
            context.partition_key,
            ack_timeout_s=hub.ack_timeout_s,
            poll_s=hub.poll_interval_s,
            envelope=Envelope(hub.org_id, hub.who, hub.batch_size),
        )
        pending = pending_message_ids(conn)
        stuck = stuck_messages(conn, hub.ack_timeout_s)
    if summary.stopped:
        context.log.warning("delivery stopped early: %s", summary.stopped)
    metadata = _delivery_metadata(summary, client, pending)
    metadata.update(_stuck_metadata(stuck))
    notes = hub_notes(summary, stuck, hub)
    for note in notes:
        context.log.warning(note)
    metadata[HUB_NOTES_METADATA] = dg.MetadataValue.json(notes)
    return dg.MaterializeResult(metadata={**metadata, "duration_s": _since(started)})


def ensure_same_hub(conn: duckdb.DuckDBPyConnection, hub: HubResource) -> None:
    """Before any request to the HUB: refuse one other than the HUB ``hub_state`` came from
    (see resources/hub_identity.py; ``hubsync hub-reset`` switches)."""
    try:
        check_hub_identity(conn, HubIdentity.of(hub.api_url, hub.org_id))
    except HubIdentityError as exc:
        raise dg.Failure(str(exc)) from None


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _delivery_metadata(
    summary: DeliverySummary, client: HubClient, pending: list[str]
) -> dict[str, Any]:
    outcomes = summary.outcomes
    return {
        **{f"batches_{name}": n for name, n in sorted(summary.posted.items())},
        "batches_posted": sum(summary.posted.values()),
        "batches_unfinished": summary.unfinished,
        "items_applied": outcomes.applied,
        "items_reconciled": outcomes.reconciled,
        "items_failed": outcomes.failed,
        "errors_by_message": dg.MetadataValue.json(dict(outcomes.errors.most_common(20))),
        "items_failed_by_type": dg.MetadataValue.json(_by_type(outcomes.errors_by_type)),
        "objects_refused": sum(summary.refused.values()),
        "objects_refused_by_type": dg.MetadataValue.json(dict(sorted(summary.refused.items()))),
        "refused_objects": dg.MetadataValue.json(
            [{"object": t, "key": k, "answer": a} for t, k, a in summary.refusals]
        ),
        "batches_split_posts": summary.split_posts,
        "messages_lost": outcomes.messages_lost,
        "messages_given_up": outcomes.messages_given_up,
        "first_errors": dg.MetadataValue.md(_errors_table(outcomes)),
        "stopped": summary.stopped or "no",
        PENDING_MESSAGES_METADATA: dg.MetadataValue.json(pending),
        **client.http.stats.as_metadata(),
    }


# Lines the CLI summary prints under "HUB:" (metadata of hub_delivery).
HUB_NOTES_METADATA = "hub_notes"


def _by_type(errors: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{object type: {the HUB's message: items}}, most frequent first, 20 messages at most."""
    grouped: dict[str, dict[str, int]] = defaultdict(dict)
    for (object_type, message), n in errors.most_common(20):
        grouped[object_type][message] = n
    return dict(sorted(grouped.items()))


def _stuck_metadata(stuck: list[tuple]) -> dict[str, Any]:
    return {
        "messages_processing_past_ack_timeout": len(stuck),
        "oldest_processing_message_s": float(stuck[0][5]) if stuck else 0.0,
    }


def hub_notes(summary: DeliverySummary, stuck: list[tuple], hub: HubResource) -> list[str]:
    """What went wrong at the HUB, one line each, for the CLI summary and the run's log."""
    notes = []
    if summary.refused:
        by_answer: dict[tuple[str, str], list[str]] = defaultdict(list)
        for object_type, key, answer in summary.refusals:
            by_answer[(object_type, answer)].append(key)
        counts = ", ".join(f"{t} {n}" for t, n in sorted(summary.refused.items()))
        notes.append(f"refused by the HUB, not delivered, sent again next sync: {counts}")
        notes += [
            f"  {t} {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}: {answer}"
            for (t, answer), keys in by_answer.items()
        ]
    for object_type, messages in _by_type(summary.outcomes.errors_by_type).items():
        notes += [
            f"item errors (getLog level e), sent again next sync: {object_type} {n} × {message}"
            for message, n in messages.items()
        ]
    if stuck:
        objects: Counter[str] = Counter()
        for _, _, _, object_type, count, _ in stuck:
            objects[object_type] += count
        notes.append(
            f"{len(stuck)} message(s) still processing at the HUB after HUB_ACK_TIMEOUT "
            f"({hub.ack_timeout_s:g} s), oldest {float(stuck[0][5]) / 3600:.2f} h "
            f"({', '.join(f'{t} {n}' for t, n in sorted(objects.items()))}); given up as "
            f"unknown after HUB_MESSAGE_MAX_AGE ({hub.message_max_age_s:g} s)"
        )
    if summary.outcomes.messages_lost:
        notes.append(
            f"{summary.outcomes.messages_lost} message(s) the HUB does not know (getLog 404): "
            "outcome unknown, objects sent again"
        )
    return notes


@dg.asset(group_name="hub", kinds={"api", "duckdb"}, pool="duckdb", deps=[hub_delivery])
def hub_acknowledgement(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """Applies the getLog results of every batch still in flight (from any sync) to
    ``hub_state``: what a sync's delivery did not wait for, or what the log sensor found
    finished."""
    started = time.monotonic()
    client = hub.client()
    with warehouse.connection() as conn:
        ensure_same_hub(conn, hub)
        outcomes, unfinished = acknowledge(
            conn,
            client,
            in_flight_batches(conn),
            timeout_s=hub.ack_timeout_s,
            poll_s=hub.poll_interval_s,
        )
        pending = pending_message_ids(conn)
    summary = DeliverySummary(outcomes=outcomes, unfinished=unfinished)
    metadata = _delivery_metadata(summary, client, pending)
    return dg.MaterializeResult(metadata={**metadata, "duration_s": _since(started)})


# -- guards -----------------------------------------------------------------------------------


# What this sync's pending batches take away from the HUB, per object type: deletes, and updates
# that archive an object (status -> 'arquived'), which hides it as surely as a delete does.
REMOVALS_SQL = """
WITH pending AS (
    SELECT e.object_type, e.action, e.key, e.payload
    FROM hub_events e JOIN hub_batches b USING (sync_key, batch_no)
    WHERE e.sync_key = $sync_key AND b.status = 'pending'
),
removals AS (
    SELECT p.object_type,
           count(*) FILTER (WHERE p.action = 'delete') AS deletes,
           count(*) FILTER (WHERE p.action = 'update') AS archivals
    FROM pending p LEFT JOIN hub_state s USING (object_type, key)
    WHERE p.action = 'delete'
       OR (p.action = 'update' AND p.payload->>'$.status' = 'arquived'
           AND (s.payload->>'$.status') IS DISTINCT FROM 'arquived')
    GROUP BY 1
)
SELECT s.object_type, count(*) AS state,
       coalesce(any_value(r.deletes), 0) AS deletes,
       coalesce(any_value(r.archivals), 0) AS archivals
FROM hub_state s LEFT JOIN removals r USING (object_type)
GROUP BY 1 ORDER BY 1
"""


def removals_by_type(
    conn: duckdb.DuckDBPyConnection, sync_key: str
) -> list[tuple[str, int, int, int]]:
    """(object type, acknowledged objects, deletes, archivals) of this sync's pending batches."""
    return conn.execute(REMOVALS_SQL, {"sync_key": sync_key}).fetchall()


@dg.asset_check(asset=hub_payload, blocking=True, pool="duckdb")
def hub_deletes_within_limit(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.AssetCheckResult:
    """Deletes and archivals (updates to status ``arquived``, e.g. every student
    exmatriculated) above HUB_MAX_DELETE_SHARE of an object type's acknowledged state block
    delivery, unless the run carries the tag ``hubsync/allow-deletes=true``."""
    sync_key = context.run.tags.get("dagster/partition", "")
    with warehouse.connection() as conn:
        shares = removals_by_type(conn, sync_key)
    over = {t: d + a for t, n, d, a in shares if n and (d + a) / n > hub.max_delete_share}
    archivals = {t: a for t, _, _, a in shares if a}
    allowed = context.run.tags.get(ALLOW_DELETES_TAG) == "true"
    return dg.AssetCheckResult(
        passed=not over or allowed,
        metadata={
            "deletes_over_limit": dg.MetadataValue.json(over),
            "archivals": dg.MetadataValue.json(archivals),
            "max_delete_share": hub.max_delete_share,
            "override": allowed,
        },
        description=(
            f"deletes and archivals above {hub.max_delete_share:.0%} of {', '.join(over)}; "
            f"launch the run with tag {ALLOW_DELETES_TAG}=true to allow them"
        )
        if over
        else None,
    )


@dg.asset_check(asset=hub_payload, blocking=True, pool="duckdb")
def hub_desired_codes_unique(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Two desired objects of one type with the same business key block delivery."""
    with warehouse.connection() as conn:
        rows = conn.execute(
            "SELECT object_type, key, count(*) FROM hub_desired "
            "GROUP BY ALL HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 20"
        ).fetchall()
    return dg.AssetCheckResult(
        passed=not rows,
        metadata={
            "duplicates": dg.MetadataValue.json(
                [{"object": t, "key": k, "count": n} for t, k, n in rows]
            )
        },
    )


def _references_sql() -> str:
    """The references of desired objects to objects neither desired nor acknowledged: one
    SELECT per referencing field of ``OBJECT_TYPES`` (a field that may be absent refers to
    nothing when it is)."""
    refs = " UNION ALL ".join(
        f"SELECT object_type, key, '{target}' AS ref_type, payload->>'{path}' AS ref "
        f"FROM hub_desired WHERE object_type = '{t.name}'"
        + (f" AND payload->>'{path}' IS NOT NULL" if t.optional(path) else "")
        for t in OBJECT_TYPES
        for path, target in t.references
    )
    return f"""
WITH known AS (
    SELECT object_type, key FROM hub_desired UNION SELECT object_type, key FROM hub_state
),
refs AS ({refs})
SELECT r.object_type, r.key, r.ref_type, r.ref FROM refs r
WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.object_type = r.ref_type AND k.key = r.ref)
ORDER BY 1, 2 LIMIT 20
"""


REFERENCES_SQL = _references_sql()


@dg.asset_check(asset=hub_payload, blocking=True, pool="duckdb")
def hub_links_reference_known_objects(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Every link and section references an object the HUB holds or this sync sends."""
    with warehouse.connection() as conn:
        rows = conn.execute(REFERENCES_SQL).fetchall()
    return dg.AssetCheckResult(
        passed=not rows,
        metadata={
            "dangling": dg.MetadataValue.json(
                [{"object": t, "key": k, "missing": f"{r} {c}"} for t, k, r, c in rows]
            )
        },
    )


@dg.asset_check(asset=hub_delivery, blocking=False, pool="duckdb")
def hub_items_refused(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """WARN when the HUB answered items of this sync's batches with an error (getLog level
    ``e``, not reconciled): they are not acknowledged and are sent again by the next sync."""
    sync_key = context.run.tags.get("dagster/partition", "")
    with warehouse.connection() as conn:
        rows = conn.execute(
            "SELECT object_type, message, count(*) FROM hub_log WHERE sync_key = ? "
            "AND outcome = 'failed' GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT 20",
            [sync_key],
        ).fetchall()
        (total,) = conn.execute(
            "SELECT count(*) FROM hub_log WHERE sync_key = ? AND outcome = 'failed'", [sync_key]
        ).fetchall()[0]
    by_type = _by_type(Counter({(t, m): n for t, m, n in rows}))
    return dg.AssetCheckResult(
        passed=not total,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"items_failed": total, "by_type": dg.MetadataValue.json(by_type)},
        description=(
            f"the HUB answered {total} item(s) with an error: "
            + "; ".join(f"{t} {n} × {m}" for t, m, n in rows[:5])
        )
        if total
        else None,
    )


@dg.asset_check(asset=hub_delivery, blocking=False, pool="duckdb")
def hub_messages_finish_in_time(
    warehouse: WarehouseResource, hub: HubResource
) -> dg.AssetCheckResult:
    """WARN while messages are still processing at the HUB longer than HUB_ACK_TIMEOUT after
    they were posted (their objects wait; past HUB_MESSAGE_MAX_AGE they are given up)."""
    with warehouse.connection() as conn:
        stuck = stuck_messages(conn, hub.ack_timeout_s)
    return dg.AssetCheckResult(
        passed=not stuck,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **_stuck_metadata(stuck),
            "messages": dg.MetadataValue.json(
                [
                    {"message_id": m, "object": t, "objects": n, "age_s": float(age)}
                    for _, _, m, t, n, age in stuck[:20]
                ]
            ),
        },  # fmt: skip
        description=(
            f"{len(stuck)} message(s) still processing after HUB_ACK_TIMEOUT "
            f"({hub.ack_timeout_s:g} s); given up after HUB_MESSAGE_MAX_AGE "
            f"({hub.message_max_age_s:g} s)"
        )
        if stuck
        else None,
    )


HUB_ASSETS = [hub_payload, hub_delivery, hub_acknowledgement]
HUB_CHECKS = [
    hub_deletes_within_limit,
    hub_desired_codes_unique,
    hub_links_reference_known_objects,
    hub_items_refused,
    hub_messages_finish_in_time,
]
