"""The session guard of tests/data_guard.py: a test run that writes into the guarded folder
fails, also when the write happens in a pytest-xdist worker; one that does not, passes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_guard import GUARDED_ENV, PROJECT_DATA

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WRITES = """
import os
from pathlib import Path

def test_writes():
    Path(os.environ["{env}"], "dagster_home").mkdir()
    Path(os.environ["{env}"], "dagster_home", "runs.db").write_text("a run")
"""
READS = """
import os
from pathlib import Path

def test_reads():
    assert Path(os.environ["{env}"], "warehouse.duckdb").read_text() == "mine"
"""


def run_pytest(tmp_path: Path, test: str, *options: str) -> subprocess.CompletedProcess[str]:
    guarded = tmp_path / "data"
    guarded.mkdir()
    (guarded / "warehouse.duckdb").write_text("mine")
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_it.py").write_text(test.format(env=GUARDED_ENV))
    env = {**os.environ, GUARDED_ENV: str(guarded), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.data_guard", "-p", "no:cacheprovider",
         "--rootdir", str(tests), *options, str(tests)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("options", [("-n", "0"), ("-n", "2", "--dist", "loadfile")])
def test_a_test_writing_into_data_fails_the_session(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    result = run_pytest(tmp_path, WRITES, *options)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "the tests wrote into" in result.stdout
    assert "added dagster_home/runs.db" in result.stdout


def test_a_test_that_only_reads_data_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, READS, "-n", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote into" not in result.stdout


@pytest.fixture(scope="module")
def module_environment() -> dict[str, str]:
    """What a module-scoped fixture sees: it runs before the function-scoped isolation."""
    return dict(os.environ)


def test_module_fixtures_see_a_scratch_instance_and_warehouse(
    module_environment: dict[str, str],
) -> None:
    # set by tests/conftest.py before any test module (or a module fixture) ran a command
    for variable in ("DAGSTER_HOME", "HUBSYNC_WAREHOUSE"):
        path = Path(module_environment[variable]).resolve()
        assert not path.is_relative_to(PROJECT_DATA.resolve())
