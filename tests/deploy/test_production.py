"""The production deployment of deploy/ against a real PostgreSQL server.

The test starts PostgreSQL (tests/deploy/postgres.py), then the three processes of
deploy/Procfile, exactly as written there (code server, daemon, webserver, each its own process
group), on an instance configured by deploy/dagster.yaml and a sandbox in this process:

1. A full sync is launched through the webserver's GraphQL API as the UI does it (add the
   partition, launch the job for it): it queues, the daemon starts it, it succeeds.
2. The incremental sensor starts the next sync. The daemon is SIGKILLed while that run works:
   the run's worker is a child of the code server, not of the daemon, so it finishes anyway.
   Both runs are in PostgreSQL; the HUB holds exactly the world's expected state.
3. The world changes; the daemon is restarted and its sensor starts a sync; mid-run everything
   but PostgreSQL dies at once (SIGKILL of daemon, code server and run worker: a host crash).
   After a restart of the code server and the daemon, run monitoring marks the orphaned run
   failed (its maximum run time, shortened for this run), frees its duckdb pool slot, the
   failure sensor records it and the next sync converges: the HUB holds the new expected state,
   nothing twice.

Most of its time is process start-up: three daemons, two code servers, a webserver and five run
workers, each importing Dagster. Measured on 2 cores shared with five other test runs (load
average 9 to 11): 224 to 276 s to the converged sync. Not measured on a quiet machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import requests
import yaml

from resources.settings import PROJECT_ROOT
from sandbox.expected import expected_hub_state
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.deploy.postgres import PostgresServer, PostgresUnavailable, running_postgres

DEPLOY = PROJECT_ROOT / "deploy"
BIN = Path(sys.executable).parent
LOCATION = "hubsync"
REPOSITORY = "__repository__"
DATABASE = "hubsync_dagster"
TIMEOUT_S = 120
# What the test shortens in deploy/dagster.yaml so that it fits in minutes; all else is as shipped.
MONITORING_FOR_THE_TEST = {"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 1}
# The orphaned run's own limit (tag dagster/max_runtime, which wins over the instance's
# max_runtime_seconds of 4 h): shortening the instance-wide limit instead would fail ordinary
# syncs that a loaded CI machine makes slow.
ORPHAN_MAX_RUNTIME_S = "1"

pytest.importorskip(
    "dagster_postgres", reason="dagster-postgres is missing: pip install -e '.[dev]' brings it"
)


def procfile() -> dict[str, str]:
    lines = (DEPLOY / "Procfile").read_text().splitlines()
    entries = [line.split(":", 1) for line in lines if line and not line.startswith("#")]
    return {name.strip(): command.strip() for name, command in entries}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")


@pytest.fixture
def sandbox() -> Iterator[object]:
    world = World(seed=31, students=40, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 5}}
    ) as running:
        yield running


@pytest.fixture
def environment(postgres: PostgresServer, sandbox, tmp_path: Path) -> dict[str, str]:
    """What deploy/hubsync.env.example holds, for this machine; os.environ gets it too."""
    postgres.create_database(DATABASE)
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_runtime_seconds"] >= 3600  # above any full sync
    assert set(MONITORING_FOR_THE_TEST) <= set(monitoring)  # shortened here, not added
    monitoring.update(MONITORING_FOR_THE_TEST)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {
        **sandbox.env,  # type: ignore[attr-defined]
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": DATABASE,
        "HUBSYNC_CODE_SERVER_HOST": "127.0.0.1",
        "HUBSYNC_CODE_SERVER_PORT": str(_free_port()),
        "HUBSYNC_WEBSERVER_HOST": "127.0.0.1",
        "HUBSYNC_WEBSERVER_PORT": str(_free_port()),
        "HUBSYNC_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "HUBSYNC_INCREMENTAL_INTERVAL": "2",
        "HUB_POLL_INTERVAL": "0.05",
    }
    os.environ.update(env)  # the autouse fixture in tests/conftest.py restores os.environ
    return env


class Processes:
    """The Procfile's processes, each started as `honcho` would (``sh -c``, the environment
    file's variables, the virtualenv's bin/ on PATH), in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self, name: str) -> None:
        command = string.Template(procfile()[name]).substitute(self.env)
        self.starts += 1
        with (self.logs / f"{name}-{self.starts}.log").open("wb") as out:
            self.running[name] = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {command}"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        """SIGKILL, no clean-up: the process group (its children) dies at once."""
        process = self.running.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name in list(self.running):
            process = self.running[name]
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            self.kill(name)

    def assert_alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, f"{name} exited:\n{self.log_tail(name)}"

    def log_tail(self, name: str) -> str:
        logs = sorted(self.logs.glob(f"{name}-*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-3000:] if logs else ""


@pytest.fixture
def processes(environment: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    started = Processes(environment, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def instance(environment: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(environment["DAGSTER_HOME"]) as instance:
        yield instance


class Graphql:
    """The webserver's GraphQL endpoint, which the UI uses."""

    def __init__(self, env: dict[str, str]) -> None:
        host, port = env["HUBSYNC_WEBSERVER_HOST"], env["HUBSYNC_WEBSERVER_PORT"]
        self.url = f"http://{host}:{port}/graphql"

    def __call__(self, query: str, **variables: object) -> dict:
        answer = requests.post(self.url, json={"query": query, "variables": variables}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        try:
            data = self(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename } } } } }"
            )
        except requests.RequestException:
            return False
        entries = data["workspaceOrError"].get("locationEntries", [])
        return any(
            e["name"] == LOCATION
            and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
            for e in entries
        )


