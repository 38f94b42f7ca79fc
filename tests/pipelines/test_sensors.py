"""The sensors, evaluated against an ephemeral instance; none of them may open DuckDB."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest
import responses
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.events import EngineEventData
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from pipelines.definitions import build_definitions
from pipelines.sensors import (
    HOST_TAG,
    PID_TAG,
    failure_text,
    plan_incremental_sync,
    worker_alive,
)
from resources.settings import load_settings

HUB_URL = "http://127.0.0.1:9/sandbox"  # answered by responses, never contacted
LOG_URL = re.compile(re.escape(HUB_URL) + r"/.*getLog/(?P<id>[\w-]+)")


@pytest.fixture(autouse=True)
def no_duckdb(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sensor opened DuckDB")

    monkeypatch.setattr(duckdb, "connect", refuse)


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    settings = load_settings(
        {
            # a warehouse that cannot even be created: any access would fail loudly
            "HUBSYNC_WAREHOUSE": "/proc/hubsync/no-warehouse.duckdb",
            "HUBSYNC_INCREMENTAL_INTERVAL": "120",
            "HUB_API_URL": HUB_URL,
        }
    )
    return build_definitions(settings)


def add_run(
    instance: dg.DagsterInstance,
    job_name: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    origin = None
    if status == dg.DagsterRunStatus.QUEUED:  # queued runs must name their code location
        location = GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="hs")
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job_name)
    return instance.add_run(
        dg.DagsterRun(job_name=job_name, status=status, tags=tags or {}, remote_job_origin=origin)
    )


def add_sync_run(
    instance: dg.DagsterInstance,
    mode: str,
    key: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    tags = {"hubsync/sync": "true", "hubsync/mode": mode, "dagster/partition": key, **(tags or {})}
    return add_run(instance, "sync_job", status, tags)


def evaluate(defs: dg.Definitions, name: str, instance: dg.DagsterInstance) -> SensorExecutionData:
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        definitions=defs,
        resources=dict(defs.resources or {}),
    ) as context:
        return sensor.evaluate_tick(context)


# -- incremental_sync_sensor ----------------------------------------------------------------------


def test_incremental_sensor_waits_for_a_first_full_sync(defs, instance) -> None:
    data = evaluate(defs, "incremental_sync_sensor", instance)
    assert data.run_requests == []
    assert "no full sync has succeeded yet" in (data.skip_message or "")
    assert instance.get_dynamic_partitions("sync_runs") == []


def test_incremental_sensor_adds_a_key_and_requests_a_run_for_it(defs, instance) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert data.skip_message is None
    [request] = data.run_requests
    assert re.fullmatch(r"incr-\d{8}T\d{6}Z", request.partition_key)
    assert request.run_key == request.partition_key
    [add] = data.dynamic_partitions_requests
    assert add.partitions_def_name == "sync_runs"
    assert list(add.partition_keys) == [request.partition_key]
    sensor = defs.resolve_sensor_def("incremental_sync_sensor")
    assert sensor.job_name == "sync_job"
    assert request.tags["hubsync/mode"] == "incremental"


def test_incremental_key_comes_from_the_tick_time(instance) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    now = datetime(2026, 11, 23, 10, 15, 3, 250_000, tzinfo=UTC)

    result = plan_incremental_sync(instance, now)

    assert isinstance(result, dg.SensorResult)
    assert [r.run_key for r in result.run_requests or []] == ["incr-20261123T101503Z"]
    instance.add_dynamic_partitions("sync_runs", ["incr-20261123T101503Z"])
    skipped = plan_incremental_sync(instance, now)
    assert isinstance(skipped, dg.SkipReason)
    assert "exists already" in (skipped.skip_message or "")


@pytest.mark.parametrize(
    ("mode", "status", "shown"),
    [
        ("full", dg.DagsterRunStatus.QUEUED, "sync_job full-20261124T010000Z is queued"),
        ("incremental", dg.DagsterRunStatus.STARTED, "sync_job incr-"),
        ("full", dg.DagsterRunStatus.STARTING, "is starting"),
    ],
)
def test_incremental_sensor_skips_while_a_sync_is_queued_or_running(
    defs, instance, mode: str, status: dg.DagsterRunStatus, shown: str
) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    key = "full-20261124T010000Z" if mode == "full" else "incr-20261124T011500Z"
    add_sync_run(instance, mode, key, status)

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert data.run_requests == []
    assert data.dynamic_partitions_requests == []
    assert shown in (data.skip_message or "")
    assert "waits for it" in (data.skip_message or "")


def test_finished_or_failed_syncs_do_not_block_the_sensor(defs, instance) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    add_sync_run(instance, "incremental", "incr-20261123T021500Z", dg.DagsterRunStatus.FAILURE)
    add_sync_run(instance, "incremental", "incr-20261123T023000Z", dg.DagsterRunStatus.CANCELED)
    add_run(instance, "prune_sync_runs_job", dg.DagsterRunStatus.STARTED)  # not a sync

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert len(data.run_requests) == 1


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def launched_run(instance: dg.DagsterInstance, key: str, pid: int | None) -> dg.DagsterRun:
    """A STARTED sync run as the daemon launches it: through a code location, its worker's pid
    in an engine event (as the code server and the in-process executor report it)."""
    location = GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="hs")
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "x")
    run = instance.add_run(
        dg.DagsterRun(
            job_name="sync_job",
            status=dg.DagsterRunStatus.STARTED,
            tags={"hubsync/sync": "true", "hubsync/mode": "incremental", "dagster/partition": key},
            remote_job_origin=origin,
        )
    )
    if pid is not None:
        instance.report_engine_event(
            f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
        )
    return run


def test_a_sync_whose_hubsync_process_died_no_longer_blocks_the_sensor(defs, instance) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    here = {HOST_TAG: socket.gethostname()}
    killed = add_sync_run(
        instance,
        "incremental",
        "incr-20261123T021500Z",
        dg.DagsterRunStatus.STARTED,
        {PID_TAG: str(dead_pid()), **here},
    )

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert len(data.run_requests) == 1, data.skip_message
    run = instance.get_run_by_id(killed.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "died before it ended" in (failure.dagster_event.message or "")  # type: ignore[union-attr]


def test_a_daemon_launched_sync_whose_worker_died_no_longer_blocks_the_sensor(
    defs, instance
) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    killed = launched_run(instance, "incr-20261123T021500Z", dead_pid())

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert len(data.run_requests) == 1, data.skip_message
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "tags",
    [
        {PID_TAG: str(os.getppid()), HOST_TAG: socket.gethostname()},  # alive
        {PID_TAG: "dead", HOST_TAG: "another-host"},  # not for this host to judge
        {},  # no pid known (e.g. a run executed by some other process)
    ],
    ids=["alive", "other host", "unknown"],
)
def test_a_sync_whose_process_may_live_still_blocks_the_sensor(
    defs, instance, tags: dict[str, str]
) -> None:
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    if tags.get(PID_TAG) == "dead":
        tags = {**tags, PID_TAG: str(dead_pid())}
    running = add_sync_run(
        instance, "incremental", "incr-20261123T021500Z", dg.DagsterRunStatus.STARTED, tags
    )

    data = evaluate(defs, "incremental_sync_sensor", instance)

    assert data.run_requests == []
    assert "waits for it" in (data.skip_message or "")
    assert instance.get_run_by_id(running.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]


def test_a_launched_run_whose_worker_started_after_the_run_was_created_is_alive(
    defs, instance
) -> None:
    """A daemon-launched run is created (queued) before its worker process starts: the worker
    being younger than the run is no sign of a reused pid."""
    add_sync_run(instance, "full", "full-20261123T020000Z", dg.DagsterRunStatus.SUCCESS)
    running = launched_run(instance, "incr-20261123T021500Z", None)
    time.sleep(2.5)  # past the start-time slack
    worker = subprocess.Popen(["sleep", "30"])
    try:
        instance.report_engine_event(
            f"Started process for run (pid: {worker.pid}).",
            running,
            EngineEventData.in_process(worker.pid),
        )
        data = evaluate(defs, "incremental_sync_sensor", instance)
    finally:
        worker.kill()
        worker.wait()
    assert data.run_requests == [], "a live worker's run was taken for dead"
    assert instance.get_run_by_id(running.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]


def test_the_hub_log_sensor_is_not_blocked_by_a_dead_sync_either(defs, instance) -> None:
    launched_run(instance, "incr-20261123T021500Z", dead_pid())
    data = evaluate(defs, "hub_log_sensor", instance)
    assert data.skip_message == "no HUB batches are pending"


def test_a_zombie_or_a_younger_process_with_the_pid_is_no_live_worker() -> None:
    process = subprocess.Popen(["sleep", "30"])
    try:
        assert worker_alive(process.pid, time.time())
        assert not worker_alive(process.pid, time.time() - 60), "the pid was reused"
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while worker_alive(process.pid):  # killed, not yet reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    assert not worker_alive(process.pid)


def test_incremental_interval_and_default_status_come_from_settings(defs) -> None:
    sensor = defs.resolve_sensor_def("incremental_sync_sensor")
    assert sensor.minimum_interval_seconds == 120
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    off = build_definitions(load_settings({"HUBSYNC_AUTOMATION": "off"}))
    assert off.resolve_sensor_def("incremental_sync_sensor").minimum_interval_seconds == 900
    for name in ("incremental_sync_sensor", "hub_log_sensor"):
        assert off.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.STOPPED
    for name in ("sync_failure_sensor", "sync_canceled_sensor"):
        assert off.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


# -- hub_log_sensor -------------------------------------------------------------------------------


def report_pending(instance: dg.DagsterInstance, asset: str, pending: list[str]) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=asset,
            partition="full-20261123T020000Z" if asset == "hub_delivery" else None,
            metadata={"pending_message_ids": dg.MetadataValue.json(pending)},
        )
    )


def serve_log(statuses: dict[str, int]) -> None:
    def answer(request):  # type: ignore[no-untyped-def]
        message_id = LOG_URL.match(request.url).group("id")  # type: ignore[union-attr]
        body = {"qtdeRegistros": 0, "status": statuses[message_id], "logs": []}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    responses.add_callback(responses.GET, LOG_URL, callback=answer)


def polled_ids() -> list[str]:
    return [LOG_URL.match(call.request.url).group("id") for call in responses.calls]  # type: ignore[union-attr]


@responses.activate
def test_hub_log_sensor_skips_when_nothing_is_pending(defs, instance) -> None:
    data = evaluate(defs, "hub_log_sensor", instance)
    assert data.skip_message == "no HUB batches are pending"

    report_pending(instance, "hub_acknowledgement", [])
    data = evaluate(defs, "hub_log_sensor", instance)
    assert data.skip_message == "no HUB batches are pending"
    assert len(responses.calls) == 0


@responses.activate
def test_hub_log_sensor_requests_an_acknowledgement_when_a_batch_finished(defs, instance) -> None:
    report_pending(instance, "hub_delivery", ["m-1", "m-2"])
    serve_log({"m-1": 1, "m-2": 4})

    data = evaluate(defs, "hub_log_sensor", instance)

    [request] = data.run_requests
    assert request.run_key and request.run_key.startswith("hub-ack-")
    assert request.run_key.endswith("-1")  # one finished batch
    assert sorted(polled_ids()) == ["m-1", "m-2"]
    assert defs.resolve_sensor_def("hub_log_sensor").job_name == "hub_acknowledgement_job"


@responses.activate
def test_hub_log_sensor_waits_while_batches_process(defs, instance) -> None:
    report_pending(instance, "hub_delivery", ["m-1", "m-2"])
    serve_log({"m-1": 1, "m-2": 2})

    data = evaluate(defs, "hub_log_sensor", instance)

    assert data.run_requests == []
    assert data.skip_message == "2 HUB batches are still processing"


@responses.activate
def test_hub_log_sensor_follows_the_newest_materialization(defs, instance) -> None:
    report_pending(instance, "hub_delivery", ["m-1", "m-2"])
    report_pending(instance, "hub_acknowledgement", ["m-2"])  # m-1 was acknowledged since
    serve_log({"m-1": 4, "m-2": 1})

    data = evaluate(defs, "hub_log_sensor", instance)

    assert data.skip_message == "1 HUB batches are still processing"
    assert polled_ids() == ["m-2"]


@responses.activate
@pytest.mark.parametrize(
    ("job", "tags"),
    [
        ("sync_job", {"hubsync/sync": "true", "dagster/partition": "incr-x"}),
        ("hub_acknowledgement_job", {}),
    ],
)
def test_hub_log_sensor_does_not_run_beside_a_sync_or_another_acknowledgement(
    defs, instance, job: str, tags: dict[str, str]
) -> None:
    report_pending(instance, "hub_delivery", ["m-1"])
    serve_log({"m-1": 4})
    add_run(instance, job, dg.DagsterRunStatus.STARTED, tags)

    data = evaluate(defs, "hub_log_sensor", instance)

    assert data.run_requests == []
    assert job in (data.skip_message or "")
    assert len(responses.calls) == 0  # not even polled


# -- failed and canceled syncs --------------------------------------------------------------------


@dg.op
def land_pages() -> None:
    raise RuntimeError("CO answered 503 three times")


@dg.job
def failing_sync() -> None:
    land_pages()


def test_a_failed_sync_run_requests_recording_its_error(defs, instance) -> None:
    result = failing_sync.execute_in_process(
        instance=instance, raise_on_error=False, tags={"dagster/partition": "incr-20261123T101500Z"}
    )
    [record] = instance.get_records_for_run(
        result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    context = dg.build_run_status_sensor_context(
        sensor_name="sync_failure_sensor",
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()

    assert failure_text(context) == "land_pages: RuntimeError: CO answered 503 three times"
    request = defs.resolve_sensor_def("sync_failure_sensor")(context)

    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"record-failure-{result.run_id}"
    config = request.run_config["ops"]["record_sync_failure"]["config"]
    assert config == {
        "sync_key": "incr-20261123T101500Z",
        "error": "land_pages: RuntimeError: CO answered 503 three times",
    }


def test_a_canceled_sync_run_is_recorded_as_failed(defs, instance) -> None:
    run = add_sync_run(
        instance, "incremental", "incr-20261123T101500Z", dg.DagsterRunStatus.CANCELED
    )
    event = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_CANCELED.value, job_name=run.job_name
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="sync_canceled_sensor",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
    )

    request = defs.resolve_sensor_def("sync_canceled_sensor")(context)

    assert isinstance(request, dg.RunRequest)
    config = request.run_config["ops"]["record_sync_failure"]["config"]
    assert config == {
        "sync_key": "incr-20261123T101500Z",
        "error": f"run {run.run_id} was canceled",
    }


def test_the_instance_monitors_runs_and_frees_the_slots_of_dead_ones(tmp_path) -> None:
    from resources.settings import PROJECT_ROOT

    (tmp_path / "dagster.yaml").write_bytes((PROJECT_ROOT / "dagster.yaml").read_bytes())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # loads: no resume attempts
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_max_runtime_seconds >= 6 * 3600
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
