"""Acknowledgement: reading ``getLog`` for posted batches and applying each item's outcome to
``hub_state`` (reconciling "already exists" and "not found"; an unknown fate makes objects
uncertain)."""

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    import pandas as pd

from resources.hub import (
    ALREADY_EXISTS,
    LINK_TYPES,
    NOT_FOUND,
    BaseItem,
    HubClient,
    MessageNotFound,
    SyncLog,
)
from resources.warehouse import transaction

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
        remaining = deadline - time.monotonic()
        if not waiting or remaining <= 0:
            break
        # the last wait is cut to the deadline and followed by one more poll: stopping once the
        # next (doubled) wait would pass it ended the wait up to 5 s before the timeout
        sleep(min(delay, remaining))
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


def errors_by_type(errors: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{object type: {the HUB's message: items}}, most frequent first, 20 messages at most."""
    grouped: dict[str, dict[str, int]] = defaultdict(dict)
    for (object_type, message), n in errors.most_common(20):
        grouped[object_type][message] = n
    return dict(sorted(grouped.items()))


def stuck_metadata(stuck: list[tuple]) -> dict[str, Any]:
    return {
        "messages_processing_past_ack_timeout": len(stuck),
        "oldest_processing_message_s": float(stuck[0][5]) if stuck else 0.0,
    }
