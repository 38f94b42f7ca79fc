"""CAMPUSonline assets: raw landing (with the sync cursor) and the current CO state.

``co_raw_pages`` runs one CO sync for the partition's key (full or incremental, see
``assets/campusonline/sync.py``) and lands every page in ``raw_co_students``,
``raw_co_studies`` and ``raw_co_applications``; the cursor row of the sync (``co_sync_cursor``)
commits in the same transaction as the pages, so a failed sync advances nothing.

``co_current_state`` validates the sync's rows into ``stg_co_*`` (malformed rows go to
``quarantine``; ``assets/campusonline/staging.py``) and rebuilds ``co_students``, ``co_studies``
and ``co_applications``: the latest full sync up to this one, overlaid with the rows of the
incremental syncs after it (or, for the incremental sync after the one the tables hold, only its
own rows on top).
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import duckdb

from assets.campusonline.staging import DUPLICATE_REASON, stage_sync
from assets.campusonline.sync import CODES, CoCursor, CoSyncRunner, SyncOutcome
from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import sync_run
from resources.campusonline import SERVICES, CampusOnlineResource, CoPage, CoService
from resources.campusonline.schema import (
    CURRENT_TABLES,
    RAW_TABLES,
    RECORD_TYPES,
    STAGING_TABLES,
)
from resources.change_detection import current_state_build
from resources.graph_changes import note_changed_rows, note_rebuild
from resources.warehouse import WAREHOUSE_POOL, PageWriter, WarehouseResource, transaction

GROUP = "campusonline"
FULL_REQUEST_KEYS = {
    "students": ("students:active", "students:inactive"),
    "studies": ("studies:active", "studies:inactive"),
    "applications": ("applications",),
}

raw_specs = [
    dg.AssetSpec(
        RAW_TABLES[code],
        group_name=GROUP,
        kinds={"api", "duckdb"},
        partitions_def=sync_runs_partitions,
        deps=[sync_run],
        description=f"CAMPUSonline {code} pages of each sync, as received (one row per page).",
    )
    for code in CODES
]
current_specs = [
    dg.AssetSpec(
        CURRENT_TABLES[code],
        group_name=GROUP,
        kinds={"duckdb"},
        partitions_def=sync_runs_partitions,
        deps=[RAW_TABLES[c] for c in CODES],
        description=(
            f"Current CAMPUSonline {code}, one row per id: the latest full sync overlaid with "
            "later incremental rows; CO's field names, TIMESTAMP in UTC, changed_in_sync."
        ),
    )
    for code in CODES
]


def model_columns(service: CoService) -> list[str]:
    return list(service.model.model_fields)


def _sql_columns(service: CoService, prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{name}"' for name in model_columns(service))


# --------------------------------------------------------------------------------------------
# Cursor storage


def load_cursor(conn: duckdb.DuckDBPyConnection, exclude_key: str | None = None) -> CoCursor:
    """The cursor of the latest successful sync that landed CO data (empty when none did)."""
    row = conn.execute(
        """
        SELECT c.last_sync_students, c.last_sync_studies, c.last_sync_applications,
               c.live_students, c.live_studies, c.live_applications
        FROM co_sync_cursor c JOIN sync_runs r ON r.key = c.sync_key
        WHERE r.status = 'success' AND c.sync_key IS DISTINCT FROM ?
        ORDER BY c.committed_at DESC LIMIT 1
        """,
        [exclude_key],
    ).fetchone()
    if row is None:
        return CoCursor()
    return CoCursor(
        last_sync={code: _utc(value) for code, value in zip(CODES, row[:3], strict=True)},
        live={
            code: CoCursor.live_from_json(text) for code, text in zip(CODES, row[3:], strict=True)
        },
    )


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def save_cursor(
    conn: duckdb.DuckDBPyConnection, key: str, started_at: datetime, outcome: SyncOutcome
) -> None:
    cursor = outcome.cursor
    conn.execute(
        "INSERT OR REPLACE INTO co_sync_cursor VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            key,
            outcome.mode,
            started_at,
            *(cursor.last_sync[code] for code in CODES),
            *(cursor.live_json(code) for code in CODES),
            outcome.changed_students,
            len(outcome.vanished_students),
        ],
    )


def _watermark(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def record_sync_run(
    conn: duckdb.DuckDBPyConnection, key: str, used: CoCursor, outcome: SyncOutcome
) -> None:
    """``sync_runs``: ``fallback`` as the effective mode, and the LastSyncDates used/reached."""
    watermarks = {
        "co": {
            "mode": outcome.mode,
            "last_sync_used": {c: _watermark(used.last_sync[c]) for c in CODES},
            "last_sync_reached": {c: _watermark(outcome.cursor.last_sync[c]) for c in CODES},
        }
    }
    row = conn.execute("SELECT watermarks FROM sync_runs WHERE key = ?", [key]).fetchone()
    if row is None:
        return  # the CO assets were materialised without sync_run (e.g. alone in a test)
    merged = {**json.loads(row[0] or "{}"), **watermarks}  # other sources keep their entries
    conn.execute(
        """
        UPDATE sync_runs
        SET effective_mode = CASE WHEN ? = 'fallback' THEN 'fallback' ELSE effective_mode END,
            watermarks = ?::JSON
        WHERE key = ?
        """,
        [outcome.mode, json.dumps(merged), key],
    )


# --------------------------------------------------------------------------------------------
# Raw landing


@dataclass
class _RawSink:
    writers: dict[str, PageWriter]

    def __call__(self, page: CoPage, request_key: str) -> None:
        self.writers[page.service.code].add(
            request_key=request_key,
            page_nr=page.page_nr,
            request_params=page.request_params,
            body=page.body,
            record_count=len(page.rows),
            fetched_at=page.fetched_at,
        )


def _fresh_writer(conn: duckdb.DuckDBPyConnection, table: str, key: str) -> PageWriter:
    conn.execute(f"DELETE FROM {table} WHERE sync_key = ?", [key])
    return PageWriter(conn, table, key, compressed=True)


@dg.multi_asset(
    specs=raw_specs,
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
    can_subset=False,
    name="co_raw_pages",
)
def co_raw_pages(
    context: dg.AssetExecutionContext,
    campusonline: CampusOnlineResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.MaterializeResult]:
    """Runs the CAMPUSonline sync of this key and lands every page as it arrives.

    Full keys read everything (applications, active and inactive studies, active and inactive
    students); incremental keys read the active pool's changes since the last successful
    sync's LastSyncDates and re-read each changed student, falling back to a full sync when
    more than CO_INCREMENTAL_THRESHOLD students changed. Pages and the new cursor commit
    together, only when the whole CO sync succeeded; re-running a key replaces its pages.
    """
    key = context.partition_key
    sync_key = parse_sync_key(key)
    started = time.monotonic()
    with warehouse.connection() as conn, transaction(conn):
        writers = {code: _fresh_writer(conn, RAW_TABLES[code], key) for code in CODES}
        used = load_cursor(conn, exclude_key=key) if sync_key.mode == "incremental" else CoCursor()
        with campusonline.client() as client:
            runner = CoSyncRunner(
                client,
                _RawSink(writers),
                threshold=campusonline.incremental_threshold,
                info=context.log.info,
            )
            outcome = runner.full() if sync_key.mode == "full" else runner.incremental(used)
            stats = client.http.stats.as_metadata()
        save_cursor(conn, key, sync_key.started_at, outcome)
        record_sync_run(conn, key, used, outcome)
    duration_s = round(time.monotonic() - started, 3)
    context.log.info(
        f"CAMPUSonline {outcome.mode} sync: {sum(w.pages for w in writers.values())} pages, "
        f"{outcome.changed_students} changed students, {outcome.processed_students} re-read, "
        f"{len(outcome.vanished_students)} vanished"
    )
    for code in CODES:
        yield dg.MaterializeResult(
            asset_key=RAW_TABLES[code],
            metadata={
                "pages": writers[code].pages,
                "records": writers[code].records,
                "dagster/row_count": writers[code].pages,
                "requests": int(stats["requests"]),
                "retries": int(stats["retries"]),
                "bytes": int(stats["bytes"]),
                "http_seconds": float(stats["http_seconds"]),
                "parse_seconds": float(stats["parse_seconds"]),
                "write_seconds": round(sum(w.seconds for w in writers.values()), 3),
                "duration_s": duration_s,
                "mode": outcome.mode,
                "changed_students": outcome.changed_students,
                "processed_students": outcome.processed_students,
                "vanished_students": len(outcome.vanished_students),
                "pages_by_call": dg.MetadataValue.json(outcome.calls),
            },
        )


# --------------------------------------------------------------------------------------------
# Current state


def rebuild_current_state(
    conn: duckdb.DuckDBPyConnection, key: str
) -> tuple[Literal["overlay", "rebuild"], dict[str, dict[str, int]]]:
    """Rebuild ``co_*`` as of ``key``: the base, overlaid with the syncs after it up to
    ``key``. The base is ``key`` itself when it is full (or a fallback), else the latest full
    sync before it that succeeded: a full sync that failed (one the mass-delete guard blocked)
    only overlays the rows it read and deletes nothing, or every sync after it would be built on
    its snapshot and be blocked too.

    Incremental syncs contribute the rows of the students they re-read: the student row from the
    person fetch, else from the delta, and the student's studies and applications as re-read
    (upserts: deletions only ever come from a full sync). A row keeps ``changed_in_sync`` while
    its content stays the same.

    Returns how the tables were built, and counts per table: an incremental sync that follows
    the sync whose state the tables hold (``co_current_built``) only overlays its own rows
    (``overlay``, O(changes)); every other sync rebuilds the chain (``rebuild``).
    """
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE co_chain AS
        WITH target AS (SELECT sync_started_at FROM co_sync_cursor WHERE sync_key = $key),
        base AS (  -- a full sync that failed (blocked by the delete guard, say) is no base
            SELECT coalesce(max(c.sync_started_at), '-infinity'::TIMESTAMPTZ) AS started_at
            FROM co_sync_cursor c, target t
            WHERE c.effective_mode <> 'incremental' AND c.sync_started_at <= t.sync_started_at
              AND (c.sync_key = $key
                   OR EXISTS (SELECT 1 FROM sync_runs r
                              WHERE r.key = c.sync_key AND r.status = 'success')
                   -- landed without sync bookkeeping (the CO assets materialized alone)
                   OR NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.key = c.sync_key))
        )
        SELECT c.sync_key, c.sync_started_at, c.effective_mode <> 'incremental' AS is_full
        FROM co_sync_cursor c, base b, target t
        WHERE c.sync_started_at >= b.started_at AND c.sync_started_at <= t.sync_started_at
        """,
        {"key": key},
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE co_processed AS
        SELECT DISTINCT r.sync_key, CAST(split_part(r.request_key, ':', 3) AS BIGINT) AS person
        FROM raw_co_studies r JOIN co_chain ch ON ch.sync_key = r.sync_key AND NOT ch.is_full
        WHERE r.request_key LIKE 'studies:person:%'
        """
    )
    build = _build_mode(conn, key)
    counts = {}
    for code in CODES:
        table_build = _overlay_table if build == "overlay" else _rebuild_table
        counts[code] = table_build(conn, key, SERVICES[code])
    conn.execute("DELETE FROM co_current_built")
    conn.execute(
        "INSERT INTO co_current_built SELECT $key, "
        "(SELECT sync_key FROM co_chain ORDER BY sync_started_at LIMIT 1)",
        {"key": key},
    )
    _note_graph_changes(conn, key)
    return build, counts


def _note_graph_changes(conn: duckdb.DuckDBPyConnection, key: str) -> None:
    """Tell the next ``hub_desired`` build which students changed (a student removed changes
    its person, which ``persons`` notes); after a full sync it rebuilds everything."""
    full = conn.execute("SELECT is_full FROM co_chain WHERE sync_key = ?", [key]).fetchone()
    if full and full[0]:
        note_rebuild(conn, f"a full CAMPUSonline sync ({key})")
    note_changed_rows(conn, "co_student", "co_students", "STPERSONNR", key)


def _build_mode(conn: duckdb.DuckDBPyConnection, key: str) -> Literal["overlay", "rebuild"]:
    """Whether ``key`` overlays the tables or rebuilds the chain (a base that changed because a
    full sync failed after its state was built rebuilds too)."""
    chain = conn.execute(
        "SELECT sync_key, is_full FROM co_chain ORDER BY sync_started_at"
    ).fetchall()
    built = conn.execute("SELECT built_from_key, base_key FROM co_current_built").fetchall()
    return current_state_build(chain, built, key)


def _applicable_rows_filter(code: str) -> str:
    full_keys = ", ".join(f"'{k}'" for k in FULL_REQUEST_KEYS[code])
    incremental = f"s.request_key LIKE '{code}:person:%'"
    if code == "students":
        incremental += """
            OR (s.request_key = 'students:delta' AND EXISTS (
                SELECT 1 FROM co_processed p
                WHERE p.sync_key = s.sync_key AND p.person = s.STPERSONNR))
        """
    return (
        f"(ch.is_full AND s.request_key IN ({full_keys})) OR (NOT ch.is_full AND ({incremental}))"
    )


def _picked_sql(service: CoService, *, only_key: bool) -> str:
    """Each id's row as of the chain: the applicable staged row of the latest sync that has one
    (``only_key``: of ``$key`` alone)."""
    code, id_field = service.code, service.model.id_field
    return f"""
        SELECT {_sql_columns(service, "s.")}, s.row_hash
        FROM {STAGING_TABLES[code]} s JOIN co_chain ch ON ch.sync_key = s.sync_key
        WHERE ({_applicable_rows_filter(code)}) {"AND s.sync_key = $key" if only_key else ""}
        QUALIFY row_number() OVER (
            PARTITION BY s.{id_field}
            ORDER BY ch.sync_started_at DESC, (s.request_key LIKE '%:person:%') DESC,
                     s."TIMESTAMP" DESC, s.request_key DESC, s.page_nr DESC, s.row_nr DESC
        ) = 1
    """


def _new_rows_sql(service: CoService, *, only_key: bool) -> str:
    """The picked rows (CTE ``picked``) with ``changed_in_sync``: the current row's where the
    content is unchanged, else ``$key``."""
    code, id_field = service.code, service.model.id_field
    return f"""
        WITH picked AS ({_picked_sql(service, only_key=only_key)})
        SELECT {_sql_columns(service, "p.")}, p.row_hash,
               CASE WHEN o.row_hash = p.row_hash THEN o.changed_in_sync ELSE $key END
                   AS changed_in_sync
        FROM picked p LEFT JOIN {CURRENT_TABLES[code]} o ON o.{id_field} = p.{id_field}
    """


def _rebuild_table(conn: duckdb.DuckDBPyConnection, key: str, service: CoService) -> dict[str, int]:
    code, id_field = service.code, service.model.id_field
    columns = _sql_columns(service)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE co_new AS
        {_new_rows_sql(service, only_key=False)}
        UNION ALL  -- ids quarantined as duplicates in the chain keep their current record
        SELECT {_sql_columns(service, "o.")}, o.row_hash, o.changed_in_sync
        FROM {CURRENT_TABLES[code]} o
        WHERE o.{id_field} NOT IN (SELECT {id_field} FROM picked)
          AND o.{id_field}::VARCHAR IN (
              SELECT q.record_key FROM quarantine q JOIN co_chain ch USING (sync_key)
              WHERE q.source = 'co' AND q.record_type = $record_type
                AND starts_with(q.reason, '{DUPLICATE_REASON} '))
        """,
        {"key": key, "record_type": RECORD_TYPES[code]},
    )
    table = CURRENT_TABLES[code]
    (removed,) = conn.execute(
        f"SELECT count(*) FROM {table} WHERE {id_field} NOT IN (SELECT {id_field} FROM co_new)"
    ).fetchone() or (0,)
    conn.execute(f"DELETE FROM {table}")
    conn.execute(f"INSERT INTO {table} ({columns}, row_hash, changed_in_sync) SELECT * FROM co_new")
    return _table_counts(conn, key, table, removed=int(removed))


