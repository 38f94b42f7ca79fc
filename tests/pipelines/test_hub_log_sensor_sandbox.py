"""hub_log_sensor against the sandbox HUB: a sync stops waiting while its batches still process,
the sensor polls getLog over HTTP (never DuckDB) until they finish, the acknowledgement job it
requests applies them, and the next sync completes the HUB without a duplicate insert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from pipelines.definitions import build_definitions
from resources.settings import load_settings
from sandbox.expected import expected_hub_state
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World

PROCESSING_S = 1.5  # how long the sandbox HUB takes per batch
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=31, students=20, today=date(2026, 11, 23))
    options = {"hub": {"processing_delay_ms": int(PROCESSING_S * 1000)}}
    with running_sandbox(port_base=0, world=world, options=options) as running:
        yield running


def definitions(sandbox: Sandbox, warehouse: Path, ack_timeout_s: float) -> dg.Definitions:
    env = {
        **sandbox.env,
        "HUBSYNC_WAREHOUSE": str(warehouse),
        "HUB_ACK_TIMEOUT": str(ack_timeout_s),
        "HUB_POLL_INTERVAL": "0.05",
    }
    return build_definitions(load_settings(env))


@contextmanager
def duckdb_refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sensor opened DuckDB")

    with monkeypatch.context() as patch:
        patch.setattr(duckdb, "connect", refuse)
        yield


def evaluate_log_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> SensorExecutionData:
    with (
        dg.build_sensor_context(
            instance=instance, definitions=defs, resources=dict(defs.resources or {})
        ) as context,
        duckdb_refused(monkeypatch),
    ):
        return defs.resolve_sensor_def("hub_log_sensor").evaluate_tick(context)


def full_sync(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> None:
    instance.add_dynamic_partitions("sync_runs", [key])
    result = defs.resolve_job_def("sync_job").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET_CONSOLE
    )
    assert result.success


def pending_ids(instance: dg.DagsterInstance, asset: str) -> list[str]:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None
    return list(event.asset_materialization.metadata["pending_message_ids"].value)  # type: ignore[arg-type]


def acknowledged_objects(warehouse: Path) -> int:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM hub_state").fetchall()[0][0]


def test_the_log_sensor_acknowledges_batches_a_sync_stopped_waiting_for(
    sandbox: Sandbox, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "w.duckdb"
    impatient = definitions(sandbox, warehouse, ack_timeout_s=0.2)

    sandbox.hub.configure(processing_delay_ms=3_600_000)  # held until released below
    full_sync(impatient, instance, "full-20261123T020000Z")
    pending = pending_ids(instance, "hub_acknowledgement")
    assert pending, "the sync waited long enough for every batch; nothing left for the sensor"
    assert acknowledged_objects(warehouse) == 0

    waiting = evaluate_log_sensor(impatient, instance, monkeypatch)
    assert waiting.run_requests == []
    assert waiting.skip_message == f"{len(pending)} HUB batches are still processing"

    sandbox.hub.configure(processing_delay_ms=int(PROCESSING_S * 1000))  # the HUB goes on

    deadline = time.monotonic() + 10 * PROCESSING_S
    while (data := evaluate_log_sensor(impatient, instance, monkeypatch)).run_requests == []:
        assert time.monotonic() < deadline, data.skip_message
        time.sleep(0.2)
    [request] = data.run_requests
    assert request.run_key and request.run_key.startswith("hub-ack-")

    acknowledgement = impatient.resolve_job_def("hub_acknowledgement_job").execute_in_process(
        instance=instance, run_config=QUIET_CONSOLE, tags=request.tags
    )
    assert acknowledgement.success
    assert pending_ids(instance, "hub_acknowledgement") == []
    assert acknowledged_objects(warehouse) > 0  # the finished batch reached hub_state
    done = evaluate_log_sensor(impatient, instance, monkeypatch)
    assert done.skip_message == "no HUB batches are pending"

    # the rest of the delivery follows with the next sync, and nothing is sent twice
    sandbox.hub.configure(processing_delay_ms=5)
    patient = definitions(sandbox, warehouse, ack_timeout_s=60)
    full_sync(patient, instance, "full-20261123T030000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state
    assert sandbox.hub.duplicate_inserts() == 0
