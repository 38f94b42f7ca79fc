"""The world's expected HUB state: what a correct hubsync run must leave in the sandbox HUB.

This is the mapping of ``assets/graph/`` (identities, HUB objects) written a second time, in
plain Python over the world's records, so end-to-end tests have an oracle that does not share
code with the pipeline. It sees exactly what hubsync's syncs can see:


* **CO**: every student record (active and inactive) with studies and applications.
* **Stud.IP**: what the crawl reaches: starting from the API account and the seed users, each
  user's courses that *run* in a selected semester (default: current and next): from their start
  to their end semester, and unlimited courses (no start semester, study groups among them) for
  every semester; each course's members, until closure.
* **LMS**: every registration (a full sync reads from the beginning of time).

Identity resolution (the default rules, in this order):

1. every CO student is a person;
2. each reached Stud.IP user matches the person whose CO ``STUDID`` equals its
   ``Matrikelnummer`` datafield, else whose CO university e-mail equals its e-mail
   (case-insensitive): the first rule with candidates decides, the smallest person key wins;
3. each LMS learner with a registration matches the person whose CO ``STUDID`` equals its
   ``StudentId`` profile field, else who has its e-mail in CO or in the matched Stud.IP user
   (case-insensitive), else whose matched Stud.IP username equals its login.

When several records of one system match the same person (a conflict), the one matched by the
earliest rule of the list above joins it (a matriculation number beats an e-mail, an e-mail a
login), among records matched by the same rule the one with the smallest id (Stud.IP
``user_id``, LMS login); the others stay persons of their own. Unmatched records are persons of
their own too. (The world has no history: persons the pipeline holds back because a conflict
would change their existing links are the end-to-end tests' business, not this projection's.)

Person keys are ``co:<STPERSONNR>``, ``studip:<user_id>``, ``lms:<login>``.

HUB objects (dates ``YYYY-MM-DD``; optional fields are left out when the source has no value):

* ``term`` per Stud.IP semester: ``code`` ``YYYYS``/``YYYYW`` (year the semester begins),
  ``name`` = title, ``start_date``/``end_date`` = local dates of ``begin``/``end``.
* ``subject`` per course number of a reached course (the course id when it has no number) and
  per LMS course with a registration (``CourseCode``): ``code``, ``name`` (course title, of
  the smallest course id when several share a number / ``CourseName``), ``status`` ``active``.
* ``section`` per reached course that is no study group (SEM_CLASS with studygroup_mode 1: a
  student founds it and is its ``dozent``): ``code`` = course id, ``name`` = title,
  `` – subtitle`` when there is one, `` (<semester title>)``; ``sis_id`` = course id;
  ``term_code``: of its start semester (selected or not; every semester is a term), for an
  unlimited course of the earliest selected semester; ``status`` ``active``. Per LMS course
  with a registration: ``code`` =
  ``lms-<CourseId>``, ``name`` = ``CourseName``, ``sis_id`` = ``CourseId``, ``term_code`` of the
  current semester, ``status`` ``active``.
* ``user`` per person with at least one role: ``aluno`` when it is a CO student, a Stud.IP
  ``autor``/``user`` member of a section's course, or an LMS learner with a registration;
  ``professor`` when it is a ``dozent``/``tutor`` member of a section's course. ``code`` = CO
  ``STUDID`` for CO students, else the Stud.IP username, else the LMS login; ``sis_id`` =
  STPERSONNR / Stud.IP user id / LMS login; ``name`` "given family"; ``dob`` from CO
  ``BIRTHDATE`` else the Stud.IP ``Geburtsdatum`` datafield; ``gender`` from CO (M→M, W→F,
  else O); ``email`` CO university e-mail, else Stud.IP e-mail, else LMS e-mail; ``cpf`` from the
  Stud.IP ``CPF`` datafield; ``status`` ``arquived`` for an exmatriculated CO student, else
  ``active``; ``roles`` ``[{"code": "aluno"}, {"code": "professor"}]`` in that order.
  A person the HUB would reject is **not sent** and listed in ``unsendable`` with the reason:
  no code (an applicant without STUDID), no ``dob``, or a non-student role without ``cpf`` or
  ``email``.
* ``sectionstudent`` per ``autor``/``user`` membership of a section's course and per LMS
  registration, when the person is sendable: ``section`` / ``student`` codes, ``term_code`` of
  the section, ``sis_id`` = first 20 hex digits of
  ``sha1("sectionstudent|<section>|<student>|<term>")``.
* ``sectionteacher`` per ``dozent`` membership of a section's course with a sendable person:
  ``section``, ``teacher``, ``subject`` codes, ``term_code``, ``sis_id`` = 20 hex digits of
  ``sha1("sectionteacher|<section>|<teacher>|<subject>|<term>")``.
* ``studentparent``: no source has guardians, so always empty.

The result has the format of the sandbox HUB's ``/_sandbox/state``: per type, objects keyed by
their business key (links by ``|``-joined key fields).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.world import (
    BIRTHDATE_FIELD,
    CPF_FIELD,
    LMS_STUDENT_ID_FIELD,
    LOCAL_ZONE,
    SEED_DOZENT_USERNAME,
    SEM_TYPES,
    STUDENT_ID_FIELD,
    STUDYGROUP_CLASSES,
    CoStudent,
    LmsLearner,
    StudipSemester,
    StudipUser,
    World,
)

HubState = dict[str, dict[str, dict[str, Any]]]
OBJECT_TYPES = (
    "term",
    "subject",
    "user",
    "section",
    "studentparent",
    "sectionstudent",
    "sectionteacher",
)
STUDENT_STATUSES = ("autor", "user")
TEACHER_STATUSES = ("dozent",)
STAFF_STATUSES = ("dozent", "tutor")


def link_sis_id(kind: str, *keys: str) -> str:
    """The deterministic ``sis_id`` of a link: 20 hex digits of sha1 over its key fields."""
    return hashlib.sha1("|".join((kind, *keys)).encode()).hexdigest()[:20]


def local_date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, LOCAL_ZONE).date().isoformat()


@dataclass
class Person:
    key: str
    co: CoStudent | None = None
    studip: StudipUser | None = None
    lms: LmsLearner | None = None
    roles: set[str] = field(default_factory=set)


@dataclass
class Expected:
    """The expected HUB state plus what was left out and why."""

    state: HubState
    unsendable: dict[str, str]
    persons: dict[str, Person]
    reached_users: set[str]
    reached_courses: set[str]
    sections: dict[str, StudipSemester]  # course id -> the semester of its HUB term


def crawl_studip(
    world: World, semester_ids: Iterable[str], seeds: Iterable[str]
) -> tuple[set[str], set[str]]:
    """Users and courses a closure crawl reaches from the seed user ids."""
    wanted = set(semester_ids)
    users: set[str] = set()
    courses: set[str] = set()
    pending = [u for u in seeds if u in world.studip_users]
    while pending:
        user_id = pending.pop()
        if user_id in users:
            continue
        users.add(user_id)
        for course_id in world.user_courses.get(user_id, ()):
            course = world.studip_courses[course_id]
            if course_id in courses or not any(world.course_runs_in(course, s) for s in wanted):
                continue
            courses.add(course_id)
            pending.extend(m for m in world.memberships[course_id] if m not in users)
    return users, courses


def default_semester_ids(world: World) -> list[str]:
    return [world.current_semester.semester_id, world.next_semester.semester_id]


def default_seed_ids(world: World) -> list[str]:
    seed = next(
        u.user_id for u in world.studip_users.values() if u.username == SEED_DOZENT_USERNAME
    )
    return [world.api_account.user_id, seed]


def expected_hub_state(
    world: World,
    *,
    semester_ids: Iterable[str] | None = None,
    seed_user_ids: Iterable[str] | None = None,
) -> Expected:
    """Project the world through the mapping (see the module docstring)."""
    with world.lock:
        semesters = list(semester_ids or default_semester_ids(world))
        users, courses = crawl_studip(world, semesters, seed_user_ids or default_seed_ids(world))
        persons = _resolve_identities(world, users)
        sections = _section_terms(world, courses, semesters)
        _assign_roles(world, persons, set(sections))
        state: HubState = {kind: {} for kind in OBJECT_TYPES}
        unsendable: dict[str, str] = {}
        codes = _add_users(world, persons, state, unsendable)
        _add_terms(world, state)
        _add_courses(world, persons, sections, codes, state)
        _add_lms(world, persons, codes, state)
        return Expected(state, unsendable, persons, users, courses, sections)


def _section_terms(
    world: World, courses: set[str], semester_ids: list[str]
) -> dict[str, StudipSemester]:
    """The reached courses that become sections (not study groups), each with the semester of
    its term: its start semester, or for an unlimited one the earliest selected semester."""
    earliest = min((world.studip_semesters[s] for s in semester_ids), key=lambda s: s.begin)
    sections = {}
    for course_id in courses:
        course = world.studip_courses[course_id]
        if SEM_TYPES[course.sem_type][1] in STUDYGROUP_CLASSES:
            continue
        start = course.start_semester
        sections[course_id] = world.studip_semesters[start] if start else earliest
    return sections


# -- identities ------------------------------------------------------------------------------


def _registered_learners(world: World) -> list[LmsLearner]:
    logins = {r.login for r in world.lms_registrations.values()}
    return [world.lms_learners[login] for login in sorted(logins)]


def _resolve_identities(world: World, reached_users: set[str]) -> dict[str, Person]:
    persons: dict[str, Person] = {}
    by_studid: dict[str, str] = {}
    by_email: dict[str, set[str]] = defaultdict(set)
    for student in sorted(world.co_students.values(), key=lambda s: s.stpersonnr):
        key = f"co:{student.stpersonnr}"
        persons[key] = Person(key, co=student)
        if student.studid:
            by_studid[student.studid] = key
        if student.email_tu:
            by_email[student.email_tu.lower()].add(key)

    users = [world.studip_users[u] for u in sorted(reached_users)]
    choices = {
        u.user_id: _first_rule(
            [by_studid[v]] if (v := u.datafields.get(STUDENT_ID_FIELD)) in by_studid else [],
            sorted(by_email.get(u.email.lower(), ())),
        )
        for u in users
    }
    joined = _winners(choices)
    for user in users:
        key = joined.get(user.user_id) or f"studip:{user.user_id}"
        persons.setdefault(key, Person(key)).studip = user
        by_email[user.email.lower()].add(key)

    by_login = {p.studip.username: p.key for p in persons.values() if p.studip}
    learners = _registered_learners(world)
    choices = {
        lr.login: _first_rule(
            [by_studid[v]] if (v := lr.profile.get(LMS_STUDENT_ID_FIELD)) in by_studid else [],
            sorted(by_email.get(lr.email.lower(), ())),
            [by_login[lr.login]] if lr.login in by_login else [],
        )
        for lr in learners
    }
    joined = _winners(choices)
    for learner in learners:
        key = joined.get(learner.login) or f"lms:{learner.login}"
        persons.setdefault(key, Person(key)).lms = learner
    return persons


Claim = tuple[int, str]  # (the rule's place in the order: 0 is the strongest, person key)


def _first_rule(*rules: list[str]) -> Claim | None:
    """The smallest candidate of the first rule that has any, with that rule's place."""
    return next(
        ((strength, min(candidates)) for strength, candidates in enumerate(rules) if candidates),
        None,
    )


