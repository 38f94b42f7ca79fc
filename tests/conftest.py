import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.settings import VARIABLES
from resources.warehouse import WarehouseResource


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
