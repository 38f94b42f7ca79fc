"""The schedules, evaluated against a test instance; neither may open DuckDB."""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest

from pipelines.definitions import build_definitions
from resources.settings import load_settings
from tests.pipelines.test_sensors import add_run, add_sync_run

VIENNA = ZoneInfo("Europe/Vienna")


@pytest.fixture(autouse=True)
def no_duckdb(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a schedule opened DuckDB")

    monkeypatch.setattr(duckdb, "connect", refuse)


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions(load_settings({"HUBSYNC_WAREHOUSE": "/proc/hubsync/no.duckdb"}))


def tick(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, at: datetime
) -> dg.RunRequest | dg.SkipReason:
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at,
        repository_def=defs.get_repository_def(),
    )
    data = schedule.evaluate_tick(context)
    if data.skip_message is not None:
        return dg.SkipReason(data.skip_message)
    [request] = data.run_requests or []
    return request


def test_nightly_full_sync_adds_a_full_key_for_the_tick_and_requests_it(defs, instance) -> None:
    at = datetime(2026, 11, 24, 2, 0, tzinfo=VIENNA)  # 01:00 UTC in winter

    request = tick(defs, "nightly_full_sync_schedule", instance, at)

    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "full-20261124T010000Z"
    assert request.run_key == "full-20261124T010000Z"
    assert request.tags["hubsync/mode"] == "full"
    assert instance.get_dynamic_partitions("sync_runs") == ["full-20261124T010000Z"]


def test_nightly_full_sync_runs_at_the_configured_cron_in_the_co_time_zone(defs) -> None:
    schedule = defs.resolve_schedule_def("nightly_full_sync_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Europe/Vienna"
    assert schedule.job_name == "sync_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    other = build_definitions(
        load_settings(
            {
                "HUBSYNC_FULL_SYNC_CRON": "30 3 * * 1-5",
                "CO_TIMEZONE": "America/Sao_Paulo",
                "HUBSYNC_AUTOMATION": "off",
            }
        )
    )
    schedule = other.resolve_schedule_def("nightly_full_sync_schedule")
    assert schedule.cron_schedule == "30 3 * * 1-5"
    assert schedule.execution_timezone == "America/Sao_Paulo"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_the_key_follows_summer_time(defs, instance) -> None:
    request = tick(
        defs, "nightly_full_sync_schedule", instance, datetime(2026, 7, 1, 2, 0, tzinfo=VIENNA)
    )
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "full-20260701T000000Z"


def test_nightly_full_sync_skips_while_a_full_sync_is_queued_or_running(defs, instance) -> None:
    add_sync_run(instance, "full", "full-20261123T010000Z", dg.DagsterRunStatus.QUEUED)

    skipped = tick(
        defs, "nightly_full_sync_schedule", instance, datetime(2026, 11, 24, 2, tzinfo=VIENNA)
    )

    assert isinstance(skipped, dg.SkipReason)
    assert "sync_job full-20261123T010000Z is queued" in (skipped.skip_message or "")
    assert instance.get_dynamic_partitions("sync_runs") == []


def test_a_running_incremental_sync_does_not_stop_the_full_sync(defs, instance) -> None:
    # it queues behind it (one sync at a time, dagster.yaml)
    add_sync_run(instance, "incremental", "incr-20261124T004500Z", dg.DagsterRunStatus.STARTED)

    request = tick(
        defs, "nightly_full_sync_schedule", instance, datetime(2026, 11, 24, 2, tzinfo=VIENNA)
    )

    assert isinstance(request, dg.RunRequest)


def test_a_full_sync_queued_from_the_ui_stops_the_nightly_one(defs, instance) -> None:
    # launched from the UI: no mode tag until its sync_run step runs, only its key
    tags = {"hubsync/sync": "true", "dagster/partition": "full-20261123T010000Z"}
    add_run(instance, "sync_job", dg.DagsterRunStatus.QUEUED, tags)

    skipped = tick(
        defs, "nightly_full_sync_schedule", instance, datetime(2026, 11, 24, 2, tzinfo=VIENNA)
    )

    assert isinstance(skipped, dg.SkipReason)
    assert "sync_job full-20261123T010000Z is queued" in (skipped.skip_message or "")


def test_daily_prune_runs_once_a_day(defs, instance) -> None:
    schedule = defs.resolve_schedule_def("daily_prune_schedule")
    assert schedule.job_name == "prune_sync_runs_job"
    assert schedule.execution_timezone == "Europe/Vienna"

    request = tick(
        defs, "daily_prune_schedule", instance, datetime(2026, 11, 24, 4, 30, tzinfo=VIENNA)
    )

    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "prune-20261124"