def _winners(claims: dict[str, Claim | None]) -> dict[str, str]:
    """record → the person it joins: per claimed person, the record claiming it by the
    strongest rule, the smallest such record on a tie."""
    best: dict[str, tuple[int, str]] = {}
    for record, claim in claims.items():
        if claim is None:
            continue
        strength, person = claim
        best[person] = min(best.get(person, (strength, record)), (strength, record))
    return {record: person for person, (_, record) in best.items()}


def _assign_roles(world: World, persons: dict[str, Person], courses: set[str]) -> None:
    person_of_user = {p.studip.user_id: p for p in persons.values() if p.studip}
    person_of_login = {p.lms.login: p for p in persons.values() if p.lms}
    for person in persons.values():
        if person.co:
            person.roles.add("aluno")
    for course_id in courses:
        for user_id, status in world.memberships[course_id].items():
            if status in STUDENT_STATUSES:
                person_of_user[user_id].roles.add("aluno")
            elif status in STAFF_STATUSES:
                person_of_user[user_id].roles.add("professor")
    for registration in world.lms_registrations.values():
        person_of_login[registration.login].roles.add("aluno")


# -- objects ---------------------------------------------------------------------------------


def _add_users(
    world: World, persons: dict[str, Person], state: HubState, unsendable: dict[str, str]
) -> dict[str, str]:
    """Add the sendable users; return person key → user code for them."""
    codes: dict[str, str] = {}
    for key, person in sorted(persons.items()):
        if not person.roles:
            continue
        user, reason = _user_object(world, person)
        if user is None:
            unsendable[key] = reason
            continue
        codes[key] = user["code"]
        state["user"][user["code"]] = user
    return codes


