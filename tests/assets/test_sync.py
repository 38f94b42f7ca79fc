import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import pytest

from assets.partitions import sync_runs_partitions
from assets.sync import build_sync_summary, mark_sync_failed, sync_run
from pipelines.definitions import build_definitions
from resources.migrations import raw_page_table_ddl
from resources.settings import load_settings
from resources.warehouse import WarehouseResource
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance

sync_summary = build_sync_summary()  # without sources: these tests make their own

FULL = "full-20261123T020000Z"
INCR = "incr-20261123T101500Z"


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    # shared by the tests of this module: each has its own warehouse, which holds what is checked
    with ephemeral_instance() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, [FULL, INCR])
        yield instance


def materialize(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, key: str, assets: list[Any]
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        partition_key=key,
        instance=instance,
        resources={"warehouse": warehouse},
        raise_on_error=False,
    )


def row(warehouse: WarehouseResource, key: str) -> dict[str, Any]:
    with warehouse.connection() as conn:
        cursor = conn.execute("SELECT * FROM sync_runs WHERE key = ?", [key])
        columns = [c[0] for c in cursor.description]
        rows = cursor.fetchall()
    assert len(rows) == 1
    return dict(zip(columns, rows[0], strict=True))


def test_a_sync_opens_and_closes_its_row(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    before = datetime.now(UTC)
    result = materialize(instance, warehouse, FULL, [sync_run, sync_summary])
    assert result.success

    written = row(warehouse, FULL)
    assert (written["mode"], written["effective_mode"], written["status"]) == (
        "full",
        "full",
        "success",
    )
    assert before <= written["started_at"] <= written["finished_at"] <= datetime.now(UTC)
    assert written["error"] is None
    summary = json.loads(written["summary"])
    assert summary["pages"] == summary["records"] == summary["quarantined"] == 0
    assert summary["duration_s"] == pytest.approx(
        (written["finished_at"] - written["started_at"]).total_seconds(), abs=0.001
    )

    metadata = result.asset_materializations_for_node("sync_summary")[0].metadata
    assert isinstance(metadata["duration_s"], dg.FloatMetadataValue)
    assert metadata["duration_s"].value == summary["duration_s"]
    assert metadata["pages"] == dg.IntMetadataValue(0)
    assert metadata["records"] == dg.IntMetadataValue(0)


def test_an_opened_sync_is_running_until_summarised(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    assert materialize(instance, warehouse, INCR, [sync_run]).success
    written = row(warehouse, INCR)
    assert (written["mode"], written["status"], written["finished_at"]) == (
        "incremental",
        "running",
        None,
    )


def test_rerunning_a_key_resets_its_row(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    assert materialize(instance, warehouse, FULL, [sync_run, sync_summary]).success
    first = row(warehouse, FULL)
    with warehouse.connection() as conn:
        conn.execute("UPDATE sync_runs SET watermarks = '{\"co\": 1}', error = 'old'")

    assert materialize(instance, warehouse, FULL, [sync_run]).success
    second = row(warehouse, FULL)
    assert second["started_at"] > first["started_at"]
    assert (second["status"], second["finished_at"], second["summary"]) == ("running", None, None)
    assert (second["watermarks"], second["error"]) == (None, None)


def test_the_summary_counts_this_syncs_pages_and_quarantine(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    with warehouse.connection() as conn:
        conn.execute(raw_page_table_ddl("raw_a_pages"))
        conn.execute(raw_page_table_ddl("raw_b_pages"))
        conn.execute(
            "INSERT INTO quarantine (source, record_type, record_key, reason, sync_key) VALUES "
            "('co', 'student', '1', 'no STUDID', ?), ('co', 'student', '2', 'x', ?)",
            [FULL, INCR],
        )
    for key, table, counts in [(FULL, "raw_a_pages", [3, 2]), (INCR, "raw_a_pages", [7])]:
        with warehouse.page_writer(table, key) as writer:
            for page_nr, count in enumerate(counts):
                writer.add(
                    request_key="r",
                    page_nr=page_nr,
                    request_params={},
                    body="[]",
                    record_count=count,
                )

    result = materialize(instance, warehouse, FULL, [sync_run, sync_summary])
    assert result.success

    summary = json.loads(row(warehouse, FULL)["summary"])
    # (the sources' raw tables are listed too, with nothing landed for this key)
    assert summary["raw"]["raw_a_pages"] == {"pages": 2, "records": 5}
    assert summary["raw"]["raw_b_pages"] == {"pages": 0, "records": 0}
    assert (summary["pages"], summary["records"], summary["quarantined"]) == (2, 5, 1)
    metadata = result.asset_materializations_for_node("sync_summary")[0].metadata
    assert (metadata["pages"].value, metadata["records"].value) == (2, 5)


def test_summary_without_an_opened_sync_fails_clearly(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    result = materialize(instance, warehouse, FULL, [sync_summary, sync_run.to_source_asset()])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None
    assert f"sync_runs has no row for {FULL}" in str(failure.to_string())


def run_job(
    instance: dg.DagsterInstance,
    warehouse: WarehouseResource,
    job: str,
    key: str,
    env: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    defs = build_definitions(load_settings({**(env or {}), "HUBSYNC_WAREHOUSE": warehouse.path}))
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False
    )


def test_one_sync_job_runs_either_mode_as_its_key_says(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    # The UI's partition picker offers every key to the job, so the key alone decides the mode
    # (two jobs, one per mode, refused half the keys and showed every asset "Failed" for it).
    # The job includes the sources, so it runs against a (small) sandbox.
    with running_sandbox(port_base=0, world=World(3, 60, today=date(2026, 11, 23))) as sb:
        full = run_job(instance, warehouse, "sync_job", FULL, sb.env)
        incremental = run_job(instance, warehouse, "sync_job", INCR, sb.env)
    assert full.success and incremental.success
    assert row(warehouse, FULL)["status"] == row(warehouse, INCR)["status"] == "success"
    assert (row(warehouse, FULL)["mode"], row(warehouse, INCR)["mode"]) == ("full", "incremental")
    # launched without a mode tag (as from the UI), the run is tagged by sync_run
    for result, mode in ((full, "full"), (incremental, "incremental")):
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.tags["hubsync/mode"] == mode


@dg.asset(partitions_def=sync_runs_partitions, deps=[sync_run])
def flaky_source() -> None:
    raise ConnectionError("CAMPUSonline answered 503 three times")


def test_a_failed_step_marks_the_sync_failed(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:

    job = dg.define_asset_job("test_job", hooks={mark_sync_failed})
    defs = dg.Definitions(
        assets=[sync_run, flaky_source], jobs=[job], resources={"warehouse": warehouse}
    )
    result = defs.resolve_job_def("test_job").execute_in_process(
        instance=instance, partition_key=FULL, raise_on_error=False
    )
    assert not result.success

    written = row(warehouse, FULL)
    assert written["status"] == "failed"
    assert written["finished_at"] is not None
    assert written["error"] == (
        "flaky_source: ConnectionError: CAMPUSonline answered 503 three times"
    )
