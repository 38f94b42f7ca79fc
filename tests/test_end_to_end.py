"""Whole syncs through the real jobs against the sandbox: the HUB ends up equal to the world."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from resources.hub import HubClient
from resources.settings import load_settings
from sandbox.expected import expected_hub_state
from sandbox.http import FaultConfig
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance


@pytest.fixture
def sandbox(request: pytest.FixtureRequest):
    seed, students = getattr(request, "param", (23, 150))
    world = World(seed=seed, students=students, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 5}}
    ) as running:
        yield running


@pytest.fixture
def run_sync(sandbox, tmp_path: Path):
    settings = load_settings(
        {
            **sandbox.env,
            "HUBSYNC_WAREHOUSE": str(tmp_path / "w.duckdb"),
            "HUB_POLL_INTERVAL": "0.02",
            "HUB_BATCH_SIZE": "60",  # several batches per object type, so deaths are mid-delivery
        }
    )
    defs = build_definitions(settings)
    with ephemeral_instance() as instance:

        def run(key: str, *, succeed: bool = True) -> dg.ExecuteInProcessResult:
            instance.add_dynamic_partitions("sync_runs", [key])
            job = defs.resolve_job_def("sync_job")
            result = job.execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False
            )
            assert result.success is succeed
            return result

        yield run


def _hub_messages(sandbox) -> int:
    return len(sandbox.hub.messages())


def _numeric(value: dg.MetadataValue) -> bool:
    return isinstance(value, dg.IntMetadataValue | dg.FloatMetadataValue)


def test_full_then_incremental_then_deletes(sandbox, run_sync) -> None:
    full = run_sync("full-20261123T020000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state
    # every asset reports numbers, so the UI can plot each one over the syncs
    materialized = full.get_asset_materialization_events()
    assert len(materialized) >= 20
    for event in materialized:
        metadata = event.materialization.metadata
        assert any(_numeric(value) for value in metadata.values()), event.asset_key

    # an unchanged re-sync sends nothing
    before = _hub_messages(sandbox)
    sandbox.world.clock.advance(60)
    run_sync("incr-20261123T021500Z")
    assert _hub_messages(sandbox) == before

    # after world changes an incremental sync sends the changes
    sandbox.world.clock.advance(900)
    sandbox.world.step(seed=7)
    sandbox.world.clock.advance(900)  # past CO's next view refresh
    run_sync("incr-20261123T030000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state

    # a full sync after deletions sends the deletes
    sandbox.world.step(seed=8, include_deletes=True)
    sandbox.world.clock.advance(900)
    run_sync("full-20261124T020000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state

    assert sandbox.hub.duplicate_inserts(links=False) == 0


@pytest.mark.parametrize("sandbox", [(11, 80)], indirect=True)
def test_an_incremental_sync_reaches_new_and_changed_students(sandbox, run_sync) -> None:
    """This world's step adds students with new Stud.IP accounts (two share a family name) and
    changes e-mails that were the only link to a Stud.IP account: the incremental crawl must
    find both (a search for the new, the last graph's links for the changed)."""
    run_sync("full-20261123T020000Z")
    sandbox.world.clock.advance(900)
    sandbox.world.step(seed=3)
    sandbox.world.clock.advance(900)
    run_sync("incr-20261123T030000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state
    assert sandbox.hub.duplicate_inserts(links=False) == 0


class ProcessDied(Exception):
    """Stands for the sync process dying right after a POST went out (the answer is lost)."""


def test_an_interrupted_delivery_is_resumed_by_the_next_run(
    sandbox, run_sync, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_post = HubClient.post_batch
    posts = {"n": 0}

    def post_then_die(self, text):  # dies right after its 3rd POST reached the HUB
        result = real_post(self, text)
        posts["n"] += 1
        if posts["n"] == 3:
            raise ProcessDied
        return result

    monkeypatch.setattr(HubClient, "post_batch", post_then_die)
    failed = run_sync("full-20261123T020000Z", succeed=False)
    assert "hub_delivery" in {e.step_key for e in failed.all_events if e.is_step_failure}
    assert sandbox.hub.state_snapshot() != expected_hub_state(sandbox.world).state
    monkeypatch.setattr(HubClient, "post_batch", real_post)

    # the next runs resume: the lost answer's objects go again, as updates or reconciled links
    sandbox.hub.faults.configure(FaultConfig(script=["ok", "drop"], path_filter="sync/v1"))
    run_sync("full-20261123T030000Z")
    sandbox.hub.faults.configure(FaultConfig())
    run_sync("full-20261123T040000Z")
    assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state
    assert sandbox.hub.duplicate_inserts(links=False) == 0
    before = _hub_messages(sandbox)
    run_sync("full-20261123T050000Z")  # and nothing is left to send
    assert _hub_messages(sandbox) == before