def _overlay_table(conn: duckdb.DuckDBPyConnection, key: str, service: CoService) -> dict[str, int]:
    """The rows of incremental ``key`` over tables that hold its predecessor's state: what
    ``_rebuild_table`` gives (incremental syncs only add and replace rows; ids quarantined as
    duplicates in ``key`` keep their record), in time proportional to the sync's rows."""
    code, id_field = service.code, service.model.id_field
    table, columns = CURRENT_TABLES[code], _sql_columns(service)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE co_new AS {_new_rows_sql(service, only_key=True)}",
        {"key": key},
    )
    conn.execute(f"DELETE FROM {table} o USING co_new n WHERE o.{id_field} = n.{id_field}")
    conn.execute(f"INSERT INTO {table} ({columns}, row_hash, changed_in_sync) SELECT * FROM co_new")
    return _table_counts(conn, key, table, removed=0)


def _table_counts(
    conn: duckdb.DuckDBPyConnection, key: str, table: str, *, removed: int
) -> dict[str, int]:
    rows, changed = conn.execute(
        f"SELECT count(*), count(*) FILTER (changed_in_sync = ?) FROM {table}", [key]
    ).fetchone() or (0, 0)
    return {"rows": int(rows), "changed": int(changed), "removed": removed}


_DUCKDB_TYPES = {"BIGINT": "int", "VARCHAR": "string", "DATE": "date", "TIMESTAMPTZ": "timestamptz"}


