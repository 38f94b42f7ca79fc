import errno
import io
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import pipelines.definitions
from cli import home
from cli.local_sandbox import sandbox_environment
from cli.main import _wait_for_dagster_dev, main
from resources.settings import PROJECT_ROOT, Settings
from resources.warehouse import WarehouseResource
from sandbox.server import Sandbox
from sandbox.server import running_sandbox as real_running_sandbox
from sandbox.world import World
from tests.faults.support import without_records


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def small_sandbox() -> Any:
    """A real sandbox over a small world on free ports (the syncs need all four systems)."""
    return real_running_sandbox(port_base=0, world=World(5, 60, today=date(2026, 11, 23)))


@pytest.fixture
def live_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A small sandbox that the settings point at, as if the user ran ``hubsync sandbox``."""
    with small_sandbox() as sandbox:
        for name, value in sandbox.env.items():
            monkeypatch.setenv(name, value)
        yield sandbox


@pytest.fixture
def fake_sandbox(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """A stand-in for sandbox.server whose default ports are taken; records what happens."""
    calls: list[tuple[Any, ...]] = []

    @contextmanager
    def running_sandbox(*, port_base: int = 8701, **options: Any) -> Iterator[Any]:
        if port_base != 0:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        with small_sandbox() as sandbox:
            calls.append(("start", port_base, sandbox.urls))
            yield sandbox
        calls.append(("stop",))

    def sandbox_main(argv: list[str] | None) -> int:
        calls.append(("main", argv))
        return 0

    server = types.ModuleType("sandbox.server")
    server.running_sandbox = running_sandbox  # type: ignore[attr-defined]
    server.main = sandbox_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sandbox.server", server)
    return calls


def test_first_sync_is_full_then_incremental(
    capsys: pytest.CaptureFixture[str], live_sandbox: Sandbox
) -> None:
    with dg.DagsterInstance.get() as instance:
        earlier_runs = len(instance.get_runs())

    code, out, _ = run(capsys, "sync")
    assert code == 0
    assert "no successful full sync yet" in out
    assert "sync_run: started" in out
    assert "sync_summary: done in" in out
    assert "(full) succeeded" in out

    code, out, _ = run(capsys, "sync")
    assert code == 0
    assert "(incremental) succeeded" in out

    code, out, _ = run(capsys, "sync", "--full")
    assert code == 0
    assert "(full) succeeded" in out

    with dg.DagsterInstance.get() as instance:  # the CLI's instance is the UI's instance
        runs = instance.get_runs(limit=3)
        assert len(instance.get_runs()) == earlier_runs + 3
    assert [(r.job_name, r.tags["hubsync/mode"]) for r in reversed(runs)] == [
        ("sync_job", "full"),
        ("sync_job", "incremental"),
        ("sync_job", "full"),
    ]
    assert all(r.tags["dagster/partition"].startswith(("full-", "incr-")) for r in runs)


def test_a_failed_run_exits_non_zero_with_the_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    live_sandbox: Sandbox,
) -> None:
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("not a database\n" * 100)
    monkeypatch.setenv("HUBSYNC_WAREHOUSE", str(not_duckdb))

    code, out, _ = run(capsys, "sync", "--full")
    assert code == 1
    assert "sync_run: FAILED" in out
    # the steps after it: once in the summary, not a "Not executing" line each
    assert "Not executing" not in out
    assert "  not run, after the failure: " in out
    assert len(out.splitlines()) < 20
    assert f"error: sync_run: WarehouseError: cannot open the warehouse {not_duckdb}" in out

    code, _, err = run(capsys, "sync")  # deciding full vs incremental reads the warehouse
    assert code == 1
    assert f"hubsync: cannot open the warehouse {not_duckdb}" in err


def test_a_check_that_did_not_pass_is_named_with_its_reason(
    capsys: pytest.CaptureFixture[str], live_sandbox: Sandbox
) -> None:
    """The checks run inside their asset's step: the line and the summary name the check and
    say why (here: how to allow the deletes), not just that hub_payload failed."""
    assert run(capsys, "sync", "--full")[0] == 0
    live_sandbox.servers["co"].add_response_filter(without_records("dmsstudents"))
    try:
        code, out, _ = run(capsys, "sync", "--full")
    finally:
        live_sandbox.servers["co"].clear_request_hooks()
    assert code == 1
    assert "hub_payload: FAILED" in out
    line = "hub_deletes_within_limit (ERROR): deletes and archivals above"
    assert f"    check {line}" in out  # the progress line
    summary = out[out.index("Sync full-") :]
    assert f"  checks not passed:\n    {line}" in summary
    assert "hubsync/allow-deletes=true" in summary
    assert "  error: hub_payload: a blocking check failed: hub_deletes_within_limit\n" in summary


def test_export_writes_a_table(capsys: pytest.CaptureFixture[str], live_sandbox: Sandbox) -> None:
    assert run(capsys, "sync")[0] == 0

    code, out, _ = run(capsys, "export", "sync_runs")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["mode"], r["status"]) for r in rows] == [("full", "success")]
    assert rows[0]["summary"]["pages"] > 0  # JSON columns stay JSON

    code, out, _ = run(capsys, "export", "sync_runs", "--format", "csv")
    assert code == 0
    header, line = out.splitlines()
    assert header.startswith("key,mode,effective_mode,status,started_at")
    assert line.startswith(rows[0]["key"] + ",full,full,success,")

    # the summary's unsendable_persons, one line each with the reason
    code, out, _ = run(capsys, "export", "unsendable_persons")
    assert code == 0
    unsendable = [json.loads(line) for line in out.splitlines()]
    warehouse = WarehouseResource(path=os.environ["HUBSYNC_WAREHOUSE"])
    with warehouse.connection() as conn:
        expected = conn.execute(
            "SELECT person_key, unsendable_reason FROM persons WHERE unsendable_reason NOTNULL"
        ).fetchall()
    assert expected  # the small world has some
    assert sorted((p["person_key"], p["unsendable_reason"]) for p in unsendable) == sorted(expected)


def test_export_of_an_unknown_table(capsys: pytest.CaptureFixture[str]) -> None:
    with WarehouseResource(path=os.environ["HUBSYNC_WAREHOUSE"]).connection():
        pass  # an empty warehouse
    code, out, err = run(capsys, "export", "no_such_table")
    assert code == 1
    assert out == ""
    assert "has no table 'no_such_table'; available: " in err
    tables, special = err.split("available: ", 1)[1].strip().split("; ")
    available = tables.split(", ")
    assert {"quarantine", "schema_migrations", "sync_runs"} <= set(available)
    assert available == sorted(available)
    assert special == "and students, unsendable_persons"


@pytest.mark.parametrize("table", ["sync_runs", "students"])
def test_export_without_a_warehouse_says_so_and_creates_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    missing = tmp_path / "elsewhere" / "warehouse.duckdb"
    monkeypatch.setenv("HUBSYNC_WAREHOUSE", str(missing))
    code, out, err = run(capsys, "export", table)
    assert code == 1
    assert out == ""
    assert err == (
        f"hubsync: there is no warehouse at {missing} (HUBSYNC_WAREHOUSE); "
        "`hubsync demo` or `hubsync sync` creates it\n"
    )
    assert not missing.parent.exists()


HOLD_THE_LOCK = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


def test_export_waits_for_a_syncs_lock_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = os.environ["HUBSYNC_WAREHOUSE"]
    with WarehouseResource(path=path).connection():
        pass
    # another process (a sync step) holds DuckDB's one lock for a while
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, path, "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        code, out, err = run(capsys, "export", "sync_runs")
    finally:
        holder.wait(timeout=30)
    assert code == 0
    assert out == ""  # no syncs yet, but the table was read once the lock was free
    assert err == (
        f"hubsync: the warehouse {path} is in use by another process (a sync writes it); "
        "waiting up to 120 s for it\n"
    )


def test_configuration_errors_exit_2_without_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CO_TIMEZONE", "Atlantis/Capital")
    monkeypatch.setenv("STUDIP_OAUTH_CONSUMER_SECRET", "s3cr3t-consumer")
    for argv in (["sync"], ["export", "sync_runs"], ["demo"]):
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert err.startswith("hubsync: configuration error: ")
        assert "CO_TIMEZONE must be an IANA time zone such as Europe/Vienna" in err
        assert "STUDIP_OAUTH_CONSUMER_SECRET" in err
        assert "s3cr3t-consumer" not in out + err


def test_the_project_dotenv_is_read(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LMS_PAGE_SIZE=huge\nCO_PAGE_SIZE=also-bad\n")
    monkeypatch.setattr(home, "DOTENV_PATH", dotenv)
    monkeypatch.setenv("CO_PAGE_SIZE", "100")  # the environment wins over .env

    code, _, err = run(capsys, "export", "sync_runs")
    assert code == 2
    assert "LMS_PAGE_SIZE must be a positive integer (got 'huge')" in err
    assert "CO_PAGE_SIZE" not in err


def test_demo_runs_a_full_sync_against_the_sandbox(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sandbox: list[tuple[Any, ...]],
) -> None:
    built_with: list[Settings] = []
    build = pipelines.definitions.build_definitions

    def recording_build(settings: Settings) -> dg.Definitions:
        built_with.append(settings)
        return build(settings)

    monkeypatch.setattr(pipelines.definitions, "build_definitions", recording_build)

    code, out, err = run(capsys, "demo")
    assert code == 0
    assert [call[:2] for call in fake_sandbox] == [("start", 0), ("stop",)]
    urls = fake_sandbox[0][2]
    assert "usual ports are taken; using free ports" in err
    assert "(full) succeeded" in out
    assert "hubsync ui" in out and "http://127.0.0.1:3000" in out
    # the job was built for the sandbox's ports, and the environment is restored afterwards
    (settings,) = built_with
    assert settings.co.api_url == urls["co"]
    assert settings.studip.api_url == urls["studip"]
    assert settings.hub.api_url == urls["hub"]
    assert "CO_API_URL" not in __import__("os").environ


def test_demo_against_real_systems_starts_no_sandbox(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sandbox: list[tuple[Any, ...]],
    live_sandbox: Sandbox,
) -> None:
    # every *_API_URL is set (to systems already running), so demo starts no sandbox
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert fake_sandbox == []
    assert "(full) succeeded" in out


def test_sandbox_environment_only_overrides_moved_urls() -> None:
    defaults = {
        "co": "http://127.0.0.1:8701",
        "studip": "http://127.0.0.1:8702/api.php",
        "lms": "http://127.0.0.1:8703/",
        "hub": "http://127.0.0.1:8704/sandbox",
    }
    assert sandbox_environment(defaults) == {}
    assert sandbox_environment(defaults | {"lms": "http://127.0.0.1:9003"}) == {
        "LMS_API_URL": "http://127.0.0.1:9003"
    }


def test_sandbox_command_passes_its_arguments_through(
    capsys: pytest.CaptureFixture[str], fake_sandbox: list[tuple[Any, ...]]
) -> None:
    assert run(capsys, "sandbox", "--port-base", "0", "--help")[0] == 0
    assert fake_sandbox == [("main", ["--port-base", "0", "--help"])]


def test_ui_runs_dagster_dev_on_the_shared_instance(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sandbox: list[tuple[Any, ...]],
) -> None:
    launched: list[dict[str, Any]] = []

    class FakeProcess:
        def __init__(
            self, command: list[str], *, cwd: str, env: dict[str, str], **output: Any
        ) -> None:
            launched.append({"command": command, "cwd": cwd, "env": env, **output})
            fake_sandbox.append(("dagster dev",))
            self.stdout = io.StringIO(
                "2026-12-03 22:53:00 +0000 - dagster - INFO - Launching Dagster services...\n"
                "2026-12-03 22:53:36 +0000 - dagster.daemon.SensorDaemon - INFO - Checking for "
                "new runs for sensor: hub_log_sensor\n"
            )

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    code, out, _ = run(capsys, "ui", "--port", "3111")
    assert code == 0
    assert "http://127.0.0.1:3111" in out

    (process,) = launched
    # from DAGSTER_HOME, so dagster does not warn about the project's dagster.yaml in the cwd
    assert Path(process["cwd"]) == Path(process["env"]["DAGSTER_HOME"])
    assert process["command"][1:] == [
        "-W", "ignore:Function `dev_command` is superseded",  # "use 'dg dev'": not for us
        "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
        "--host", "127.0.0.1", "--port", "3111", "--log-level", "info",
    ]  # fmt: skip
    # its output goes through hubsync, which drops the daemon's per-tick lines
    assert process["stdout"] == subprocess.PIPE and process["stderr"] == subprocess.STDOUT
    assert "Launching Dagster services..." in out
    assert "Checking for new runs" not in out
    assert "HUBSYNC_CONSOLE_LOG_LEVEL" not in process["env"]
    dagster_home = Path(process["env"]["DAGSTER_HOME"])
    assert process["env"]["CO_API_URL"] == fake_sandbox[0][2]["co"]
    assert [call[:2] for call in fake_sandbox] == [("start", 0), ("dagster dev",), ("stop",)]
    assert (dagster_home / "dagster.yaml").read_bytes() == (
        PROJECT_ROOT / "dagster.yaml"
    ).read_bytes()


class HangingDagsterDev:
    """A dagster dev that is interrupted by Ctrl-C and then does not stop by itself."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def wait(self, timeout: float | None = None) -> int:
        self.calls.append(f"wait {timeout}")
        if "terminate" in self.calls:
            return -15
        if timeout is None:
            raise KeyboardInterrupt
        raise subprocess.TimeoutExpired("dagster dev", timeout)

    def terminate(self) -> None:
        self.calls.append("terminate")


