from collections.abc import Iterator

import dagster as dg
import pytest


@pytest.fixture(scope="module")
def module_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:  # seconds to set up: one per module
        yield instance


@pytest.fixture
def instance(module_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """A test instance that starts empty: no runs, events or sync_runs partitions."""
    module_instance.wipe()
    for key in module_instance.get_dynamic_partitions("sync_runs"):
        module_instance.delete_dynamic_partition("sync_runs", key)
    return module_instance
