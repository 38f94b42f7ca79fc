"""`hubsync ui` relays dagster dev's output without the per-tick chatter; runs launched there
log INFO to its terminal, not every framework event at DEBUG."""

import io
import logging

import dagster as dg

from cli.dagster_dev import dagster_dev_command, is_chatter, relay
from pipelines.definitions import build_definitions
from resources.settings import load_settings

# As dagster dev prints them (colour codes included), from a real `hubsync ui` session.
CHATTER = [
    "\x1b[32m2026-12-03 22:53:36 +0000\x1b[0m - dagster.daemon.SensorDaemon - \x1b[34mINFO\x1b[0m"
    " - Checking for new runs for sensor: sync_failure_sensor",
    "2026-12-03 22:53:43 +0000 - dagster.daemon.SensorDaemon - INFO - Sensor hub_log_sensor "
    "skipped: no HUB batches are pending",
    "2026-12-03 22:53:51 +0000 - dagster.daemon.QueuedRunCoordinatorDaemon - INFO - Priority "
    "sorting and checking tag concurrency limits for queued runs.",
]
KEPT = [
    "2026-12-03 22:53:00 +0000 - dagster - INFO - Launching Dagster services...",
    "2026-12-03 22:53:44 +0000 - dagster-webserver - INFO - Serving dagster-webserver on "
    "http://127.0.0.1:3020 in process 9289",
    "2026-12-03 22:53:45 +0000 - dagster.daemon.SensorDaemon - INFO - Creating new run for "
    "incremental_sync_sensor",
    "2026-12-03 22:53:50 +0000 - dagster.daemon.SensorDaemon - INFO - Launching run for "
    "incremental_sync_sensor",
    "2026-12-03 22:53:59 +0000 - dagster.daemon.QueuedRunCoordinatorDaemon - INFO - Launched 1 "
    "runs.",
    "2026-12-03 22:54:10 +0000 - dagster.daemon.SensorDaemon - ERROR - Sensor hub_log_sensor "
    "skipped: it raised",  # not INFO: kept
]


def test_the_per_tick_chatter_is_dropped_and_the_rest_kept() -> None:
    assert [line for line in CHATTER + KEPT if not is_chatter(line)] == KEPT


def test_relay_drops_chatter_unless_verbose() -> None:
    text = "".join(f"{line}\n" for line in CHATTER + KEPT)
    quiet, verbose = io.StringIO(), io.StringIO()
    relay(io.StringIO(text), quiet, verbose=False).join(timeout=10)
    relay(io.StringIO(text), verbose, verbose=True).join(timeout=10)
    assert quiet.getvalue().splitlines() == KEPT
    assert verbose.getvalue() == text


def test_verbose_asks_dagster_dev_for_debug() -> None:
    assert dagster_dev_command("w.yaml", "127.0.0.1", 3000, verbose=True)[-2:] == [
        "--log-level",
        "debug",
    ]


def test_runs_without_logger_config_log_info_to_the_console(monkeypatch) -> None:
    # what a daemon- or UI-launched run gets: the jobs' console logger and its default config
    job = build_definitions(load_settings({})).resolve_job_def("sync_job")
    console = job.loggers["console"]
    assert console.config_schema.config_type.fields["log_level"].default_value == "INFO"
    monkeypatch.setenv("HUBSYNC_CONSOLE_LOG_LEVEL", "debug")  # hubsync ui --verbose
    job = build_definitions(load_settings({})).resolve_job_def("sync_job")
    field = job.loggers["console"].config_schema.config_type.fields["log_level"]
    assert field.default_value == "DEBUG"
    assert logging.getLevelName(field.default_value) == logging.DEBUG
    assert isinstance(console, dg.LoggerDefinition)