def column_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, _DUCKDB_TYPES.get(kind, kind.lower()))
            for name, kind in conn.execute(
                "SELECT column_name, data_type FROM duckdb_columns() "
                "WHERE table_name = ? ORDER BY column_index",
                [table],
            ).fetchall()
        ]
    )


@dg.multi_asset(
    specs=current_specs,
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
    can_subset=False,
    name="co_current_state",
)
def co_current_state(
    context: dg.AssetExecutionContext,
    campusonline: CampusOnlineResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.MaterializeResult]:
    """Validates this sync's CAMPUSonline rows and rebuilds the current co_students,
    co_studies and co_applications.

    Rows failing validation go to quarantine with the reason. The current tables hold the latest
    full sync overlaid with the later incremental rows; records absent from a full sync are
    gone. ``changed_in_sync`` names the sync that last changed a row.
    """
    key = context.partition_key
    started = time.monotonic()
    with warehouse.connection() as conn, transaction(conn):
        mode_row = conn.execute(
            "SELECT effective_mode, changed_students FROM co_sync_cursor WHERE sync_key = ?",
            [key],
        ).fetchone()
        if mode_row is None:
            raise dg.Failure(f"CAMPUSonline pages of {key} have not landed: run co_raw_pages first")
        staged = stage_sync(conn, key, campusonline.zone, memory_mb=warehouse.memory_mb)
        landed = {
            code: conn.execute(
                "SELECT count(*), coalesce(sum(coalesce(body_bytes, length(body::VARCHAR))), 0) "
                f"FROM {RAW_TABLES[code]} "
                "WHERE sync_key = ?",
                [key],
            ).fetchall()[0]
            for code in CODES
        }
        build, counts = rebuild_current_state(conn, key)
        schemas = {code: column_schema(conn, CURRENT_TABLES[code]) for code in CODES}
    duration_s = round(time.monotonic() - started, 3)
    for code in CODES:
        yield dg.MaterializeResult(
            asset_key=CURRENT_TABLES[code],
            metadata={
                "dagster/row_count": counts[code]["rows"],
                "pages": int(landed[code][0]),
                "bytes": int(landed[code][1]),
                "requests": 0,  # this step only reads the landed pages
                "records": staged[code].rows,
                "quarantined": staged[code].quarantined,
                "rows_validated_in_python": staged[code].rows_validated_in_python,
                "changed_rows": counts[code]["changed"],
                "removed_rows": counts[code]["removed"],
                "mode": mode_row[0],
                "build": build,
                "changed_students": int(mode_row[1]),
                "duration_s": duration_s,
                "dagster/column_schema": schemas[code],
            },
        )


CAMPUSONLINE_ASSETS = [co_raw_pages, co_current_state]
