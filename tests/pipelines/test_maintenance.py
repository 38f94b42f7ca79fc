"""Pruning old sync keys and recording failed syncs (assets/maintenance.py, its jobs)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from assets.maintenance import (
    RetentionSettings,
    expired_keys,
    key_scoped_tables,
    prune_warehouse,
    sync_retention,
)
from assets.partitions import new_sync_key, parse_sync_key
from pipelines.definitions import defs
from pipelines.jobs import record_sync_failure_job
from resources.warehouse import WarehouseResource
from tests.pipelines.test_sensors import add_run

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def key(mode: str, days_ago: float) -> str:
    return new_sync_key(mode, NOW - timedelta(days=days_ago))  # type: ignore[arg-type]


def add_sync(
    conn: duckdb.DuckDBPyConnection, sync_key: str, status: str = "success", batch: str = ""
) -> None:
    """A sync's rows: sync_runs, a raw page, a staged row, quarantine, and a HUB batch in
    status ``batch`` (none when empty)."""
    parsed = parse_sync_key(sync_key)
    conn.execute(
        "INSERT INTO sync_runs (key, mode, effective_mode, status, started_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [sync_key, parsed.mode, parsed.mode, status, parsed.started_at],
    )
    conn.execute(
        "INSERT INTO raw_studip_pages VALUES (?, 'users', 1, '{}', ?, 1, '[]')",
        [sync_key, parsed.started_at],
    )
    conn.execute("INSERT INTO stg_studip_memberships VALUES (?, 'c1', 'u1', 'autor')", [sync_key])
    conn.execute(
        "INSERT INTO quarantine (source, record_type, reason, sync_key) "
        "VALUES ('co', 'student', 'no STUDID', ?)",
        [sync_key],
    )
    if batch:
        conn.execute(
            "INSERT INTO hub_batches (sync_key, batch_no, phase, object_type, action, objects, "
            "envelope, bytes, status) VALUES (?, 1, 0, 'user', 'insert', 1, '{}', 2, ?)",
            [sync_key, batch],
        )
        conn.execute(
            "INSERT INTO hub_events VALUES (?, 1, 1, 'user', 'insert', 'u1', 'u1', '{}')",
            [sync_key],
        )


def keys_in(conn: duckdb.DuckDBPyConnection, table: str, column: str = "sync_key") -> set[str]:
    return {k for (k,) in conn.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall()}


@pytest.fixture
def conn(warehouse: WarehouseResource) -> Iterator[duckdb.DuckDBPyConnection]:
    with warehouse.connection() as conn:
        yield conn


def test_key_scoped_tables_cover_raw_staging_quarantine_and_hub_tables(conn) -> None:
    tables = set(key_scoped_tables(conn))
    assert {
        "raw_studip_pages",
        "raw_co_students",
        "raw_lms_active_registrations",
        "stg_studip_users",
        "stg_co_students",
        "co_sync_cursor",
        "lms_watermarks",
        "stg_lms_registrations",
        "quarantine",
        "hub_events",
        "hub_batches",
        "hub_log",
    } <= tables
    # current state and views are not per key
    assert not tables & {"studip_users", "co_students", "hub_state", "hub_desired_users"}


def test_expired_keys_keep_recent_keys_and_everything_from_the_latest_full_sync() -> None:
    old_full, old_incr = key("full", 100), key("incremental", 95)
    latest_full, after = key("full", 92), key("incremental", 91)
    recent = key("incremental", 10)
    keys = [old_full, old_incr, latest_full, after, recent, "manual-partition"]

    expired = expired_keys(
        keys,
        now=NOW,
        keep_days=90,
        protected=set(),
        anchor=parse_sync_key(latest_full).started_at,
    )

    assert expired == sorted([old_full, old_incr])
    assert expired_keys(keys, now=NOW, keep_days=90, protected=set(), anchor=None) == []
    assert expired_keys(
        keys,
        now=NOW,
        keep_days=90,
        protected={old_incr},
        anchor=parse_sync_key(latest_full).started_at,
    ) == [old_full]


def test_prune_removes_old_keys_from_every_table_and_keeps_what_state_needs(conn) -> None:
    pruned = [key("full", 200), key("incremental", 199), key("full", 150)]
    failed_full_after_anchor = key("full", 120)  # the anchor is the latest *successful* full
    anchor = key("full", 121)
    unacknowledged = key("incremental", 180)
    for k in pruned:
        add_sync(conn, k, batch="acknowledged")
    add_sync(conn, anchor)
    add_sync(conn, failed_full_after_anchor, status="failed")
    add_sync(conn, unacknowledged, batch="sent")
    recent = key("incremental", 1)
    add_sync(conn, recent, status="running")

    result = prune_warehouse(conn, [key("incremental", 170)], now=NOW, keep_days=90)

    assert result.keys == sorted([*pruned, key("incremental", 170)])
    kept = {anchor, failed_full_after_anchor, unacknowledged, recent}
    assert keys_in(conn, "sync_runs", "key") == kept
    for table in ("raw_studip_pages", "stg_studip_memberships", "quarantine"):
        assert keys_in(conn, table) == kept
    assert keys_in(conn, "hub_batches") == keys_in(conn, "hub_events") == {unacknowledged}
    assert result.rows["raw_studip_pages"] == 3
    assert result.rows["hub_events"] == 3
    assert result.rows["sync_runs"] == 3


def test_prune_without_a_successful_full_sync_removes_nothing(conn) -> None:
    add_sync(conn, key("full", 200), status="failed")
    add_sync(conn, key("incremental", 199))

    result = prune_warehouse(conn, [], now=NOW, keep_days=90)

    assert result.keys == []
    assert len(keys_in(conn, "sync_runs", "key")) == 2


def test_the_retention_asset_deletes_the_partitions_too(warehouse, conn, instance) -> None:
    old, latest = key("incremental", 100), key("full", 95)
    never_run = key("incremental", 98)  # a partition added but never synced
    add_sync(conn, old)
    add_sync(conn, latest)
    conn.close()
    instance.add_dynamic_partitions("sync_runs", [old, never_run, latest])

    result = dg.materialize(
        [sync_retention],
        instance=instance,
        resources={"warehouse": warehouse, "retention": RetentionSettings(keep_days=90)},
    )

    assert result.success
    assert instance.get_dynamic_partitions("sync_runs") == [latest]
    [materialization] = result.asset_materializations_for_node("sync_retention")
    assert materialization.metadata["keys_pruned"] == dg.IntMetadataValue(2)
    assert materialization.metadata["keys_kept"] == dg.IntMetadataValue(1)
    with warehouse.connection() as check:
        assert keys_in(check, "sync_runs", "key") == {latest}


def test_record_sync_failure_marks_a_running_sync_failed_once(warehouse, conn) -> None:
    running, done = key("incremental", 0.1), key("full", 1)
    add_sync(conn, running, status="running")
    add_sync(conn, done, status="success")
    conn.close()

    def record(sync_key: str, error: str) -> None:
        config = {
            "ops": {"record_sync_failure": {"config": {"sync_key": sync_key, "error": error}}}
        }
        result = record_sync_failure_job.execute_in_process(
            run_config=config, resources={"warehouse": warehouse}
        )
        assert result.success

    record(running, "run abc was canceled")
    record(running, "a later, less precise message")
    record(done, "stale failure")

    with warehouse.connection() as check:
        rows = dict(
            check.execute(
                "SELECT key, status || ': ' || coalesce(error, '') FROM sync_runs"
            ).fetchall()
        )
    assert rows == {running: "failed: run abc was canceled", done: "success: "}


def add_backfill(instance: dg.DagsterInstance, keys: list[str]) -> None:
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id="b1",
            asset_graph=defs.resolve_asset_graph(),
            backfill_timestamp=NOW.timestamp(),
            tags={},
            asset_selection=[dg.AssetKey("sync_run")],
            partition_names=keys,
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        ).with_status(BulkActionStatus.REQUESTED)
    )


def test_keys_that_never_ran_go_once_they_are_a_day_old(warehouse, conn, instance) -> None:
    # "Add a partition" in the UI's dialog, then never launched: the key would stay "Missing"
    # for ever, and a later backfill of the missing partitions would run it
    now = datetime.now(UTC)
    full = new_sync_key("full", now - timedelta(days=3))
    never_run = new_sync_key("incremental", now - timedelta(days=2))
    queued = new_sync_key("incremental", now - timedelta(days=2, hours=1))
    today = new_sync_key("incremental", now - timedelta(hours=20))
    add_sync(conn, full)
    conn.close()
    keys = [full, never_run, queued, today, "not-a-sync-key"]
    instance.add_dynamic_partitions("sync_runs", keys)
    add_run(instance, "sync_job", dg.DagsterRunStatus.QUEUED, {"dagster/partition": queued})
    resources = {"warehouse": warehouse, "retention": RetentionSettings(keep_days=90)}

    add_backfill(instance, [never_run])  # its runs are created one by one: wait for it
    assert dg.materialize([sync_retention], instance=instance, resources=resources).success
    assert set(instance.get_dynamic_partitions("sync_runs")) == set(keys)

    backfill = instance.get_backfill("b1")
    assert backfill is not None
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    result = dg.materialize([sync_retention], instance=instance, resources=resources)

    assert result.success
    assert set(instance.get_dynamic_partitions("sync_runs")) == set(keys) - {never_run}
    [materialization] = result.asset_materializations_for_node("sync_retention")
    assert materialization.metadata["unlaunched_keys_removed"] == dg.IntMetadataValue(1)
    assert materialization.metadata["keys_kept"] == dg.IntMetadataValue(4)