def _user_object(world: World, person: Person) -> tuple[dict[str, Any] | None, str]:
    co, studip, lms = person.co, person.studip, person.lms
    human = world.persons[(co or studip or lms).pid]  # type: ignore[union-attr]
    if co:
        code, sis_id = co.studid, str(co.stpersonnr)
    elif studip:
        code, sis_id = studip.username, studip.user_id
    else:
        code, sis_id = lms.login, lms.login  # type: ignore[union-attr]
    if not code:
        return None, "no code: a CO student without STUDID"
    dob = (
        human.birth.isoformat()
        if co
        else (studip.datafields.get(BIRTHDATE_FIELD) if studip else None)
    )
    if not dob:
        return None, "no date of birth"
    email = (
        (co.email_tu if co else None)
        or (studip.email if studip else None)
        or (lms.email if lms else None)
    )
    cpf = studip.datafields.get(CPF_FIELD) if studip else None
    roles = [r for r in ("aluno", "professor") if r in person.roles]
    if any(r != "aluno" for r in roles) and not (cpf and email):
        return None, "a teacher without cpf or e-mail"
    user: dict[str, Any] = {
        "code": code,
        "sis_id": sis_id,
        "name": f"{human.given} {human.family}",
        "dob": dob,
    }
    if co:
        user["gender"] = {"M": "M", "W": "F"}.get(human.gender, "O")
    if email:
        user["email"] = email
    if cpf:
        user["cpf"] = cpf
    user["status"] = "arquived" if co and not co.active else "active"
    user["roles"] = [{"code": role} for role in roles]
    return user, ""


