"""Events and batches: the diff grouped per phase into batches of at most ``MAX_BATCH_BYTES``,
stored as the exact JSON to post before anything is posted.

A sync's batches are written chunk by chunk, each chunk committed as ``building`` batches that
nothing sends, and made ``pending`` together in one last transaction. Holding them all in one
transaction kept every uncommitted row in memory: 1.15 GB for the half million events of a first
full sync at 100,000 students, against 0.6 GB so. A build that dies half-way leaves
``building`` batches, which the next build deletes before it starts."""

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from assets.hub.acknowledgement import mark_uncertain
from assets.hub.diff import Change, compute_diff, read_diff
from resources.hub import envelope
from resources.warehouse import deflate, inflate, transaction

MAX_BATCH_BYTES = 1_000_000
BUILDING = "building"  # written by a payload build that has not finished: never sent


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


def doo(now: datetime | None = None) -> str:
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
    """Replace this sync's unsent events and batches with the current diff. Unsent batches are
    dropped first: what they held is in the new diff, which is computed from ``hub_desired``
    and ``hub_state`` alone (batches in flight left out)."""
    recovered = recover_interrupted(conn)
    with transaction(conn):
        superseded = _supersede_unsent(conn, sync_key)
    diff_started = time.perf_counter()
    counts = compute_diff(conn, full=full)
    diff_s = time.perf_counter() - diff_started
    batches, total_bytes = store_batches(
        conn,
        sync_key,
        read_diff(conn),
        Envelope(org_id, who, batch_size, max_bytes),
        doo(now),
        building=True,
    )
    with transaction(conn):
        conn.execute(
            "UPDATE hub_batches SET status = 'pending' WHERE sync_key = ? AND status = ?",
            [sync_key, BUILDING],
        )
    return PayloadSummary(counts, batches, total_bytes, superseded, recovered, round(diff_s, 3))


STORE_CHUNK = 20_000  # events buffered before they are written


def store_batches(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    changes: Iterable[Change],
    envelope: Envelope,
    doo: str,
    *,
    building: bool = False,
) -> tuple[int, int]:
    """Store ``changes`` as this sync's next pending batches, each with the exact JSON to post;
    return (batches, bytes). Written in chunks as the changes arrive, in the caller's
    transaction; with ``building``, each chunk is committed on its own as ``building``
    batches, for the caller to make pending (see the module doc)."""
    row = conn.execute(
        "SELECT coalesce(max(batch_no), 0), coalesce(max(seq), 0) "
        "FROM hub_events WHERE sync_key = ?",
        [sync_key],
    ).fetchall()[0]
    last_batch, seq = row if row else (0, 0)
    batch_rows: list[tuple] = []
    event_rows: list[tuple] = []
    batches = total_bytes = 0

    batch_select = BATCH_SELECT.format(status=BUILDING if building else "pending")

    def flush() -> None:
        with transaction(conn) if building else nullcontext():
            _insert_rows(conn, "hub_batches", BATCH_COLUMNS, batch_rows, batch_select)
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
                stored_envelope(text),
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
    "sync_key, batch_no, phase, object_type, action, objects, envelope_zlib, bytes, '{status}'"
)
EVENT_SELECT = "sync_key, seq, batch_no, object_type, action, key, log_sis_id, payload::JSON"
BATCH_COLUMNS = [
    "sync_key",
    "batch_no",
    "phase",
    "object_type",
    "action",
    "objects",
    "envelope_zlib",
    "bytes",
]


def stored_envelope(text: str) -> bytes:
    """An envelope as ``hub_batches.envelope_zlib`` keeps it."""
    return deflate(text.encode())


# A batch's envelope as SQL columns, and its text from them (see envelope_text_of).
ENVELOPE_COLUMNS = "envelope::VARCHAR, envelope_zlib"


def envelope_text_of(text: str | None, compressed: bytes | None) -> str:
    """The exact text a batch posts: ``envelope_zlib`` inflated, or, for a batch stored before
    envelopes were compressed, ``envelope``."""
    if compressed is not None:
        return inflate(compressed)
    if text is None:
        raise ValueError("a HUB batch without an envelope")
    return text


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
    """Unsent batches are recomputed: this key's are dropped, older keys' marked superseded,
    and those an interrupted build left ``building`` (of any key) dropped."""
    dropped = "(b.sync_key = $key AND b.status = 'pending') OR b.status = $building"
    params = {"key": sync_key, "building": BUILDING}
    conn.execute(
        f"DELETE FROM hub_events e USING hub_batches b WHERE b.sync_key = e.sync_key "
        f"AND b.batch_no = e.batch_no AND ({dropped})",
        params,
    )
    conn.execute(f"DELETE FROM hub_batches b WHERE {dropped}", params)
    row = conn.execute("SELECT count(*) FROM hub_batches WHERE status = 'pending'").fetchall()[0]
    conn.execute("UPDATE hub_batches SET status = 'superseded' WHERE status = 'pending'")
    return int(row[0]) if row else 0
