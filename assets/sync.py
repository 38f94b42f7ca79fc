"""Bookkeeping of sync runs: the ``sync_runs`` row every sync opens and closes.

``sync_run`` opens a sync and ``sync_summary`` closes it. Every asset of a sync depends on
``sync_run`` (directly or through its upstream assets) and is a dependency of ``sync_summary``,
so the sync jobs select exactly "sync_summary and everything upstream of it".
"""

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import duckdb

from assets.graph import conflict_counts
from assets.partitions import SyncMode, parse_sync_key, sync_runs_partitions
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource, transaction

# Run tags of the sync job: dagster.yaml limits runs tagged SYNC_TAG to one at a time, and
# SYNC_MODE_TAG says which mode the run's key is (sync_run sets it on runs launched without it).
SYNC_TAG = "hubsync/sync"
SYNC_MODE_TAG = "hubsync/mode"
_PARTITION_TAG = "dagster/partition"  # set by Dagster on every partitioned run
_MAX_ERROR_CHARS = 2000


def open_sync_run(
    conn: duckdb.DuckDBPyConnection, key: str, mode: SyncMode, started_at: datetime
) -> None:
    """(Re)write the key's row as a running sync; a re-run starts from a clean row."""
    conn.execute(
        """
        INSERT OR REPLACE INTO sync_runs
            (key, mode, effective_mode, status, started_at, finished_at, watermarks, summary, error)
        VALUES (?, ?, ?, 'running', ?, NULL, NULL, NULL, NULL)
        """,
        [key, mode, mode, started_at],
    )


def summarize_sync(conn: duckdb.DuckDBPyConnection, key: str) -> dict[str, Any]:
    """Pages and records the sync landed in each ``raw_*`` table, and records it quarantined."""
    tables = [
        name
        for (name,) in conn.execute(
            """
            SELECT table_name FROM duckdb_tables()
            WHERE schema_name = 'main' AND starts_with(table_name, 'raw_')
            ORDER BY table_name
            """
        ).fetchall()
    ]
    raw: dict[str, dict[str, int]] = {}
    for table in tables:
        pages, records = conn.execute(
            f"SELECT count(*), coalesce(sum(record_count), 0) FROM {table} WHERE sync_key = ?",
            [key],
        ).fetchone() or (0, 0)
        raw[table] = {"pages": int(pages), "records": int(records)}
    (quarantined,) = conn.execute(
        "SELECT count(*) FROM quarantine WHERE sync_key = ?", [key]
    ).fetchone() or (0,)
    return {
        "pages": sum(t["pages"] for t in raw.values()),
        "records": sum(t["records"] for t in raw.values()),
        "quarantined": int(quarantined),
        **_identity_conflicts(conn),
        "raw": raw,
    }


def summarize_hub(conn: duckdb.DuckDBPyConnection, key: str) -> dict[str, Any]:
    """What the HUB refused or never answered in this sync: objects refused (400, per type
    with the HUB's answer), item errors by type and message, messages given up after
    HUB_MESSAGE_MAX_AGE or unknown to getLog (settled by this sync). The objects of all of
    these are sent again by the next sync."""
    refused = conn.execute(
        """
        SELECT l.object_type, l.message, list(e.key ORDER BY e.key) FROM hub_log l
        JOIN hub_events e ON e.sync_key = l.sync_key AND e.seq = l.seq
        WHERE l.sync_key = ? AND l.outcome = 'refused' GROUP BY ALL ORDER BY 1, 2
        """,
        [key],
    ).fetchall()
    failed = conn.execute(
        "SELECT object_type, message, count(*) FROM hub_log WHERE sync_key = ? "
        "AND outcome = 'failed' GROUP BY ALL ORDER BY 1, 3 DESC, 2 LIMIT 50",
        [key],
    ).fetchall()
    settled = conn.execute(
        """
        SELECT starts_with(l.message, 'given up') AS given_up, b.object_type,
               count(DISTINCT (b.sync_key, b.batch_no)), count(*)
        FROM hub_batches b JOIN hub_log l USING (sync_key, batch_no)
        WHERE b.given_up_in = ? AND l.outcome = 'unknown' GROUP BY ALL ORDER BY 1, 2
        """,
        [key],
    ).fetchall()
    items_failed: dict[str, dict[str, int]] = {}
    for object_type, message, n in failed:
        items_failed.setdefault(object_type, {})[message] = n
    return {
        "objects_refused": sum(len(keys) for _, _, keys in refused),
        "refused": [
            {"object": t, "answer": answer, "keys": keys[:20], "count": len(keys)}
            for t, answer, keys in refused
        ],
        "items_failed": items_failed,
        "messages_given_up": sum(m for given_up, _, m, _ in settled if given_up),
        "messages_lost": sum(m for given_up, _, m, _ in settled if not given_up),
        "objects_sent_again": {t: n for _, t, _, n in settled},
    }