def _add_terms(world: World, state: HubState) -> None:
    for semester in world.studip_semesters.values():
        state["term"][semester.code] = {
            "code": semester.code,
            "name": semester.title,
            "start_date": local_date(semester.begin),
            "end_date": local_date(semester.end),
        }


def _section_name(title: str, subtitle: str, semester: StudipSemester) -> str:
    return f"{title}{f' – {subtitle}' if subtitle else ''} ({semester.title})"


def _add_courses(
    world: World,
    persons: dict[str, Person],
    sections: dict[str, StudipSemester],
    codes: dict[str, str],
    state: HubState,
) -> None:
    code_of_user = {
        p.studip.user_id: codes[k] for k, p in persons.items() if p.studip and k in codes
    }
    for course_id, semester in sorted(sections.items()):
        course = world.studip_courses[course_id]
        subject = course.number or course.course_id
        state["subject"].setdefault(
            subject, {"code": subject, "name": course.title, "status": "active"}
        )
        state["section"][course_id] = {
            "code": course_id,
            "name": _section_name(course.title, course.subtitle, semester),
            "sis_id": course_id,
            "term_code": semester.code,
            "status": "active",
        }
        for user_id, status in world.memberships[course_id].items():
            user_code = code_of_user.get(user_id)
            if user_code is None:
                continue
            if status in STUDENT_STATUSES:
                _add_section_student(state, course_id, user_code, semester.code)
            elif status in TEACHER_STATUSES:
                keys = (course_id, user_code, subject, semester.code)
                state["sectionteacher"]["|".join(keys)] = {
                    "sis_id": link_sis_id("sectionteacher", *keys),
                    "section": {"code": course_id},
                    "teacher": {"code": user_code},
                    "subject": {"code": subject},
                    "term_code": semester.code,
                }


def _add_section_student(state: HubState, section: str, student: str, term: str) -> None:
    keys = (section, student, term)
    state["sectionstudent"]["|".join(keys)] = {
        "sis_id": link_sis_id("sectionstudent", *keys),
        "section": {"code": section},
        "student": {"code": student},
        "term_code": term,
    }


def _add_lms(
    world: World, persons: dict[str, Person], codes: dict[str, str], state: HubState
) -> None:
    term = world.current_semester.code
    code_of_login = {p.lms.login: codes[k] for k, p in persons.items() if p.lms and k in codes}
    for registration in sorted(world.lms_registrations.values(), key=lambda r: r.registration_id):
        course = world.lms_courses[registration.course_id]
        section = f"lms-{course.course_id}"
        state["subject"][course.code] = {
            "code": course.code,
            "name": course.name,
            "status": "active",
        }
        state["section"][section] = {
            "code": section,
            "name": course.name,
            "sis_id": course.course_id,
            "term_code": term,
            "status": "active",
        }
        student = code_of_login.get(registration.login)
        if student is not None:
            _add_section_student(state, section, student, term)
