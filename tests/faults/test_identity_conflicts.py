"""Hostile identities end to end (issue 18): Stud.IP accounts claiming a student who already
has one. Real syncs against the sandbox; the HUB is compared with the world's expected state
(``sandbox/expected.py``, the stronger rule wins) and, since that oracle once shared the bug,
with what the HUB held for the student before the account appeared.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import duckdb
import pytest

from sandbox.expected import crawl_studip, default_seed_ids, default_semester_ids
from sandbox.server import running_sandbox
from sandbox.world import CoStudent, Person, StudipUser, World
from tests.faults.support import SyncHarness, converged, describe_differences, hub_differences
from tests.instances import ephemeral_instance

SMALLEST_USER_ID = "0" * 32  # sorts before every generated Stud.IP user id: won ties before


@pytest.fixture
def harness(tmp_path) -> Iterator[SyncHarness]:
    world = World(seed=31, students=40, today=date(2026, 11, 23))
    with (
        running_sandbox(
            port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
        ) as sandbox,
        ephemeral_instance() as instance,
    ):
        yield SyncHarness(sandbox, tmp_path / "w.duckdb", instance)


def add_account(world: World, *, email: str, perms: str, **datafields: str) -> StudipUser:
    """A new Stud.IP account (of a new human) with the smallest user id."""
    with world.lock:
        pid = max(world.persons) + 1
        world.persons[pid] = Person(pid, "Ima", "Postor", "X", date(1970, 1, 1), "guest")
        user = StudipUser(SMALLEST_USER_ID, f"impostor{pid}", pid, perms, email, datafields, [])
        world.studip_users[user.user_id] = user
        return user


def student_with_account(world: World, *, by_studid: bool) -> tuple[CoStudent, StudipUser]:
    """An active student with a reached Stud.IP account in courses; the account carries the
    matriculation number (``by_studid``) or only the e-mail."""
    reached, _ = crawl_studip(world, default_semester_ids(world), default_seed_ids(world))
    for student in sorted(world.co_students.values(), key=lambda s: s.stpersonnr):
        user = world.studip_user_of(student.pid)
        if not (student.active and student.studid and student.email_tu and user):
            continue
        if user.user_id in reached and world.user_courses.get(user.user_id):
            if (user.datafields.get("Matrikelnummer") == student.studid) == by_studid:
                return student, user
    raise AssertionError("no such student in this world")


def other_course(world: World, user: StudipUser) -> str:
    _, courses = crawl_studip(world, default_semester_ids(world), default_seed_ids(world))
    return next(
        c
        for c in sorted(courses)
        if user.user_id not in world.memberships[c]
        and world.studip_courses[c].start_semester == world.current_semester.semester_id
    )


def hub_links(harness: SyncHarness, code: str) -> dict[str, dict[str, Any]]:
    state = harness.sandbox.hub.state_snapshot()
    return {
        key: obj
        for kind, role in (("sectionstudent", "student"), ("sectionteacher", "teacher"))
        for key, obj in state[kind].items()
        if obj[role]["code"] == code
    }


def test_an_impostor_account_showing_a_students_email_does_not_take_their_links(
    harness: SyncHarness,
) -> None:
    world = harness.sandbox.world
    assert harness.sync("full").success
    student, account = student_with_account(world, by_studid=True)
    before = hub_links(harness, student.studid)
    assert before
    impostor = add_account(world, email=student.email_tu.upper(), perms="autor")
    course = other_course(world, account)
    world.enrol(course, impostor.user_id, "autor")

    outcome = harness.sync("full")
    assert outcome.success, outcome.errors
    assert hub_links(harness, student.studid) == before  # before the fix: the impostor's course
    assert not any(key.startswith(course) for key in hub_links(harness, student.studid))
    assert converged(harness.sandbox), describe_differences(harness.sandbox)
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        assert conn.execute(
            "SELECT source_id, claimed_person, rule, winner_id, blocked FROM person_conflicts"
        ).fetchall() == [
            (impostor.user_id, f"co:{student.stpersonnr}", "email", account.user_id, False)
        ]
        (summary,) = conn.execute(
            "SELECT summary->>'$.identity_conflicts' FROM sync_runs WHERE key = ?", [outcome.key]
        ).fetchone()
    assert summary == "1"


def test_a_dozent_account_with_a_students_email_leaves_the_student_sendable(
    harness: SyncHarness,
) -> None:
    world = harness.sandbox.world
    assert harness.sync("full").success
    student, account = student_with_account(world, by_studid=True)
    user_before = harness.sandbox.hub.state_snapshot()["user"][student.studid]
    dozent = add_account(world, email=student.email_tu, perms="dozent")  # no CPF
    world.enrol(other_course(world, account), dozent.user_id, "dozent")

    outcome = harness.sync("full")
    assert outcome.success, outcome.errors
    # before the fix the dozent joined the student: a lecturer without CPF, the HUB user deleted
    assert harness.sandbox.hub.state_snapshot()["user"].get(student.studid) == user_before
    assert converged(harness.sandbox), describe_differences(harness.sandbox)
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        # the weaker claim lost (not merely blocked: nothing of the student is held back)
        assert conn.execute(
            "SELECT source_id, rule, winner_id, winner_rule, blocked FROM person_conflicts"
        ).fetchall() == [(dozent.user_id, "email", account.user_id, "studid", False)]


def test_a_conflict_moving_an_existing_students_links_blocks_only_that_student(
    harness: SyncHarness,
) -> None:
    """An account carrying the matriculation number of a student whose account matched by
    e-mail wins by the stronger rule; that would move the student's links and make them a
    lecturer. The student (and the displaced account) keep what the HUB holds, every other
    change of the sync is delivered, and once the account is gone the student converges."""
    world = harness.sandbox.world
    assert harness.sync("full").success
    student, account = student_with_account(world, by_studid=False)
    user_before = harness.sandbox.hub.state_snapshot()["user"][student.studid]
    links_before = hub_links(harness, student.studid)
    claimer = add_account(
        world, email="claims@example.org", perms="dozent", Matrikelnummer=student.studid
    )
    course = other_course(world, account)
    world.enrol(course, claimer.user_id, "dozent")
    harness.change_world(seed=5)  # other changes, which must still arrive

    outcome = harness.sync("full")
    assert outcome.success, outcome.errors
    hub = harness.sandbox.hub.state_snapshot()
    assert hub["user"][student.studid] == user_before
    assert hub_links(harness, student.studid) == links_before
    assert account.username not in hub["user"]
    # only the blocked student's objects differ from the world's expected state
    differences = describe_differences(harness.sandbox, limit=1000).splitlines()
    assert differences and all(student.studid in line for line in differences), differences
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        blocked = conn.execute("SELECT person_key FROM person_blocks ORDER BY 1").fetchall()
    assert blocked == [(f"co:{student.stpersonnr}",), (f"studip:{account.user_id}",)]

    with world.lock:  # an administrator removes the account: the block lifts
        world.drop(course, claimer.user_id)
        del world.studip_users[claimer.user_id]
    assert harness.sync("full").success
    assert hub_differences(harness.sandbox) == (0, 0), describe_differences(harness.sandbox)
