import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before any project module is imported (and so before any module- or session-scoped fixture
# runs a command): a scratch Dagster instance and warehouse for the whole session, in every
# pytest-xdist worker, so nothing reaches the user's data/ or their own DAGSTER_HOME. The
# function-scoped fixture below gives each test its own on top of these.
SESSION_FOLDER = Path(tempfile.mkdtemp(prefix="hubsync-tests-"))
os.environ["DAGSTER_HOME"] = str(SESSION_FOLDER / "dagster_home")
os.environ["HUBSYNC_WAREHOUSE"] = str(SESSION_FOLDER / "warehouse.duckdb")

import pytest  # noqa: E402

import cli.home  # noqa: E402
from resources.settings import VARIABLES  # noqa: E402
from resources.warehouse import WarehouseResource  # noqa: E402
from tests.data_guard import pytest_sessionfinish, pytest_sessionstart  # noqa: E402, F401

for _variable in VARIABLES:  # the developer's settings, but our scratch places
    if _variable.name not in ("DAGSTER_HOME", "HUBSYNC_WAREHOUSE"):
        os.environ.pop(_variable.name, None)
# Nor the project's .env (load_project_dotenv reads it without overriding the environment).
cli.home.DOTENV_PATH = SESSION_FOLDER / "absent.env"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_FOLDER, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's hubsync settings or .env, or writes the real data/ folder;
    whatever a test puts into os.environ (the CLI sets DAGSTER_HOME, loads .env) is undone."""
    saved = dict(os.environ)
    for variable in VARIABLES:
        os.environ.pop(variable.name, None)
    os.environ["HUBSYNC_WAREHOUSE"] = str(tmp_path / "warehouse.duckdb")
    os.environ["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    monkeypatch.setattr("cli.home.DOTENV_PATH", tmp_path / "absent.env")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def warehouse(warehouse_path: Path) -> WarehouseResource:
    return WarehouseResource(path=str(warehouse_path))


# The longest modules first: the workers (pytest-xdist, one module each) start on them at once
# and fill the rest of the time with the short ones, instead of ending on one long module.
# (pyproject's --no-loadscope-reorder keeps this order: xdist would otherwise put the modules
# with the most tests first, and these long ones, with one test each, last.)
SLOW_MODULES = (
    "tests/faults/test_kill.py",
    "tests/deploy/test_production.py",
    "tests/test_end_to_end.py",
    "tests/faults/test_hub_delivery.py",
    "tests/faults/test_failed_syncs.py",
    "tests/faults/test_fault_matrix.py",
    "tests/cli/test_cli.py",
    "tests/test_daemon.py",
    "tests/pipelines/test_hub_log_sensor_sandbox.py",
    "tests/faults/test_identity_conflicts.py",
    "tests/bench/test_bench_smoke.py",
    "tests/cli/test_export.py",
    "tests/assets/test_hub.py",
    "tests/assets/test_graph.py",
    "tests/test_incremental_equals_rebuild.py",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than CPUs. The long tests spend much of their time waiting
    for subprocesses, sandbox threads and the HUB's processing; a third worker keeps 2 cores
    busy (the suite: 705 s with 2 workers, 612 s with 3)."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_MODULES.index(path) if path in SLOW_MODULES else len(SLOW_MODULES)

    items.sort(key=rank)  # stable: each module keeps its own order