REPOSITORY_SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}

ADD_PARTITION = """
mutation AddDynamicPartition($repositorySelector: RepositorySelector!,
                             $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector,
                      partitionsDefName: $partitionsDefName, partitionKey: $partitionKey) {
    __typename
    ... on PythonError { message }
  }
}"""

LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


def launch_full_sync_from_the_ui(graphql: Graphql, key: str) -> str:
    """*Add partition*, then *Launch run* in sync_job's Launchpad: the UI's two mutations."""
    added = graphql(
        ADD_PARTITION,
        repositorySelector=REPOSITORY_SELECTOR,
        partitionsDefName="sync_runs",
        partitionKey=key,
    )["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    launched = graphql(
        LAUNCH,
        executionParams={
            "selector": {**REPOSITORY_SELECTOR, "jobName": "sync_job"},
            "runConfigData": {},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert launched["run"]["status"] == "QUEUED"  # the QueuedRunCoordinator: the daemon starts it
    return launched["run"]["runId"]


def wait_for(
    what: str, found: Callable[[], object], processes: Processes, timeout: float = TIMEOUT_S
) -> object:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        processes.assert_alive()
        value = found()
        if value:
            print(f"{time.monotonic() - start:6.1f} s  {what}")
            return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {n}\n{processes.log_tail(n)}" for n in processes.running)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def run_status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def ended(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus | None:
    status = run_status(instance, run_id)
    return status if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) else None


def sensor_runs(instance: dg.DagsterInstance, after: set[str]) -> list[dg.DagsterRun]:
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name="sync_job",
            tags={"dagster/sensor_name": "incremental_sync_sensor"},
        )
    )
    return [run for run in runs if run.run_id not in after]


def working_run(instance: dg.DagsterInstance, after: set[str]) -> dg.DagsterRun | None:
    """A new sensor-started sync past its first step (its sync_runs row says ``running``)."""
    for run in sensor_runs(instance, after):
        if run.status == dg.DagsterRunStatus.STARTED and worker_pid(instance, run.run_id):
            done = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            if any(event.step_key == "sync_run" for event in done):
                return run
    return None


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = re.search(r"Started process for run \(pid: (\d+)\)", event.message or "")
        if found:
            return int(found.group(1))
    return None


def sync_runs_rows(warehouse: str) -> dict[str, tuple[str, str | None]]:
    with duckdb.connect(warehouse, read_only=True) as connection:
        rows = connection.execute("SELECT key, status, error FROM sync_runs").fetchall()
    return {key: (status, error) for key, status, error in rows}


def test_procfile_and_systemd_units_start_the_same_commands() -> None:
    """The systemd units are the Procfile's lines with absolute paths (/opt/hubsync)."""
    for name, command in procfile().items():
        unit = (DEPLOY / "systemd" / f"hubsync-{name}.service").read_text()
        assert "EnvironmentFile=/etc/hubsync/hubsync.env" in unit
        exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE)
        assert exec_start, name
        words = shlex.split(exec_start.group(1).replace("${", "$").replace("}", ""))
        expected = shlex.split(command)
        assert Path(words[0]).name == expected[0], name
        normalized = [
            w.removeprefix("/opt/hubsync/").replace("/opt/hubsync", ".") for w in words[1:]
        ]
        assert normalized == expected[1:], name


