"""The Stud.IP client against every recorded answer of a real Stud.IP 5.5.8 (classic /api.php).

Each success body of a route the client uses is served (``responses``) at its recorded path and
read with the client call that uses it: every record must parse (nothing rejected) and come out
with the recorded values. Each recorded error must raise the error class a sync needs, with a
message that tells the operator what to do. A new recording fails here until it is covered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import responses

from resources.http import RetryPolicy
from resources.studip import (
    CRAWL_ROUTES,
    SEARCH_ROUTE,
    StudipAuthError,
    StudipClient,
    StudipCourse,
    StudipError,
    StudipNotFound,
    StudipNotRoot,
    StudipPage,
    StudIPResource,
    StudipSemester,
    StudipUser,
    collection_values,
    institute_entries,
)
from tests.contract import Recording, recordings

BASE = "https://studip.example/api.php"
CLASSIC = recordings("api")
SUCCESSES = [r for r in CLASSIC if r.status == 200]
ERRORS = [r for r in CLASSIC if r.status != 200]
ID = "[0-9a-f]{32}"


def client(limit: int = 20) -> StudipClient:
    resource = StudIPResource(api_url=BASE, username="root@studip", password="pw", page_size=limit)
    return resource.client(retry_policy=RetryPolicy(attempts=1, backoff_s=0))


def serve(recording: Recording) -> None:
    content_type = recording.content_type
    body = recording.body
    text = json.dumps(body) if "json" in content_type else body
    responses.get(BASE + recording.route_path, body=text, status=recording.status,
                  content_type=content_type)  # fmt: skip


def first_page(pages: Any) -> StudipPage:
    return next(iter(pages))


def items(body: dict[str, Any]) -> list[Any]:
    return collection_values(body["collection"])


# -- success: route template -> (the client call, a check of what it read) ------------------------


def check_discovery(c: StudipClient, r: Recording) -> None:
    assert c.missing_routes((*CRAWL_ROUTES, SEARCH_ROUTE)) == []


def check_user(c: StudipClient, r: Recording) -> None:
    user_id = r.route_path.removeprefix("/user").strip("/") or None
    page = c.user_page(user_id)
    assert page.rejected == []
    (user,) = page.records
    assert isinstance(user, StudipUser)
    assert (user.user_id, user.username, user.email) == (
        r.body["user_id"], r.body["username"], r.body["email"],
    )  # fmt: skip
    assert user.datafield_map == {}, "datafields [] (no Matrikelnummer field in the demo)"


def check_courses(c: StudipClient, r: Recording) -> None:
    user_id = r.route_path.split("/")[2]
    semester = r.params.get("semester")
    page = first_page(c.user_courses(user_id, semester))
    assert page.rejected == [], "group null and null semesters are fine"
    recorded = items(r.body)
    assert [x.course_id for x in page.records] == [x["course_id"] for x in recorded]
    for course, raw in zip(page.records, recorded, strict=True):
        assert course.group is None  # root is no member of any course
        assert course.start_semester == raw["start_semester"]
        end = raw["end_semester"]
        assert course.end_semester_id == (end.split("/")[-1] if end else None)
    assert page.total == r.body["pagination"]["total"]


def check_institutes(c: StudipClient, r: Recording) -> None:
    page = first_page(c.user_institutes(r.route_path.split("/")[2]))
    assert page.rejected == []
    expected = [(rel, i["institute_id"]) for rel, i in institute_entries(r.body["collection"])]
    assert [(rel, i.institute_id) for rel, i in page.records] == expected
    assert page.total == len(expected) == r.body["pagination"]["total"]


def check_members(c: StudipClient, r: Recording) -> None:
    page = first_page(c.course_members(r.route_path.split("/")[2]))
    assert page.rejected == []
    assert [(m.user_id, m.status) for m in page.records] == [
        (x["member"]["id"], x["status"]) for x in items(r.body)
    ]


def check_semesters(c: StudipClient, r: Recording) -> None:
    page = first_page(c.semesters())
    assert page.rejected == []
    assert [(s.id, s.title, s.begin) for s in page.records] == [
        (x["id"], x["title"], x["begin"]) for x in items(r.body)
    ]


def check_settings(c: StudipClient, r: Recording) -> None:
    page = c.settings()
    assert page.rejected == []
    types = dict(page.records)
    assert set(types) == set(r.body["SEM_TYPE"])
    assert types["99"].studygroup and types["99"].class_ == "99"
    assert not any(t.studygroup for key, t in types.items() if key != "99")


def check_search(c: StudipClient, r: Recording) -> None:
    page = first_page(c.search_users(r.params["q"]))
    assert page.rejected == []
    assert [(u.id, u.username) for u in page.records] == [
        (x["id"], x["name"]["username"]) for x in r.body["collection"]
    ]


def check_course(c: StudipClient, r: Recording) -> None:
    """/course/:id: not read by the sync, but the same course record as in a list."""
    course = StudipCourse.model_validate(c.get("/course/:course_id", r.route_path))
    assert course.group is None and course.course_id == r.body["course_id"]


def check_semester(c: StudipClient, r: Recording) -> None:
    semester = StudipSemester.model_validate(c.get("/semester/:semester_id", r.route_path))
    assert semester.id == r.body["id"]


SUCCESS_CHECKS: list[tuple[str, Callable[[StudipClient, Recording], None]]] = [
    ("/discovery", check_discovery),
    ("/user", check_user),
    (f"/user/{ID}", check_user),
    (f"/user/{ID}/courses", check_courses),
    (f"/user/{ID}/institutes", check_institutes),
    (f"/course/{ID}/members", check_members),
    (f"/course/{ID}", check_course),
    ("/semesters", check_semesters),
    (f"/semester/{ID}", check_semester),
    ("/studip/settings", check_settings),
    ("/users", check_search),
]


@pytest.mark.parametrize("recording", SUCCESSES, ids=[r.file for r in SUCCESSES])
@responses.activate
def test_the_client_reads_every_recorded_success(recording: Recording) -> None:
    check = next(
        (check for pattern, check in SUCCESS_CHECKS if re.fullmatch(pattern, recording.route_path)),
        None,
    )
    assert check is not None, f"no client check for {recording.path}: add one"
    serve(recording)
    check(client(int(recording.params.get("limit", 20))), recording)


# -- errors: the class a sync needs and what the message must tell ---------------------------------

NOT_ROOT = (StudipNotRoot, ["must be root", "admin account is not enough"])
LOGIN = (StudipAuthError, ["refused the login", "STUDIP_USERNAME/STUDIP_PASSWORD", "root"])
ERROR_EXPECTATIONS: dict[str, tuple[type[Exception], list[str]]] = {
    "026-error-users-without-q.json": (StudipError, ["/users", "Missing search paramter ?q="]),
    "027-error-no-credentials.json": LOGIN,
    "028-error-wrong-password.json": LOGIN,
    "029-error-unknown-course.json": (StudipNotFound, ["Course not found"]),
    "030-error-unknown-user.json": (StudipNotFound, ["User 00000000000000000000000000000000"]),
    "031-error-unknown-route.json": (StudipError, ["no such route", "STUDIP_API_URL"]),
    "032-error-admin-reads-foreign-courses.json": NOT_ROOT,
    "033-error-dozent-reads-foreign-courses.json": NOT_ROOT,
    "034-error-studygroup-as-non-member.json": NOT_ROOT,
}


def call(c: StudipClient, r: Recording) -> Any:
    """The request as the client makes it (routes it never reads through ``get``)."""
    path = r.route_path
    if re.fullmatch(f"/user/{ID}/courses", path):
        return list(c.user_courses(path.split("/")[2]))
    if path == "/users":
        return list(c.search_users("x"))
    if path == "/user":
        return c.user_page()
    route = re.sub(f"/user/{ID}", "/user/:user_id", re.sub(f"/course/{ID}", "/course/:course_id",
                                                           path))  # fmt: skip
    return c.get(route, path)


@pytest.mark.parametrize("recording", ERRORS, ids=[r.file for r in ERRORS])
@responses.activate
def test_the_client_classifies_every_recorded_error(recording: Recording) -> None:
    kind, fragments = ERROR_EXPECTATIONS[recording.file]
    serve(recording)
    with pytest.raises(kind) as error:
        call(client(), recording)
    assert error.value.status == recording.status  # type: ignore[attr-defined]
    for fragment in fragments:
        assert fragment in str(error.value)
    if kind is StudipAuthError:
        assert not isinstance(error.value, StudipNotRoot), "a refused login is no rights issue"


@responses.activate
def test_an_unknown_user_is_data_for_the_crawl() -> None:
    (recording,) = [r for r in ERRORS if r.file.startswith("030-")]
    serve(recording)
    page = client().user_page(recording.route_path.split("/")[2])
    assert (page.found, page.records) == (False, [])
