"""Delivery refusing what would damage the HUB, end to end against the sandbox.

* Every student exmatriculated in CAMPUSonline at once (a broken CO view, a bad data load): the
  HUB would get one ``arquived`` status update per student, which hides them as surely as a
  delete. The mass-delete guard counts those archivals with the deletes and blocks delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sandbox.server import Sandbox, running_sandbox
from sandbox.world import LOCAL_ZONE, World, semester_token
from tests.faults.support import SyncHarness, converged


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=71, students=30, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
    ) as running:
        yield running


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
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