def test_ui_stops_a_dagster_dev_that_hangs_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cli.main.DAGSTER_DEV_SHUTDOWN_S", 0.01)
    process = HangingDagsterDev()
    assert _wait_for_dagster_dev(process) == -15  # type: ignore[arg-type]
    assert process.calls == ["wait None", "wait 0.01", "terminate", "wait 10"]


def test_default_dagster_home_always_gets_the_project_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(home, "DEFAULT_DAGSTER_HOME", tmp_path / "default_home")
    environ: dict[str, str] = {}
    assert home.prepare_dagster_home(environ) == tmp_path / "default_home"
    assert environ == {"DAGSTER_HOME": str(tmp_path / "default_home")}

    installed = tmp_path / "default_home" / "dagster.yaml"
    installed.write_text("telemetry:\n  enabled: true\n")
    home.prepare_dagster_home({})
    assert installed.read_bytes() == (PROJECT_ROOT / "dagster.yaml").read_bytes()


def test_an_operators_dagster_home_config_is_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    operator_home = tmp_path / "operator"
    operator_home.mkdir()
    (operator_home / "dagster.yaml").write_text("storage: {}\n")

    home.prepare_dagster_home({"DAGSTER_HOME": str(operator_home)})
    assert (operator_home / "dagster.yaml").read_text() == "storage: {}\n"
    assert "keeping" in capsys.readouterr().err

    fresh_home = tmp_path / "fresh"
    home.prepare_dagster_home({"DAGSTER_HOME": str(fresh_home)})
    assert (fresh_home / "dagster.yaml").read_bytes() == (
        PROJECT_ROOT / "dagster.yaml"
    ).read_bytes()


