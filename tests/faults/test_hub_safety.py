"""Delivery refusing what would damage the HUB, end to end against the sandbox.

* Every student exmatriculated in CAMPUSonline at once (a broken CO view, a bad data load): the
  HUB would get one ``arquived`` status update per student, which hides them as surely as a
  delete. The mass-delete guard counts those archivals with the deletes and blocks delivery.
* The warehouse pointed at another HUB (HUB_API_URL and HUB_ORG_ID changed): its acknowledged
  state belongs to the first HUB, so delivery refuses, naming both, until ``hubsync hub-reset``;
  the next full sync then leaves the new HUB at exactly the expected state.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sandbox.expected import expected_hub_state
from sandbox.hub import HubServer
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import LOCAL_ZONE, World, semester_token
from tests.faults.support import SyncHarness, converged
from tests.instances import ephemeral_instance


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=71, students=30, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
    ) as running:
        yield running


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with ephemeral_instance() as instance:
        yield instance


def _query(warehouse: Path, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


# -- mass archival --------------------------------------------------------------------------------


def exmatriculate_everyone(world: World) -> int:
    """Mark every active CAMPUSonline student exmatriculated, in CO only: their Stud.IP courses
    and LMS registrations stay, so the HUB would see status updates, not link deletes."""
    with world.lock:
        now = world.clock.now()
        today = now.astimezone(LOCAL_ZONE).date()
        students = [s for s in world.co_students.values() if s.active]
        for student in students:
            student.exmat_date, student.exmat_status_key = today, "EZ"
            student.exmat_semester = semester_token(today)
            student.modified_at = student.deactivated_at = now
    return len(students)


def test_exmatriculating_every_student_is_blocked_as_a_mass_delete(
    sandbox: Sandbox, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    harness = SyncHarness(sandbox, tmp_path / "w.duckdb", instance)
    assert harness.sync("full").success
    assert converged(sandbox)
    before = sandbox.hub.state_snapshot()

    assert exmatriculate_everyone(sandbox.world) >= 20
    sandbox.world.clock.advance(900)  # past CO's view refresh
    outcome = harness.sync("full")

    assert not outcome.success
    pending = _query(
        harness.warehouse,
        "SELECT e.object_type, e.action, count(*) FROM hub_events e "
        "JOIN hub_batches b USING (sync_key, batch_no) WHERE e.sync_key = ? "
        "AND b.status = 'pending' GROUP BY ALL",
        outcome.key,
    )
    # what was held back: user updates (archivals) and nothing deleted that could trip the guard
    assert {(kind, action) for kind, action, _ in pending} == {("user", "update")}, pending
    archived = _query(
        harness.warehouse,
        "SELECT count(*) FROM hub_events WHERE sync_key = ? AND payload->>'$.status' = 'arquived'",
        outcome.key,
    )[0][0]
    assert archived >= 20
    assert harness.sync_status(outcome.key)[0] == "failed"
    assert sandbox.hub.state_snapshot() == before, "nothing reached the HUB"
    evaluations = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("hub_payload"), "hub_deletes_within_limit")]
    )
    [record] = evaluations.values()
    evaluation = record.event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert evaluation.passed is False
    assert evaluation.metadata["archivals"].value == {"user": archived}


# -- another HUB ----------------------------------------------------------------------------------

OTHER_ORG = "aa" * 16


@pytest.fixture
def hub_b(sandbox: Sandbox) -> Iterator[HubServer]:
    """A second, empty HUB (another environment and organization) beside the sandbox's."""
    server = HubServer(sandbox.world, env="prod", org_id=OTHER_ORG, processing_delay_ms=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_warehouse_pointed_at_another_hub_refuses_until_hub_reset(
    sandbox: Sandbox,
    hub_b: HubServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    warehouse = tmp_path / "w.duckdb"
    hub_a = sandbox.hub
    at_a = SyncHarness(sandbox, warehouse, instance)
    assert at_a.sync("full").success
    assert converged(sandbox)
    sandbox.world.step(seed=3)  # something new to send
    sandbox.world.clock.advance(900)
    messages_a = len(hub_a.messages())

    env_b = {"HUB_API_URL": hub_b.base_url, "HUB_ORG_ID": OTHER_ORG}
    at_b = SyncHarness(sandbox, warehouse, instance, **env_b)
    at_b._next_start = at_a._next_start  # new sync keys only
    refused = at_b.sync("full")

    assert not refused.success
    [error] = [e for e in refused.errors if e.startswith("hub_delivery:")]
    assert f"{hub_a.base_url} (HUB_ORG_ID {hub_a.org_id})" in error
    assert f"{hub_b.base_url} (HUB_ORG_ID {OTHER_ORG})" in error
    assert "HUB_API_URL and HUB_ORG_ID now point at" in error
    assert "hubsync hub-reset" in error
    assert hub_b.api_key not in error
    assert hub_b.request_count() == 0, "not one request reached the other HUB"
    assert len(hub_a.messages()) == messages_a
    assert at_b.sync_status(refused.key)[0] == "failed"
    refused_again = at_b.sync("incremental")
    assert not refused_again.success, "and it stays refused"

    from cli.main import main

    for name, value in {**sandbox.env, **env_b, "HUBSYNC_WAREHOUSE": str(warehouse)}.items():
        monkeypatch.setenv(name, value)
    assert main(["hub-reset"]) == 1, "without --yes it only says what it would do"
    assert "Nothing changed" in capsys.readouterr().err
    assert main(["hub-reset", "--yes"]) == 0
    said = capsys.readouterr().out
    assert f"now belongs to the HUB {hub_b.base_url} (HUB_ORG_ID {OTHER_ORG})" in said
    assert hub_b.api_key not in said

    assert at_b.sync("full").success
    assert hub_b.wait_idle(30)
    assert hub_b.state_snapshot() == expected_hub_state(sandbox.world).state
    assert hub_b.duplicate_inserts() == 0
    assert len(hub_a.messages()) == messages_a, "the old HUB heard nothing more"
    posted = _query(
        warehouse,
        "SELECT count(*) FROM hub_batches WHERE sync_key IN (?, ?) AND posted_at IS NOT NULL",
        refused.key,
        refused_again.key,
    )[0][0]
    assert posted == 0, "what was computed against the old HUB's state is never sent"