def hub_failure(hub: dict[str, Any]) -> str | None:
    """Why the sync fails although everything deliverable was delivered: objects the HUB
    refused, or messages given up after HUB_MESSAGE_MAX_AGE (that run fails once)."""
    parts = []
    if hub["objects_refused"]:
        groups = "; ".join(
            f"{g['object']} {', '.join(g['keys'][:5])}{' …' if g['count'] > 5 else ''} "
            f"({g['count']}): {g['answer']}"
            for g in hub["refused"]
        )
        parts.append(
            f"HUB refused {hub['objects_refused']} object(s), not delivered (sent again next "
            f"sync): {groups}"
        )
    if hub["messages_given_up"]:
        parts.append(
            f"HUB still processed {hub['messages_given_up']} message(s) past "
            "HUB_MESSAGE_MAX_AGE: given up as unknown outcome, their objects sent again"
        )
    return " | ".join(parts) or None


def _identity_conflicts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Identity conflicts of the graph build and the persons they block from delivery."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
            "AND table_name IN ('person_conflicts', 'person_blocks')"
        ).fetchall()
    }
    if len(tables) < 2:
        return {}
    conflicts, blocked = conflict_counts(conn)
    return {"identity_conflicts": conflicts, "blocked_persons": blocked}


def finish_sync_run(
    conn: duckdb.DuckDBPyConnection, key: str, finished_at: datetime
) -> dict[str, Any]:
    """Close the key's row with its summary (which this returns): ``success``, or ``failed``
    with the error when the HUB refused objects or a message was given up (``hub_error``)."""
    with transaction(conn):
        row = conn.execute(
            "SELECT started_at, effective_mode FROM sync_runs WHERE key = ?", [key]
        ).fetchone()
        if row is None:
            raise dg.Failure(
                f"sync_runs has no row for {key}; materialize sync_run for this partition first"
            )
        started_at, effective_mode = row
        summary = {
            "effective_mode": effective_mode,
            "duration_s": round((finished_at - started_at).total_seconds(), 3),
            **summarize_sync(conn, key),
            "hub": summarize_hub(conn, key),
        }
        error = hub_failure(summary["hub"])
        summary["hub_error"] = error
        conn.execute(
            """
            UPDATE sync_runs
            SET status = ?, finished_at = ?, summary = ?::JSON, error = ?
            WHERE key = ?
            """,
            [
                "failed" if error else "success",
                finished_at,
                json.dumps(summary),
                error[:_MAX_ERROR_CHARS] if error else None,
                key,
            ],
        )
    return summary


def fail_sync_run(
    conn: duckdb.DuckDBPyConnection, key: str, finished_at: datetime, error: str
) -> None:
    """Mark the key's row failed, unless it is no longer running."""
    conn.execute(
        """
        UPDATE sync_runs SET status = 'failed', finished_at = ?, error = ?
        WHERE key = ? AND status = 'running'
        """,
        [finished_at, error[:_MAX_ERROR_CHARS], key],
    )


