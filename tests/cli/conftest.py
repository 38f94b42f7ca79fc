import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dagster_home")


@pytest.fixture(autouse=True)
def shared_dagster_home(module_dagster_home: Path) -> Iterator[None]:
    """The CLI tests share one Dagster instance (creating one costs about a second); each still
    has its own warehouse, which decides full versus incremental."""
    os.environ["DAGSTER_HOME"] = str(module_dagster_home)
    yield
