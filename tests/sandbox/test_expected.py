"""The expected-HUB-state projection, checked by hand on a world of a dozen records."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from sandbox.expected import expected_hub_state, link_sis_id
from sandbox.world import (
    SEED_DOZENT_USERNAME,
    CoStudent,
    LmsCourse,
    LmsLearner,
    LmsRegistration,
    Person,
    StudipCourse,
    StudipUser,
    World,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _person(world: World, pid: int, given: str, family: str, gender: str, birth: date) -> Person:
    person = Person(pid, given, family, gender, birth, "student")
    world.persons[pid] = person
    return person


def _student(
    world: World,
    nr: int,
    pid: int,
    studid: str | None,
    email: str | None,
    exmat: date | None = None,
) -> CoStudent:
    student = CoStudent(
        nr,
        pid,
        studid,
        f"IDENT{nr}",
        email,
        "O",
        "x",
        168,
        "02",
        date(2022, 10, 1),
        "22W",
        exmat_date=exmat,
        modified_at=T0,
    )
    world.co_students[nr] = student
    return student


def _user(
    world: World, user_id: str, username: str, pid: int, perms: str, email: str, **datafields: str
) -> StudipUser:
    user = StudipUser(user_id, username, pid, perms, email, dict(datafields), [], T0)
    world.studip_users[user_id] = user
    world.studip_user_by_pid[pid] = user_id
    return user


def _course(
    world: World,
    course_id: str,
    number: str,
    title: str,
    subtitle: str,
    semester_id: str | None,
    end_semester_id: str | None = None,
    sem_type: str = "1",
) -> StudipCourse:
    course = StudipCourse(
        course_id,
        number,
        title,
        subtitle,
        sem_type,
        semester_id,
        end_semester_id or semester_id,
        "inst",
        5 if semester_id else 8,
        T0,
    )
    world.studip_courses[course_id] = course
    return course


@pytest.fixture
def hand_world() -> World:
    world = World(seed=1, students=0, today=date(2026, 11, 23), populate=False)
    current, following = world.current_semester, world.next_semester
    previous = world.previous_semester
    # Anna: CO student; Stud.IP account matched by the Matrikelnummer datafield; LMS learner
    # matched by the StudentId profile field.
    _person(world, 1, "Anna", "Gruber", "W", date(2001, 5, 4))
    _student(world, 100, 1, "01234567", "anna.gruber@student.tu.at")
    _user(
        world,
        "u-anna",
        "agruber",
        1,
        "autor",
        "anna.gruber@student.tu.at",
        Matrikelnummer="01234567",
    )
    world.lms_learners["agruber"] = LmsLearner(
        "agruber", "agruber", 1, "x@y", "x@y", {"StudentId": "01234567"}
    )
    # Bernd: exmatriculated CO student; Stud.IP account matched by e-mail in another case.
    _person(world, 2, "Bernd", "Huber", "M", date(1999, 1, 2))
    _student(world, 101, 2, "01234568", "bernd.huber@student.tu.at", exmat=date(2026, 3, 1))
    _user(world, "u-bernd", "bhuber", 2, "autor", "Bernd.Huber@Student.TU.at")
    # Carla: an applicant without STUDID: a person, but the HUB cannot take her.
    _person(world, 3, "Carla", "Moser", "X", date(2007, 8, 9))
    _student(world, 102, 3, None, None)
    # Dora: the seed dozent, with the identifiers the HUB requires of teachers.
    _person(world, 4, "Dora", "Lang", "W", date(1970, 2, 3))
    _user(
        world,
        "u-dora",
        SEED_DOZENT_USERNAME,
        4,
        "dozent",
        "dora.lang@tu.at",
        Geburtsdatum="1970-02-03",
        CPF="52998224725",
    )
    # Theo: a tutor without CPF: not sendable.
    _person(world, 5, "Theo", "Wolf", "M", date(1990, 6, 7))
    _user(world, "u-theo", "twolf", 5, "tutor", "theo.wolf@tu.at", Geburtsdatum="1990-06-07")
    # Gina: a guest listener, Stud.IP only, birth date in a datafield.
    _person(world, 6, "Gina", "Eder", "W", date(1960, 1, 1))
    _user(world, "u-gina", "geder", 6, "autor", "gina@gmx.at", Geburtsdatum="1960-01-01")
    # Erik: ship crew whose LMS login collides with Bernd's Stud.IP username.
    _person(world, 7, "Erik", "Sommer", "M", date(1985, 3, 3))
    world.lms_learners["bhuber"] = LmsLearner(
        "bhuber", "bhuber", 7, "erik@crew.at", "erik@crew.at", {"Vessel": "MS Graz"}
    )
    # Fritz: ship crew with no match and no birth date.
    _person(world, 8, "Fritz", "Lehner", "M", date(1980, 4, 4))
    world.lms_learners["crew8"] = LmsLearner(
        "crew8", "crew8", 8, "fritz@crew.at", "fritz@crew.at", {}
    )

    _course(world, "c-now", "INF.101", "Algorithmen", "Gruppe 1", current.semester_id)
    _course(world, "c-next", "INF.102", "Datenbanken", "", following.semester_id)
    _course(world, "c-old", "INF.100", "Grundlagen", "", previous.semester_id)
    # runs from the previous semester into the current one: its term is where it started
    _course(world, "c-long", "INF.103", "Projekt", "", previous.semester_id, current.semester_id)
    # unlimited (no semesters): the earliest selected semester's term
    _course(world, "c-open", "INF.104", "Mentoring", "", None, sem_type="2")
    # a study group (type 99, SEM_CLASS with studygroup_mode): never a section
    _course(world, "c-group", "", "Lerngruppe", "", None, sem_type="99")
    world.enrol("c-now", "u-dora", "dozent")
    world.enrol("c-now", "u-theo", "tutor")
    world.enrol("c-now", "u-anna", "autor")
    world.enrol("c-now", "u-gina", "user")
    world.enrol("c-next", "u-dora", "dozent")
    world.enrol("c-next", "u-bernd", "autor")
    world.enrol("c-old", "u-dora", "dozent")
    world.enrol("c-old", "u-anna", "autor")
    world.enrol("c-long", "u-dora", "dozent")
    world.enrol("c-long", "u-anna", "autor")
    world.enrol("c-open", "u-dora", "dozent")
    world.enrol("c-open", "u-bernd", "autor")
    world.enrol("c-group", "u-dora", "dozent")
    world.enrol("c-group", "u-gina", "dozent")  # Gina founded it: no professor for that

    world.lms_courses["L1"] = LmsCourse("L1", "9973400", "Basic Safety Training", "OFF01")
    for reg_id, login, status in (("r1", "agruber", 2), ("r2", "bhuber", 1), ("r3", "crew8", 1)):
        world.lms_registrations[reg_id] = LmsRegistration(
            reg_id, "L1", login, T0, status, 5, T0 if status == 2 else None, T0
        )
    return world


def test_expected_state_of_a_hand_checked_world(hand_world: World) -> None:
    expected = expected_hub_state(hand_world)
    before, now, nxt = "2026S", "2026W", "2027S"
    now_name, next_name = "WS 2026/2027", "SS 2027"

    def student_link(section: str, student: str, term: str) -> tuple[str, dict]:
        return f"{section}|{student}|{term}", {
            "sis_id": link_sis_id("sectionstudent", section, student, term),
            "section": {"code": section},
            "student": {"code": student},
            "term_code": term,
        }

    def teacher_link(section: str, subject: str, term: str) -> tuple[str, dict]:
        keys = (section, SEED_DOZENT_USERNAME, subject, term)
        return "|".join(keys), {
            "sis_id": link_sis_id("sectionteacher", *keys),
            "section": {"code": section},
            "teacher": {"code": SEED_DOZENT_USERNAME},
            "subject": {"code": subject},
            "term_code": term,
        }

    assert expected.state == {
        "term": {
            "2024W": {
                "code": "2024W",
                "name": "WS 2024/2025",
                "start_date": "2024-10-01",
                "end_date": "2025-03-31",
            },
            "2025S": {
                "code": "2025S",
                "name": "SS 2025",
                "start_date": "2025-04-01",
                "end_date": "2025-09-30",
            },
            "2025W": {
                "code": "2025W",
                "name": "WS 2025/2026",
                "start_date": "2025-10-01",
                "end_date": "2026-03-31",
            },
            "2026S": {
                "code": "2026S",
                "name": "SS 2026",
                "start_date": "2026-04-01",
                "end_date": "2026-09-30",
            },
            now: {
                "code": now,
                "name": now_name,
                "start_date": "2026-10-01",
                "end_date": "2027-03-31",
            },
            nxt: {
                "code": nxt,
                "name": next_name,
                "start_date": "2027-04-01",
                "end_date": "2027-09-30",
            },
        },
        "subject": {
            "INF.101": {"code": "INF.101", "name": "Algorithmen", "status": "active"},
            "INF.102": {"code": "INF.102", "name": "Datenbanken", "status": "active"},
            "INF.103": {"code": "INF.103", "name": "Projekt", "status": "active"},
            "INF.104": {"code": "INF.104", "name": "Mentoring", "status": "active"},
            "9973400": {"code": "9973400", "name": "Basic Safety Training", "status": "active"},
        },
        "user": {
            "01234567": {
                "code": "01234567",
                "sis_id": "100",
                "name": "Anna Gruber",
                "dob": "2001-05-04",
                "gender": "F",
                "email": "anna.gruber@student.tu.at",
                "status": "active",
                "roles": [{"code": "aluno"}],
            },
            "01234568": {
                "code": "01234568",
                "sis_id": "101",
                "name": "Bernd Huber",
                "dob": "1999-01-02",
                "gender": "M",
                "email": "bernd.huber@student.tu.at",
                "status": "arquived",
                "roles": [{"code": "aluno"}],
            },
            SEED_DOZENT_USERNAME: {
                "code": SEED_DOZENT_USERNAME,
                "sis_id": "u-dora",
                "name": "Dora Lang",
                "dob": "1970-02-03",
                "email": "dora.lang@tu.at",
                "cpf": "52998224725",
                "status": "active",
                "roles": [{"code": "professor"}],
            },
            "geder": {
                "code": "geder",
                "sis_id": "u-gina",
                "name": "Gina Eder",
                "dob": "1960-01-01",
                "email": "gina@gmx.at",
                "status": "active",
                "roles": [{"code": "aluno"}],
            },
        },
        "section": {
            "c-now": {
                "code": "c-now",
                "name": f"Algorithmen – Gruppe 1 ({now_name})",
                "sis_id": "c-now",
                "term_code": now,
                "status": "active",
            },
            "c-next": {
                "code": "c-next",
                "name": f"Datenbanken ({next_name})",
                "sis_id": "c-next",
                "term_code": nxt,
                "status": "active",
            },
            "c-long": {
                "code": "c-long",
                "name": "Projekt (SS 2026)",
                "sis_id": "c-long",
                "term_code": before,
                "status": "active",
            },
            "c-open": {
                "code": "c-open",
                "name": f"Mentoring ({now_name})",
                "sis_id": "c-open",
                "term_code": now,
                "status": "active",
            },
            "lms-L1": {
                "code": "lms-L1",
                "name": "Basic Safety Training",
                "sis_id": "L1",
                "term_code": now,
                "status": "active",
            },
        },
        "studentparent": {},
        "sectionstudent": dict(
            [
                student_link("c-now", "01234567", now),
                student_link("c-now", "geder", now),
                student_link("c-next", "01234568", nxt),
                student_link("c-long", "01234567", before),
                student_link("c-open", "01234568", now),
                student_link("lms-L1", "01234567", now),
                student_link("lms-L1", "01234568", now),  # crew login joined to Bernd by login
            ]
        ),
        "sectionteacher": dict(
            [
                teacher_link("c-now", "INF.101", now),
                teacher_link("c-next", "INF.102", nxt),
                teacher_link("c-long", "INF.103", before),
                teacher_link("c-open", "INF.104", now),
            ]
        ),
    }
    assert expected.unsendable == {
        "co:102": "no code: a CO student without STUDID",
        "studip:u-theo": "a teacher without cpf or e-mail",
        "lms:crew8": "no date of birth",
    }
    assert expected.reached_courses == {"c-now", "c-next", "c-long", "c-open", "c-group"}
    assert set(expected.sections) == {"c-now", "c-next", "c-long", "c-open"}
    assert expected.persons["co:101"].lms.login == "bhuber"


def test_unreached_users_are_not_persons(hand_world: World) -> None:
    hand_world.drop("c-now", "u-gina")
    expected = expected_hub_state(hand_world)
    assert "geder" not in expected.state["user"], "a study group gives no role"
    assert "studip:u-gina" in expected.persons, "but its members are reached"
    hand_world.drop("c-group", "u-gina")
    assert "studip:u-gina" not in expected_hub_state(hand_world).persons


def test_generated_world_projection_is_consistent() -> None:
    world = World(seed=3, students=300, today=date(2026, 11, 23))
    state = expected_hub_state(world).state
    users, sections = state["user"], state["section"]
    for link in state["sectionstudent"].values():
        assert link["student"]["code"] in users
        assert link["section"]["code"] in sections
        assert {"code": "aluno"} in users[link["student"]["code"]]["roles"]
    for link in state["sectionteacher"].values():
        assert {"code": "professor"} in users[link["teacher"]["code"]]["roles"]
        assert link["subject"]["code"] in state["subject"]
    names = [s["name"] for s in state["subject"].values()]
    assert len(names) == len(set(names)), "subject names must be unique per institution"
    section_names = [s["name"] for s in sections.values()]
    assert len(section_names) == len(set(section_names))
    for user in users.values():
        if any(r["code"] != "aluno" for r in user["roles"]):
            assert user.get("cpf") and user.get("email")
