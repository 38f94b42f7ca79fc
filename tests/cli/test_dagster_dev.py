"""`hubsync ui` relays dagster dev's output without the per-tick chatter; runs launched there
log INFO to its terminal, not every framework event at DEBUG."""

import io
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cli.dagster_dev import dagster_dev_command, is_chatter, relay
from pipelines.definitions import build_definitions
from resources.settings import PROJECT_ROOT, load_settings

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


def test_runs_launched_without_run_config_log_info_to_the_console(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # as the daemon and the UI launch them: no run config but the job's own (and not the
    # default warehouse, which is the user's data/)
    defs = build_definitions(load_settings({"HUBSYNC_WAREHOUSE": str(tmp_path / "w.duckdb")}))
    job = defs.resolve_job_def("prune_sync_runs_job")
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance).success
    console = capfd.readouterr().err
    assert "pruned 0 sync keys older than 90 days" in console  # the asset's INFO message
    assert " - DEBUG - " not in console  # STEP_START, STEP_OUTPUT, HOOK_SKIPPED, ...
    assert " - INFO - " in console


def test_verbose_runs_log_debug() -> None:
    script = "from pipelines.jobs import sync_job; print(sync_job.config)"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env={**os.environ, "HUBSYNC_CONSOLE_LOG_LEVEL": "debug"},  # hubsync ui --verbose
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "'log_level': 'DEBUG'" in result.stdout, result.stderr
