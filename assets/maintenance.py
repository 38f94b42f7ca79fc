"""Housekeeping outside the syncs: pruning old sync keys and recording syncs that died.

``sync_retention`` removes the sync keys older than HUBSYNC_KEEP_DAYS, with every warehouse row
scoped to them (raw pages, staging, quarantine, cursors, HUB events, batches and log) and their
``sync_runs`` partition. It never removes what the current state still builds on: the latest
successful full sync and every key after it (CAMPUSonline and the LMS overlay those on the latest
full landing), a sync still running, and a sync with HUB batches not yet acknowledged.

It also removes the partitions of keys that never ran: added (in the UI's "Add a partition"
dialog, typically) but never launched, they would stay "Missing" for ever and a later backfill of
the missing partitions would run them. A key counts as never run when no run of the instance
and no warehouse row names it; it goes once its time is more than a day ago, and not while a
backfill is in progress (its runs are created one by one).

``record_sync_failure`` marks a sync failed when its run failed or was canceled without the step
hook getting the chance (a killed run worker, a canceled run, a failure before any step).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus  # not public

from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import fail_sync_run
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource, transaction

# How long a key that no run used is kept: time enough to launch a key added in the UI.
UNLAUNCHED_KEY_GRACE = timedelta(days=1)
_PARTITION_TAG = "dagster/partition"


class RetentionSettings(dg.ConfigurableResource):
    """How long sync keys are kept (HUBSYNC_KEEP_DAYS)."""

    keep_days: int = 90


# Every base table with a sync_key column holds rows of one sync; found from the catalog, so a
# table added by a later migration is pruned without touching this module.
KEY_SCOPED_TABLES_SQL = """
SELECT c.table_name
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'main' AND c.column_name = 'sync_key' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name
"""

# Keys the current state depends on: the latest successful full sync and all later keys, a
# sync still running, and keys with HUB batches that are unsent or not yet acknowledged.
PROTECTED_KEYS_SQL = """
WITH anchor AS (
    SELECT max(started_at) AS started_at FROM sync_runs WHERE mode = 'full' AND status = 'success'
)
SELECT r.key FROM sync_runs r, anchor a WHERE r.started_at >= a.started_at OR r.status = 'running'
UNION
SELECT sync_key FROM hub_batches WHERE status IN ('pending', 'posting', 'sent')
"""


def key_scoped_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [name for (name,) in conn.execute(KEY_SCOPED_TABLES_SQL).fetchall()]


def warehouse_keys(conn: duckdb.DuckDBPyConnection) -> set[str]:
    """Every sync key the warehouse holds rows for."""
    selects = ["SELECT key FROM sync_runs"]
    selects += [f"SELECT DISTINCT sync_key FROM {t}" for t in key_scoped_tables(conn)]
    return {key for (key,) in conn.execute(" UNION ".join(selects)).fetchall()}


def latest_full_sync_start(conn: duckdb.DuckDBPyConnection) -> datetime | None:
    row = conn.execute(
        "SELECT max(started_at) FROM sync_runs WHERE mode = 'full' AND status = 'success'"
    ).fetchall()[0]
    return row[0]


def protected_keys(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {key for (key,) in conn.execute(PROTECTED_KEYS_SQL).fetchall()}


def expired_keys(
    keys: Iterable[str],
    *,
    now: datetime,
    keep_days: int,
    protected: set[str],
    anchor: datetime | None,
) -> list[str]:
    """The keys to prune: sync keys started more than ``keep_days`` before ``now`` and before
    the latest successful full sync (``anchor``; without one nothing is pruned), unprotected.

    Keys that are not sync keys are left alone: an operator added them, an operator removes them.
    """
    if anchor is None:
        return []
    cutoff = now - timedelta(days=keep_days)
    expired = []
    for key in keys:
        try:
            started_at = parse_sync_key(key).started_at
        except ValueError:
            continue
        if started_at < cutoff and started_at < anchor and key not in protected:
            expired.append(key)
    return sorted(expired)


@dataclass
class PruneResult:
    keys: list[str]
    rows: dict[str, int]  # rows deleted per table


def prune_warehouse(
    conn: duckdb.DuckDBPyConnection, instance_keys: Iterable[str], *, now: datetime, keep_days: int
) -> PruneResult:
    """Delete the rows of the expired keys (of the warehouse and of ``instance_keys``) from every
    key-scoped table and ``sync_runs``, in one transaction; return what went."""
    with transaction(conn):
        keys = expired_keys(
            warehouse_keys(conn) | set(instance_keys),
            now=now,
            keep_days=keep_days,
            protected=protected_keys(conn),
            anchor=latest_full_sync_start(conn),
        )
        rows: dict[str, int] = {}
        if keys:
            import pandas as pd  # imported where used: it adds 0.5 s to every command's start

            conn.register("expired_keys", pd.DataFrame({"key": keys}))
            try:
                for table in key_scoped_tables(conn):
                    rows[table] = _delete(conn, table, "sync_key")
                rows["sync_runs"] = _delete(conn, "sync_runs", "key")
            finally:
                conn.unregister("expired_keys")
    return PruneResult(keys, {t: n for t, n in rows.items() if n})


def unlaunched_keys(
    instance: dg.DagsterInstance, keys: Iterable[str], *, now: datetime, warehouse: set[str]
) -> list[str]:
    """The sync keys among ``keys`` that no run and no warehouse row (``warehouse``) names,
    whose time is more than UNLAUNCHED_KEY_GRACE before ``now``; none while a backfill runs."""
    in_progress = BulkActionsFilter(
        statuses=[BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING]
    )
    if instance.get_backfills(filters=in_progress, limit=1):
        return []
    unlaunched = []
    for key in keys:
        try:
            started_at = parse_sync_key(key).started_at
        except ValueError:
            continue  # not a sync key: an operator added it, an operator removes it
        if key in warehouse or started_at >= now - UNLAUNCHED_KEY_GRACE:
            continue
        if not instance.get_runs(filters=dg.RunsFilter(tags={_PARTITION_TAG: key}), limit=1):
            unlaunched.append(key)
    return sorted(unlaunched)


def _delete(conn: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    deleted = conn.execute(
        f"DELETE FROM {table} WHERE {column} IN (SELECT key FROM expired_keys)"
    ).fetchall()
    return int(deleted[0][0]) if deleted else 0


# Its own group: "sync" is what `hubsync sync --source …` selects, and pruning is no part of a sync.
@dg.asset(
    group_name="maintenance",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
)
def sync_retention(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    retention: RetentionSettings,
) -> dg.MaterializeResult:
    """Prunes sync history: keys older than HUBSYNC_KEEP_DAYS lose their warehouse rows (raw
    pages, staging, quarantine, cursors, HUB events/batches/log, sync_runs) and their sync_runs
    partition. Keeps the latest successful full sync and every key after it, running syncs and
    keys with HUB batches still awaiting acknowledgement. Keys that never ran (added, never
    launched) lose their partition once they are a day old."""
    started = datetime.now(UTC)
    instance_keys = context.instance.get_dynamic_partitions(sync_runs_partitions.name)
    with warehouse.connection() as conn:
        result = prune_warehouse(conn, instance_keys, now=started, keep_days=retention.keep_days)
        in_warehouse = warehouse_keys(conn)
    for key in result.keys:
        if key in instance_keys:
            context.instance.delete_dynamic_partition(sync_runs_partitions.name, key)
    remaining = [key for key in instance_keys if key not in result.keys]
    unlaunched = unlaunched_keys(context.instance, remaining, now=started, warehouse=in_warehouse)
    for key in unlaunched:
        context.instance.delete_dynamic_partition(sync_runs_partitions.name, key)
    context.log.info(
        "pruned %d sync keys older than %d days; removed %d keys that never ran",
        len(result.keys),
        retention.keep_days,
        len(unlaunched),
    )
    return dg.MaterializeResult(
        metadata={
            "keys_pruned": len(result.keys),
            "keys_kept": len(remaining) - len(unlaunched),
            "unlaunched_keys_removed": len(unlaunched),
            "removed_unlaunched_keys": dg.MetadataValue.json(unlaunched[:200]),
            "rows_deleted": sum(result.rows.values()),
            "rows_deleted_by_table": dg.MetadataValue.json(result.rows),
            "pruned_keys": dg.MetadataValue.json(result.keys[:200]),
            "keep_days": retention.keep_days,
            "duration_s": round((datetime.now(UTC) - started).total_seconds(), 3),
        }
    )


class SyncFailure(dg.Config):
    sync_key: str
    error: str


@dg.op(pool=WAREHOUSE_POOL)
def record_sync_failure(config: SyncFailure, warehouse: WarehouseResource) -> None:
    """Marks the sync's sync_runs row failed with the error, if it is still 'running' (a step
    failure was already recorded, with its own error, by the sync jobs' failure hook)."""
    with warehouse.connection() as conn:
        fail_sync_run(conn, config.sync_key, datetime.now(UTC), config.error)