def has_successful_full_sync(conn: duckdb.DuckDBPyConnection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sync_runs WHERE mode = 'full' AND status = 'success'"
    ).fetchone()
    return bool(row and row[0])


@dg.asset(
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
    group_name="sync",
    kinds={"duckdb"},
)
def sync_run(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Opens the sync: writes its sync_runs row (status running, mode from the partition key).

    Re-running a key resets its row. Every other asset of a sync runs after this one.
    """
    key = parse_sync_key(context.partition_key)
    if context.run.tags.get(SYNC_MODE_TAG) != key.mode:  # launched from the UI: tag it here
        context.instance.add_run_tags(context.run.run_id, {SYNC_MODE_TAG: key.mode})
    started_at = datetime.now(UTC)
    with warehouse.connection() as conn:
        open_sync_run(conn, context.partition_key, key.mode, started_at)
    return dg.MaterializeResult(
        metadata={
            "mode": key.mode,
            "full": int(key.mode == "full"),  # numeric, so the UI plots full vs incremental
            "started_at": dg.MetadataValue.timestamp(started_at),
            "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 3),
        }
    )


def build_sync_summary(sources: Iterable[dg.AssetsDefinition] = ()) -> dg.AssetsDefinition:
    """The ``sync_summary`` asset: downstream of ``sync_run``, of HUB delivery (and with it the
    graph) and of the last assets of ``sources`` (every source system's, pipelines/definitions.py),
    so that it closes the sync after all of them."""
    sources = list(sources)
    keys = {key for assets in sources for key in assets.keys}
    upstream = {dep for assets in sources for deps in assets.asset_deps.values() for dep in deps}

    @dg.asset(
        partitions_def=sync_runs_partitions,
        pool=WAREHOUSE_POOL,
        group_name="sync",
        kinds={"duckdb"},
        deps=[sync_run, dg.AssetKey("hub_acknowledgement"), *sorted(keys - upstream)],
    )
    def sync_summary(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Closes the sync: marks its sync_runs row successful, with the finish time and a JSON
        summary (duration, pages and records landed per raw table, records quarantined, what the
        HUB refused or did not answer). Fails, once everything deliverable was delivered, when the
        HUB refused objects or a message was given up after HUB_MESSAGE_MAX_AGE.

        Runs last: every asset of a sync is upstream of it.
        """
        with warehouse.connection() as conn:
            summary = finish_sync_run(conn, context.partition_key, datetime.now(UTC))
        hub = summary["hub"]
        metadata = {
            "mode": summary["effective_mode"],
            "duration_s": float(summary["duration_s"]),
            "pages": summary["pages"],
            "records": summary["records"],
            "quarantined": summary["quarantined"],
            "identity_conflicts": summary.get("identity_conflicts", 0),
            "blocked_persons": summary.get("blocked_persons", 0),
            "raw_tables": dg.MetadataValue.json(summary["raw"]),
            "objects_refused": hub["objects_refused"],
            "items_failed_by_type": dg.MetadataValue.json(hub["items_failed"]),
            "messages_given_up": hub["messages_given_up"],
            "hub": dg.MetadataValue.json(hub),
        }
        if summary["hub_error"]:
            # Everything deliverable was delivered; the run fails so that nobody misses it.
            raise dg.Failure(summary["hub_error"], metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    return sync_summary


@dg.failure_hook(required_resource_keys={"warehouse"})
def mark_sync_failed(context: dg.HookContext) -> None:
    """Marks the sync's sync_runs row failed, with the error, when a step of a sync job fails."""
    run = context.instance.get_run_by_id(context.run_id)
    key = run.tags.get(_PARTITION_TAG) if run is not None else None
    if key is None:
        return
    exc = context.op_exception
    error = f"{context.step_key}: " + (f"{type(exc).__name__}: {exc}" if exc else "step failed")
    warehouse: WarehouseResource = context.resources.warehouse
    with warehouse.connection() as conn:
        fail_sync_run(conn, key, datetime.now(UTC), error)
