"""Incremental syncs build what a rebuild from nothing builds (issue 19's invariant).

One warehouse follows the world through a full sync and incremental syncs after each change;
a second warehouse, with a HUB of its own, makes one full sync of the world as it then is. The
merged graph (persons and their links) and what the HUB should hold (``hub_desired``) must be
the same in both. Today the incremental sync rebuilds these from each source's current state;
when it maintains them from the sync's changes instead, this test says whether it still agrees.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb

from sandbox.server import running_sandbox
from sandbox.world import World
from tests.faults.support import SyncHarness, converged
from tests.instances import ephemeral_instance

HUB_OPTIONS = {"hub": {"processing_delay_ms": 0}}
# What the comparison reads: every column that is content, none that names a sync.
TABLES = {
    "persons": "SELECT * FROM persons",
    "person_links": "SELECT * FROM person_links",
    "hub_desired": "SELECT object_type, key, sis_id, payload::VARCHAR, origin FROM hub_desired",
}


def contents(warehouse: Path) -> dict[str, set[tuple[str, ...]]]:
    """Each table's rows, every value as its repr (roles are lists)."""
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return {
            table: {tuple(map(repr, row)) for row in conn.execute(sql).fetchall()}
            for table, sql in TABLES.items()
        }


def test_incremental_syncs_build_the_graph_and_hub_objects_a_rebuild_builds(tmp_path) -> None:
    world = World(seed=47, students=40, today=date(2026, 11, 23))
    with running_sandbox(port_base=0, world=world, options=HUB_OPTIONS) as followed:
        with ephemeral_instance() as instance:
            harness = SyncHarness(followed, tmp_path / "followed.duckdb", instance)
            assert harness.sync("full").success
            for seed in (1, 2, 3):
                harness.change_world(seed)
                outcome = harness.sync("incremental")
                assert outcome.success, outcome.errors
            assert converged(followed)
        incremental = contents(harness.warehouse)

        # the same world, served by a second sandbox whose HUB has never been synced
        with (
            running_sandbox(port_base=0, world=world, options=HUB_OPTIONS) as fresh,
            ephemeral_instance() as instance,
        ):
            rebuild = SyncHarness(fresh, tmp_path / "rebuilt.duckdb", instance)
            assert rebuild.sync("full").success
            rebuilt = contents(rebuild.warehouse)

    assert all(rows for rows in rebuilt.values())
    for table in TABLES:
        only_incremental = incremental[table] - rebuilt[table]
        only_rebuilt = rebuilt[table] - incremental[table]
        assert not only_incremental and not only_rebuilt, (
            table,
            sorted(only_incremental)[:5],
            sorted(only_rebuilt)[:5],
        )
