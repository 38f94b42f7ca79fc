"""The Dagster daemon runs hubsync by itself: after a full sync, incremental_sync_sensor launches
an incremental sync against the sandbox, and it succeeds, even though a ``hubsync sync`` was
killed before (its run left STARTED, holding the duckdb pool slot: the sensor must see that its
process is gone, and not skip "a sync is running" for ever).

One of the slowest tests (a real daemon, code server and run worker): about a minute, most of it
Dagster starting processes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from resources.settings import PROJECT_ROOT, load_settings
from sandbox.expected import expected_hub_state
from sandbox.http import Request
from sandbox.server import running_sandbox
from sandbox.world import World

TIMEOUT_S = 180
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DAEMON = Path(sys.executable).with_name("dagster-daemon")


@pytest.fixture
def sandbox() -> Iterator[object]:
    world = World(seed=31, students=40, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 5}}
    ) as running:
        yield running


@pytest.fixture
def environment(sandbox, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **sandbox.env,  # type: ignore[attr-defined]
        "DAGSTER_HOME": str(home),
        "HUBSYNC_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "HUBSYNC_INCREMENTAL_INTERVAL": "2",
        "HUB_POLL_INTERVAL": "0.05",
    }


@pytest.fixture
def instance(environment: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(environment["DAGSTER_HOME"]) as instance:
        yield instance


@contextmanager
def running_daemon(environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``dagster-daemon run`` on the project's workspace; always stopped, children included."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(DAEMON), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env={**os.environ, **environment},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown ends its children too
        )
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # run workers and code servers left behind by a daemon that died early
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sensor_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(
        instance.get_runs(
            filters=dg.RunsFilter(
                job_name="sync_job",
                tags={"dagster/sensor_name": "incremental_sync_sensor"},
            )
        )
    )


def _wait_for_sensor_sync(
    instance: dg.DagsterInstance, daemon: subprocess.Popen[bytes], log: Path
) -> dg.DagsterRun:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
        for run in _sensor_runs(instance):
            if run.status == dg.DagsterRunStatus.SUCCESS:
                return run
            assert run.status not in (
                dg.DagsterRunStatus.FAILURE,
                dg.DagsterRunStatus.CANCELED,
            ), f"sensor-launched run {run.run_id} ended {run.status}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    pytest.fail(f"no sensor-launched incremental sync succeeded in {TIMEOUT_S} s")


def _killed_hubsync_sync(sandbox: object) -> None:
    """``hubsync sync`` in a forked process, SIGKILLed at its first CAMPUSonline data request."""
    from cli.main import main

    def run() -> None:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            os._exit(main(["sync"]))

    child = multiprocessing.get_context("fork").Process(target=run)

    def kill(request: Request, number: int) -> None:
        # at the first data request: the reachability probe before the run comes first
        if child.pid is not None and request.path.startswith("/pl/rest/"):
            os.kill(child.pid, signal.SIGKILL)

    co = sandbox.servers["co"]  # type: ignore[attr-defined]
    co.add_request_hook(kill)
    try:
        child.start()
        child.join(TIMEOUT_S)
    finally:
        co.clear_request_hooks()
    assert child.exitcode == -signal.SIGKILL, f"hubsync sync was not killed: {child.exitcode}"


def test_the_daemon_launches_incremental_syncs_that_succeed(
    sandbox, environment, instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # the sensor waits for a first full sync: run it here, on the daemon's instance
    defs = build_definitions(load_settings())
    key = "full-20261123T020000Z"
    instance.add_dynamic_partitions("sync_runs", [key])
    full = defs.resolve_job_def("sync_job").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET_CONSOLE
    )
    assert full.success
    sandbox.world.step(seed=5)  # type: ignore[attr-defined]
    sandbox.world.clock.advance(900)  # type: ignore[attr-defined] # past CO's view refresh
    _killed_hubsync_sync(sandbox)
    [killed] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

    log = tmp_path / "daemon.log"
    started = time.monotonic()
    with running_daemon(environment, log) as daemon:
        run = _wait_for_sensor_sync(instance, daemon, log)
    elapsed = time.monotonic() - started

    killed = instance.get_run_by_id(killed.run_id)
    assert killed is not None and killed.status == dg.DagsterRunStatus.FAILURE
    key = run.tags["dagster/partition"]
    assert key.startswith("incr-")
    assert run.tags.get("dagster/run_key") == key
    assert key in instance.get_dynamic_partitions("sync_runs")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state  # type: ignore[attr-defined]
    print(f"sensor-launched incremental sync succeeded {elapsed:.1f} s after the daemon started")
