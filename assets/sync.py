"""Bookkeeping of sync runs: the ``sync_runs`` row every sync opens and closes.

``sync_run`` opens a sync and ``sync_summary`` closes it. Every asset of a sync depends on
``sync_run`` (directly or through its upstream assets) and is a dependency of ``sync_summary``,
so the sync jobs select exactly "sync_summary and everything upstream of it".
"""

import json
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import duckdb

from pipelines.partitions import SyncMode, parse_sync_key, sync_runs_partitions
from resources.warehouse import WarehouseResource, transaction

# Run tags of the sync jobs: dagster.yaml limits runs tagged SYNC_TAG to one at a time, and
# SYNC_MODE_TAG says which mode the job is for, so a key of the other mode is refused.
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
    conflicts, blocked = conn.execute(
        "SELECT (SELECT count(*) FROM person_conflicts), (SELECT count(*) FROM person_blocks)"
    ).fetchone() or (0, 0)
    return {"identity_conflicts": int(conflicts), "blocked_persons": int(blocked)}


def finish_sync_run(
    conn: duckdb.DuckDBPyConnection, key: str, finished_at: datetime
) -> dict[str, Any]:
    """Mark the key's row successful with its summary (which this returns)."""
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
        }
        conn.execute(
            """
            UPDATE sync_runs
            SET status = 'success', finished_at = ?, summary = ?::JSON, error = NULL
            WHERE key = ?
            """,
            [finished_at, json.dumps(summary), key],
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
    pool="duckdb",
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
    job_mode = context.run.tags.get(SYNC_MODE_TAG)
    if job_mode is not None and job_mode != key.mode:
        raise dg.Failure(
            f"{context.partition_key} is a {key.mode} sync key, but {context.job_name} runs "
            f"{job_mode} syncs; use a {job_mode} key or the {key.mode} sync job"
        )
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


@dg.asset(
    partitions_def=sync_runs_partitions,
    pool="duckdb",
    group_name="sync",
    kinds={"duckdb"},
    deps=[
        sync_run,
        # HUB delivery, and with it the graph and every source upstream of it
        "hub_acknowledgement",
        # Stud.IP (assets/studip.py; its raw pages are upstream of these)
        "studip_users",
        "studip_semesters",
        "studip_courses",
        "studip_memberships",
        "studip_institutes",
        "studip_user_institutes",
        # CAMPUSonline (assets/campusonline.py; its raw pages are upstream of these)
        "co_students",
        "co_studies",
        "co_applications",
        # LMS (assets/lms.py; its raw pages are upstream of these)
        "lms_registrations",
        "lms_courses",
        "lms_learners",
    ],
)
def sync_summary(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Closes the sync: marks its sync_runs row successful, with the finish time and a JSON
    summary (duration, pages and records landed per raw table, records quarantined).

    Runs last: every asset of a sync is upstream of it.
    """
    with warehouse.connection() as conn:
        summary = finish_sync_run(conn, context.partition_key, datetime.now(UTC))
    return dg.MaterializeResult(
        metadata={
            "mode": summary["effective_mode"],
            "duration_s": float(summary["duration_s"]),
            "pages": summary["pages"],
            "records": summary["records"],
            "quarantined": summary["quarantined"],
            "identity_conflicts": summary.get("identity_conflicts", 0),
            "blocked_persons": summary.get("blocked_persons", 0),
            "raw_tables": dg.MetadataValue.json(summary["raw"]),
        }
    )


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