def test_the_deployment_on_postgres_survives_a_killed_daemon_and_a_host_crash(
    environment: dict[str, str],
    processes: Processes,
    instance: dg.DagsterInstance,
    sandbox,
) -> None:
    started = time.monotonic()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.tag_concurrency_limits == [
        {"key": "hubsync/sync", "limit": 1}
    ]
    for name in ("code-server", "daemon", "webserver"):
        processes.start(name)
    graphql = Graphql(environment)
    wait_for("the webserver to load the code server's location", graphql.location_loaded, processes)

    # 1. a full sync from the UI: queued, started by the daemon, run by the code server
    full_key = "full-20261123T020000Z"
    full_id = launch_full_sync_from_the_ui(graphql, full_key)
    assert wait_for("the full sync", lambda: ended(instance, full_id), processes) == (
        dg.DagsterRunStatus.SUCCESS
    )

    # 2. the sensor starts an incremental sync; the daemon dies under it, the run lives on
    first = wait_for("a sensor sync at work", lambda: working_run(instance, set()), processes)
    assert isinstance(first, dg.DagsterRun)
    processes.kill("daemon")
    assert wait_for("the sensor sync", lambda: ended(instance, first.run_id), processes) == (
        dg.DagsterRunStatus.SUCCESS
    )
    assert first.tags["dagster/partition"].startswith("incr-")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state  # type: ignore[attr-defined]
    seen = {first.run_id}

    # 3. the world changes; the restarted daemon's sensor starts a sync; the host crashes mid-run
    sandbox.world.step(seed=5)  # type: ignore[attr-defined]
    sandbox.world.clock.advance(900)  # type: ignore[attr-defined] # past CO's view refresh
    processes.start("daemon")
    doomed = wait_for("a sensor sync at work", lambda: working_run(instance, seen), processes)
    assert isinstance(doomed, dg.DagsterRun)
    pid = worker_pid(instance, doomed.run_id)
    assert pid is not None
    processes.kill("daemon")
    processes.kill("code-server")
    try:
        os.kill(pid, signal.SIGKILL)  # the run worker, should it have left the group
    except ProcessLookupError:
        pass
    time.sleep(1)
    assert run_status(instance, doomed.run_id) == dg.DagsterRunStatus.STARTED  # nobody noticed
    seen.add(doomed.run_id)
    instance.add_run_tags(doomed.run_id, {"dagster/max_runtime": ORPHAN_MAX_RUNTIME_S})

    processes.start("code-server")
    processes.start("daemon")
    assert wait_for(
        "run monitoring to fail the orphaned run", lambda: ended(instance, doomed.run_id), processes
    ) == (dg.DagsterRunStatus.FAILURE)
    # run monitoring's words (RUN_CANCELING), then the forced RUN_FAILURE
    events = [event.message or "" for event in instance.all_logs(doomed.run_id)]
    assert any("exceeding maximum runtime" in message for message in events), events[-5:]
    last = wait_for(
        "the next sensor sync to succeed",
        lambda: next(
            (r for r in sensor_runs(instance, seen) if r.status == dg.DagsterRunStatus.SUCCESS),
            None,
        ),
        processes,
    )
    assert isinstance(last, dg.DagsterRun)
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state  # type: ignore[attr-defined]
    assert sandbox.hub.duplicate_inserts(links=False) == 0  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started

    # the failure sensor recorded the orphaned run in the warehouse's sync_runs
    recorded = wait_for(
        "record_sync_failure_job for the orphaned run",
        lambda: [
            r
            for r in instance.get_runs(
                filters=dg.RunsFilter(
                    job_name="record_sync_failure_job", tags={"hubsync/failed-run": doomed.run_id}
                )
            )
            if r.status == dg.DagsterRunStatus.SUCCESS
        ],
        processes,
    )
    assert recorded
    processes.stop_all()  # no run may hold the warehouse while it is read
    rows = sync_runs_rows(environment["HUBSYNC_WAREHOUSE"])
    assert rows[full_key][0] == "success"
    assert rows[doomed.tags["dagster/partition"]][0] == "failed"
    assert rows[last.tags["dagster/partition"]][0] == "success"
    print(f"deployment test: {elapsed:.0f} s to the converged sync")
