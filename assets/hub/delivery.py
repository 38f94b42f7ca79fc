"""Delivery: posting the batches phase by phase, each phase acknowledged before the next;
a refused batch is split until the refused objects are isolated."""

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import duckdb

from assets.hub.acknowledgement import ItemOutcomes, acknowledge, in_flight_batches, mark_uncertain
from assets.hub.diff import PHASES, Change
from assets.hub.payload import (
    ENVELOPE_COLUMNS,
    Envelope,
    doo,
    envelope_text_of,
    store_batches,
    stored_envelope,
)
from resources.hub import HubClient, PostOutcome, PostResult, envelope
from resources.warehouse import transaction

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
    phase, object_type, action, text, compressed = conn.execute(
        f"SELECT phase, object_type, action, {ENVELOPE_COLUMNS} FROM hub_batches "
        "WHERE sync_key = ? AND batch_no = ?",
        [sync_key, batch_no],
    ).fetchall()[0]
    head = json.loads(envelope_text_of(text, compressed))
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
                "objects, envelope_zlib, bytes, status, split_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                [sync_key, last + offset, phase, object_type, action, len(part),
                 stored_envelope(half_text), len(half_text.encode()), batch_no],
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
        f"SELECT phase, batch_no, {ENVELOPE_COLUMNS} FROM hub_batches "
        "WHERE sync_key = ? AND status = 'pending' AND (phase = ? OR ? IS NULL) ORDER BY batch_no",
        [sync_key, phase, phase],
    ).fetchall()
    phases: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for batch_phase, batch_no, text, compressed in rows:
        phases[batch_phase].append((batch_no, envelope_text_of(text, compressed)))
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
    # nearly always none: the join below reads every event and desired object (30 ms a phase
    # at 100,000 students), so first ask whether any update of this sync was reconciled
    reconciled = conn.execute(
        "SELECT 1 FROM hub_log WHERE sync_key = ? AND outcome = 'reconciled' LIMIT 1", [sync_key]
    ).fetchall()
    if not reconciled:
        return 0
    rows = conn.execute(MISSING_AFTER_UPDATE_SQL, {"sync_key": sync_key, "phase": phase})
    changes = [Change(kind, "insert", key, json.loads(obj)) for kind, key, obj in rows.fetchall()]
    if not changes:
        return 0
    with transaction(conn):
        store_batches(conn, sync_key, changes, envelope, doo())
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
    still = "earlier messages are still being processed by the HUB"
    if not _await_logs(
        conn, client, sync_key, in_flight_batches(conn), summary, ack_timeout_s, poll_s, still
    ):
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
    still = f"phase {PHASES[phase]} is still being processed by the HUB"
    return _await_logs(
        conn, client, sync_key, in_flight_batches(conn, sync_key, phase), summary,
        ack_timeout_s, poll_s, still,
    )  # fmt: skip


def _await_logs(
    conn: duckdb.DuckDBPyConnection,
    client: HubClient,
    sync_key: str,
    batches: list[tuple[str, int, str]],
    summary: DeliverySummary,
    ack_timeout_s: float,
    poll_s: float,
    still_processing: str,
) -> bool:
    """Wait for ``batches``' logs and add their outcomes to ``summary``; False (delivery stops,
    saying ``still_processing``) when some are still unfinished at the timeout."""
    outcomes, summary.unfinished = acknowledge(
        conn,
        client,
        batches,
        timeout_s=ack_timeout_s,
        poll_s=poll_s,
        lost_after_s=ack_timeout_s,
        settled_in=sync_key,
    )
    summary.outcomes.add(outcomes)
    if summary.unfinished:
        summary.stopped = still_processing
        return False
    return True