def test_python_dash_m_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for command in ("demo", "sandbox", "ui", "sync", "sync-one", "show-student", "export"):
        assert command in result.stdout


def test_ui_listens_on_loopback_unless_a_host_is_given(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sandbox: list[tuple[Any, ...]],
) -> None:
    commands: list[list[str]] = []

    class FakeProcess:
        def __init__(self, command: list[str], **kwargs: Any) -> None:
            commands.append(command)
            self.stdout = io.StringIO()

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    assert run(capsys, "ui")[0] == 0
    code, out, _ = run(capsys, "ui", "--host", "0.0.0.0")
    assert code == 0 and "http://0.0.0.0:3000" in out

    default, exposed = commands
    assert default[default.index("--host") + 1] == "127.0.0.1"
    assert exposed[exposed.index("--host") + 1] == "0.0.0.0"


def test_a_sync_whose_key_another_sync_took_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of two syncs started in the same second printed a raw IntegrityError
    traceback (or ran the same key a second time)."""
    key = "incr-20261203T230000Z"
    monkeypatch.setattr("assets.partitions.new_sync_key", lambda mode, now=None: key)
    monkeypatch.setattr("cli.main.unreachable_message", lambda *args, **kwargs: None)
    home.prepare_dagster_home()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("sync_runs", [key])  # the other sync's
        runs_before = len(instance.get_runs())

    code, out, err = run(capsys, "sync")
    assert code == 1
    assert err.strip().splitlines() == [
        f"hubsync: another sync took the key {key} (started in the same second); "
        "this one did nothing: start it again"
    ]
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == runs_before
