"""The synthetic university: determinism, realistic overlaps, changes and the clock."""

from __future__ import annotations

import pickle
from datetime import date, timedelta

import pytest

from sandbox.expected import expected_hub_state
from sandbox.world import (
    LMS_STUDENT_ID_FIELD,
    STUDENT_ID_FIELD,
    World,
    WorldClock,
    semester_token,
)

TODAY = date(2026, 11, 23)


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=11, students=400, today=TODAY)


def _fingerprint(world: World) -> tuple:
    return (
        [
            (s.stpersonnr, s.studid, s.ident_obf, s.email_tu, s.exmat_date)
            for s in world.co_students.values()
        ],
        sorted((u.user_id, u.username, u.email) for u in world.studip_users.values()),
        sorted((c, tuple(sorted(m.items()))) for c, m in world.memberships.items()),
        sorted((r.registration_id, r.login, r.status) for r in world.lms_registrations.values()),
    )


def test_same_seed_same_world() -> None:
    assert _fingerprint(World(5, 120, today=TODAY)) == _fingerprint(World(5, 120, today=TODAY))
    assert _fingerprint(World(5, 120, today=TODAY)) != _fingerprint(World(6, 120, today=TODAY))


def test_sizes_scale_with_students() -> None:
    small, large = World(1, 100, today=TODAY), World(1, 1000, today=TODAY)
    assert len(small.co_students) == 100 and len(large.co_students) == 1000
    for attribute in ("co_studies", "studip_users", "lms_registrations"):
        assert len(getattr(large, attribute)) > 5 * len(getattr(small, attribute))
    # Small worlds keep a floor of courses per programme.
    assert len(large.studip_courses) > 2 * len(small.studip_courses)


def test_students_active_and_exmatriculated_with_studies(world: World) -> None:
    students = list(world.co_students.values())
    active = [s for s in students if s.active]
    assert 0.7 < len(active) / len(students) < 0.9
    for student in students:
        studies = world.studies_by_person[student.stpersonnr]
        if student.studid:
            assert 1 <= len(studies) <= 3
        if not student.active:
            assert all(not world.co_studies[nr].active for nr in studies)
    assert any(a.ststudiumnr is None for a in world.co_applications.values())
    assert any(s.studid is None for s in students), "applicants without matriculation number"


def test_identities_overlap_like_real_ones(world: World) -> None:
    active = [s for s in world.co_students.values() if s.active and s.studid]
    in_studip = [s for s in active if s.pid in world.studip_user_by_pid]
    in_lms = [s for s in active if s.pid in world.lms_learner_by_pid]
    in_all = [s for s in in_studip if s.pid in world.lms_learner_by_pid]
    assert len(in_studip) / len(active) > 0.8
    assert 0.3 < len(in_lms) / len(active) < 0.6
    assert in_all and len(in_studip) < len(active), "some students are only in CO"
    users = [world.studip_users[world.studip_user_by_pid[s.pid]] for s in in_studip]
    assert any(
        u.email != s.email_tu and u.email.lower() == s.email_tu
        for u, s in zip(users, in_studip, strict=True)
    ), "e-mails differ in case"
    assert any(STUDENT_ID_FIELD in u.datafields for u in users)
    assert any(STUDENT_ID_FIELD not in u.datafields for u in users)
    learners = list(world.lms_learners.values())
    assert any(LMS_STUDENT_ID_FIELD in lr.profile for lr in learners)
    usernames = {u.username: u.pid for u in world.studip_users.values()}
    collisions = [lr for lr in learners if lr.login in usernames and usernames[lr.login] != lr.pid]
    assert len(collisions) == 3, "a few LMS logins collide with unrelated Stud.IP usernames"
    perms = {u.perms for u in world.studip_users.values()}
    assert {"autor", "tutor", "dozent", "admin", "root"} <= perms
    assert {r.status for r in world.lms_registrations.values()} == {0, 1, 2}


def test_semesters_and_courses(world: World) -> None:
    codes = [s.code for s in world.semesters_in_order]
    assert codes == ["2024W", "2025S", "2025W", "2026S", "2026W", "2027S"]
    assert world.current_semester.title == "WS 2026/2027"
    with_members = {c for c, m in world.memberships.items() if m}
    semesters = {world.studip_courses[c].start_semester for c in with_members}
    assert {
        world.previous_semester.semester_id,
        world.current_semester.semester_id,
        world.next_semester.semester_id,
        None,
    } == semesters
    assert semester_token(date(2026, 11, 23)) == "26W"
    assert semester_token(date(2027, 2, 1)) == "26W"
    assert semester_token(date(2027, 5, 1)) == "27S"


def test_step_changes_records_with_the_clock_time() -> None:
    world = World(seed=2, students=300, today=TODAY)
    before = expected_hub_state(world).state
    world.clock.advance(3600)
    summary = world.step(seed=99)
    counts = summary.counts()
    for kind in (
        "new_student",
        "exmatriculation",
        "name_change",
        "email_change",
        "study_status_change",
        "completion",
        "late_vessel_completion",
        "retake",
        "new_application",
    ):
        assert counts.get(kind, 0) >= 1, kind
    assert "deleted_student" not in counts
    for nr in summary.changes["exmatriculation"]:
        student = world.co_students[int(nr)]
        assert not student.active
        assert student.modified_at == summary.at == student.deactivated_at
    for nr in summary.changes["new_student"]:
        assert world.co_students[int(nr)].modified_at == summary.at
    completed = [world.lms_registrations[r] for r in summary.changes["late_vessel_completion"]]
    assert all(r.completion_date < r.modified_at - timedelta(days=1) for r in completed)
    assert expected_hub_state(world).state != before


def test_step_is_deterministic_for_a_seed() -> None:
    first, second = (
        World(seed=2, students=200, today=TODAY),
        World(seed=2, students=200, today=TODAY),
    )
    assert first.step(seed=5).changes == second.step(seed=5).changes


def test_deletes_only_when_asked() -> None:
    world = World(seed=4, students=300, today=TODAY)
    summary = world.step(include_deletes=True)
    deleted = [int(nr) for nr in summary.changes["deleted_student"]]
    assert deleted and all(nr not in world.co_students for nr in deleted)
    assert all(
        int(nr) not in world.co_applications for nr in summary.changes["deleted_application"]
    )


def test_clock_only_moves_forward() -> None:
    clock = WorldClock()
    start = clock.now()
    assert clock.advance(900) >= start + timedelta(seconds=900)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_world_survives_pickling() -> None:
    world = World(seed=8, students=60, today=TODAY)
    world.clock.advance(120)
    copy = pickle.loads(pickle.dumps(world))
    assert _fingerprint(copy) == _fingerprint(world)
    assert copy.clock.offset_seconds == 120
    copy.step()  # the lock was recreated
