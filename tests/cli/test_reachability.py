"""Commands whose systems do not answer say so in one line, with what to do, instead of a
traceback (show-student, sync-one) or a failed run of dozens of lines (sync)."""

import http.server
import socket
import subprocess
import sys
import threading

import dagster as dg
import pytest

import cli.reachability
from cli.main import main
from cli.reachability import unreachable_message
from resources.settings import PROJECT_ROOT, load_settings

SANDBOX_HINT = "start `hubsync sandbox` (or `hubsync ui`) in another terminal, or set "


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def nothing_answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    port = closed_port()
    urls = {
        "CO_API_URL": f"http://127.0.0.1:{port}",
        "STUDIP_API_URL": f"http://127.0.0.1:{port}/api.php",
        "LMS_API_URL": f"http://127.0.0.1:{port}",
        "HUB_API_URL": f"http://127.0.0.1:{port}/sandbox",
    }
    for name, url in urls.items():
        monkeypatch.setenv(name, url)
    return urls


@pytest.mark.parametrize("command", ["show-student", "show-studies", "sync-one"])
def test_campusonline_commands_name_the_unreachable_system_in_one_line(
    capsys: pytest.CaptureFixture[str], nothing_answers: dict[str, str], command: str
) -> None:
    code = main([command, "12345"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        f"hubsync: no answer from CAMPUSonline at {nothing_answers['CO_API_URL']}: check that "
        "it is up and reachable from here, or set CO_API_URL\n"
    )


def test_sync_names_every_unreachable_system_in_one_line_and_starts_no_run(
    capsys: pytest.CaptureFixture[str], nothing_answers: dict[str, str]
) -> None:
    code = main(["sync"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("hubsync: no answer from CAMPUSonline at ")
    for system in ("Stud.IP", "LMS", "HUB"):
        assert f", {system} at " in err
    assert err.endswith("or set CO_API_URL / STUDIP_API_URL / LMS_API_URL / HUB_API_URL\n")
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


def test_demo_against_real_systems_that_do_not_answer(
    capsys: pytest.CaptureFixture[str], nothing_answers: dict[str, str]
) -> None:
    assert main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("hubsync: no answer from CAMPUSonline at ") and err.count("\n") == 1


def test_sync_of_one_source_checks_only_that_source(
    capsys: pytest.CaptureFixture[str], nothing_answers: dict[str, str]
) -> None:
    assert main(["sync", "--source", "lms"]) == 1
    assert capsys.readouterr().err.startswith("hubsync: no answer from LMS at ")


def test_the_sandbox_defaults_get_the_sandbox_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.reachability, "answers", lambda url: "8701" not in url)
    message = unreachable_message(load_settings({}), ["co", "hub"])
    assert message == (
        f"hubsync: no answer from CAMPUSonline at http://127.0.0.1:8701: {SANDBOX_HINT}CO_API_URL"
    )


def test_any_http_answer_counts_as_reachable() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:  # BaseHTTPRequestHandler answers 501: the system is there, whatever it says
        assert cli.reachability.answers(f"http://127.0.0.1:{server.server_port}/api.php")
    finally:
        thread.join(timeout=10)
        server.server_close()
    assert not cli.reachability.answers(f"http://127.0.0.1:{closed_port()}")


def test_help_and_configuration_errors_do_not_import_dagster() -> None:
    # importing Dagster takes seconds; --help and a bad setting should not wait for it
    script = (
        "import sys\n"
        "from cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert main(['sync']) == 2\n"
        "assert main(['show-student', '1']) == 2\n"
        "assert main(['export', 'sync_runs']) == 2\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'duckdb')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "HUB_BATCH_SIZE": "lots", "DAGSTER_HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert result.stderr.count("HUB_BATCH_SIZE must be a positive integer") == 3
