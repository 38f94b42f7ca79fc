"""The sandbox Stud.IP REST API over real HTTP: shapes, paging, auth, errors, quirks, faults."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import requests
from requests_oauthlib import OAuth1

from sandbox.studip import ROUTE_CATALOGUE, StudipServer
from sandbox.world import SEM_TYPES, World

AUTH = ("hubsync-api", "sandbox-studip-password")
JSON_TYPE = "application/json;charset=utf-8"
OAUTH_KEYS = (
    "hubsync-consumer",
    "sandbox-consumer-secret",
    "hubsync-token",
    "sandbox-token-secret",
)
USER_KEYS = {
    "user_id",
    "username",
    "name",
    "perms",
    "email",
    "avatar_small",
    "avatar_medium",
    "avatar_normal",
    "avatar_original",
    "phone",
    "homepage",
    "privadr",
    "datafields",
}
COURSE_KEYS = {
    "course_id",
    "number",
    "title",
    "subtitle",
    "type",
    "description",
    "location",
    "lecturers",
    "members",
    "start_semester",
    "end_semester",
    "modules",
    "group",
}
MINI_USER_KEYS = {
    "id",
    "href",
    "name",
    "avatar_small",
    "avatar_medium",
    "avatar_normal",
    "avatar_original",
}
NAME_KEYS = {"username", "formatted", "family", "given", "prefix", "suffix"}
SEMESTER_KEYS = {
    "id",
    "title",
    "token",
    "begin",
    "end",
    "seminars_begin",
    "seminars_end",
    "visible",
}
INSTITUTE_KEYS = {
    "institute_id",
    "name",
    "perms",
    "consultation",
    "room",
    "phone",
    "fax",
    "street",
    "city",
    "faculty_name",
    "faculty_street",
    "faculty_city",
}


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=7, students=80, today=date(2026, 11, 23))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[StudipServer]:
    studip = StudipServer(world)
    studip.start()
    yield studip
    studip.stop()


@pytest.fixture
def studip(server: StudipServer) -> Iterator[StudipServer]:
    """The shared server, with faults and deactivated routes reset after the test."""
    yield server
    requests.post(f"{server.origin}/_sandbox/faults", json={}, timeout=5)
    server.set_disabled_routes(())


@pytest.fixture
def non_root(world: World) -> Iterator[StudipServer]:
    studip = StudipServer(world, api_account_is_root=False)
    studip.start()
    yield studip
    studip.stop()


def get(server: StudipServer, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("auth", AUTH)
    return requests.get(server.base_url + path, timeout=5, **kwargs)


def series_id(world: World) -> str:
    return world.lecture_series[world.current_semester.semester_id]


def studygroup_id(world: World) -> str:
    return next(c.course_id for c in world.studip_courses.values() if c.sem_type == "99")


def student_with_institute(world: World) -> str:
    return next(
        u.user_id
        for u in world.studip_users.values()
        if u.perms == "autor" and u.institute_ids and u.datafields
    )


def collection_items(payload: dict[str, Any]) -> list[Any]:
    collection = payload["collection"]
    assert isinstance(collection, dict | list)
    return list(collection.values()) if isinstance(collection, dict) else collection


# --------------------------------------------------------------------------------------------
# Authentication


def test_basic_auth_answers_the_api_account(studip: StudipServer, world: World) -> None:
    response = get(studip, "/user")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.json()["user_id"] == world.api_account.user_id
    assert response.json()["perms"] == "root"


@pytest.mark.parametrize(
    "auth", [("hubsync-api", "wrong"), ("someone", "sandbox-studip-password"), None]
)
def test_wrong_or_missing_credentials_get_the_html_401(studip: StudipServer, auth: Any) -> None:
    response = requests.get(studip.base_url + "/user", auth=auth, timeout=5)
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text == "HTTP/1.1 401 Unauthorized (no consumer)"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="sandbox-installation"'


def test_malformed_basic_header_is_no_consumer(studip: StudipServer) -> None:
    response = get(studip, "/user", auth=None, headers={"Authorization": "Basic !!!"})
    assert response.status_code == 401


@pytest.mark.parametrize("signature_type", ["auth_header", "query"])
def test_oauth1_signed_requests_succeed(
    studip: StudipServer, world: World, signature_type: str
) -> None:
    auth = OAuth1(*OAUTH_KEYS, signature_type=signature_type)
    response = get(studip, f"/course/{series_id(world)}/members?status=autor&limit=3", auth=auth)
    assert response.status_code == 200, response.text
    assert len(response.json()["collection"]) == 3


def test_oauth1_body_signed_post_with_method_override(studip: StudipServer) -> None:
    auth = OAuth1(*OAUTH_KEYS, signature_type="body")
    response = requests.post(
        studip.base_url + "/semesters",
        data={"limit": "1"},
        headers={
            "X-HTTP-Method-Override": "GET",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        auth=auth,
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert response.json()["pagination"]["total"] > 0


def test_oauth1_wrong_consumer_secret_is_a_500_json(studip: StudipServer) -> None:
    key, _, token, token_secret = OAUTH_KEYS
    response = get(studip, "/user", auth=OAuth1(key, "not-the-secret", token, token_secret))
    assert response.status_code == 500
    assert response.headers["Content-Type"] == JSON_TYPE
    body = response.json()
    assert body["status"] == 500
    assert body["message"].startswith("Verification of signature failed (signature base string")
    assert "GET&http%3A%2F%2F127.0.0.1" in body["message"]


def test_oauth1_wrong_token_is_a_500_and_unknown_consumer_a_401(studip: StudipServer) -> None:
    key, secret, _, token_secret = OAUTH_KEYS
    wrong_token = get(studip, "/user", auth=OAuth1(key, secret, "other-token", token_secret))
    assert wrong_token.status_code == 500
    assert "combination does not exist" in wrong_token.json()["message"]
    unknown = get(studip, "/user", auth=OAuth1("stranger", secret, OAUTH_KEYS[2], token_secret))
    assert unknown.status_code == 401
    assert unknown.text == "HTTP/1.1 401 Unauthorized (no consumer)"


def test_oauth1_other_signature_method_is_rejected(studip: StudipServer) -> None:
    auth = OAuth1(*OAUTH_KEYS, signature_method="PLAINTEXT")
    response = get(studip, "/user", auth=auth)
    assert response.status_code == 500
    assert response.json()["message"] == 'Unsupported signature method "PLAINTEXT"'


def test_semesters_answer_without_auth(studip: StudipServer, world: World) -> None:
    response = get(studip, "/semesters", auth=None)
    assert response.status_code == 200
    assert len(response.json()["collection"]) == len(world.studip_semesters)
    one = get(studip, f"/semester/{world.current_semester.semester_id}", auth=None)
    assert one.status_code == 200
    assert one.json()["title"] == world.current_semester.title


# --------------------------------------------------------------------------------------------
# Shapes


def test_user_shape(studip: StudipServer, world: World) -> None:
    user = world.studip_users[student_with_institute(world)]
    person = world.persons[user.pid]
    body = get(studip, f"/user/{user.user_id}").json()
    assert set(body) == USER_KEYS
    assert set(body["name"]) == NAME_KEYS
    assert body["name"]["formatted"] == f"{person.given} {person.family}"
    assert (body["name"]["given"], body["name"]["family"]) == (person.given, person.family)
    assert (body["username"], body["email"], body["perms"]) == (user.username, user.email, "autor")
    assert body["avatar_small"].startswith(studip.origin + "/")
    assert all(
        body[f"avatar_{size}"].startswith("http://")
        for size in ("small", "medium", "normal", "original")
    )
    assert body["datafields"] == [
        {
            "id": hashlib.md5(name.encode()).hexdigest(),
            "name": name,
            "type": "textline",
            "value": value,
        }
        for name, value in user.datafields.items()
    ]


def test_api_account_name_and_empty_datafields(studip: StudipServer) -> None:
    body = get(studip, "/user").json()
    assert body["name"]["formatted"] == "Hubsync API"
    assert body["datafields"] == []


def test_course_shape(studip: StudipServer, world: World) -> None:
    course = world.studip_courses[series_id(world)]
    body = get(studip, f"/course/{course.course_id}").json()
    assert set(body) == COURSE_KEYS
    assert body["type"] == course.sem_type and isinstance(body["type"], str)
    assert body["group"] is None, "the API account's colour group: it is no member"
    assert body["start_semester"] == f"/api.php/semester/{course.start_semester}"
    assert body["end_semester"] == f"/api.php/semester/{course.end_semester}"
    dozent_key = f"/api.php/user/{world.seed_dozent_id}"
    assert list(body["lecturers"]) == [dozent_key]
    assert set(body["lecturers"][dozent_key]) == MINI_USER_KEYS
    assert body["lecturers"][dozent_key]["href"] == dozent_key
    statuses = list(world.memberships[course.course_id].values())
    for status in ("user", "autor", "tutor", "dozent"):
        assert body["members"][status] == (
            f"/api.php/course/{course.course_id}/members?status={status}"
        )
        assert body["members"][f"{status}_count"] == statuses.count(status)
    assert body["modules"] == {
        "forum": f"/api.php/course/{course.course_id}/forum_categories",
        "documents": f"/api.php/course/{course.course_id}/top_folder",
        "wiki": f"/api.php/course/{course.course_id}/wiki",
    }


def test_study_group_has_null_semesters(studip: StudipServer, world: World) -> None:
    body = get(studip, f"/course/{studygroup_id(world)}").json()
    assert body["type"] == "99"
    assert body["start_semester"] is None and body["end_semester"] is None
    assert body["group"] is None
    assert set(body["modules"]) == {"documents", "wiki"}, "no forum in a study group"


def test_group_is_the_api_accounts_colour_group_where_it_is_a_member(
    studip: StudipServer, world: World
) -> None:
    course_id, account = series_id(world), world.api_account.user_id
    with world.lock:
        world.enrol(course_id, account, "autor")
    try:
        assert get(studip, f"/course/{course_id}").json()["group"] == 5
    finally:
        with world.lock:
            world.drop(course_id, account)
    assert get(studip, f"/course/{course_id}").json()["group"] is None


def test_course_without_lecturers_serialises_them_as_a_list(
    studip: StudipServer, world: World
) -> None:
    with world.lock:
        course = world.studip_courses[series_id(world)]
        dozent = world.seed_dozent_id
        world.drop(course.course_id, dozent)
    try:
        body = get(studip, f"/course/{course.course_id}").json()
        assert body["lecturers"] == []
        assert body["members"]["dozent_count"] == 0
    finally:
        with world.lock:
            world.enrol(course.course_id, dozent, "dozent")
    assert get(studip, f"/course/{course.course_id}").json()["members"]["dozent_count"] == 1


def test_user_courses_shape_and_order(studip: StudipServer, world: World) -> None:
    user_id = world.seed_dozent_id
    body = get(studip, f"/user/{user_id}/courses").json()
    ids = sorted(world.user_courses[user_id])
    assert body["pagination"] == {"total": len(ids), "offset": 0, "limit": 20}
    assert sorted(body["collection"]) == sorted(f"/api.php/course/{cid}" for cid in ids)
    for key, course in body["collection"].items():
        assert key == f"/api.php/course/{course['course_id']}"
        assert set(course) == COURSE_KEYS
    begins = {s.semester_id: s.begin for s in world.studip_semesters.values()}
    order = [
        begins.get(world.studip_courses[c["course_id"]].start_semester or "", 10**12)
        for c in body["collection"].values()
    ]
    assert order == sorted(order)
    assert list(body["collection"].values())[-1]["type"] == "99"  # no semester: last


def test_members_shape_and_order(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    body = get(studip, f"/course/{course_id}/members", params={"limit": 100}).json()
    members = world.memberships[course_id]
    assert body["pagination"]["total"] == len(members)
    assert "links" not in body["pagination"]
    rank = {"dozent": 0, "tutor": 1, "autor": 2, "user": 3}
    keys = []
    for key, entry in body["collection"].items():
        assert set(entry) == {"member", "status"}
        assert set(entry["member"]) == MINI_USER_KEYS
        assert key == entry["member"]["href"] == f"/api.php/user/{entry['member']['id']}"
        assert entry["status"] == members[entry["member"]["id"]]
        keys.append((rank[entry["status"]], entry["member"]["name"]["username"]))
    assert keys == sorted(keys)
    assert keys[0][0] == 0


def test_semesters_shape(studip: StudipServer, world: World) -> None:
    body = get(studip, "/semesters").json()
    expected = [s.semester_id for s in world.semesters_in_order]
    assert list(body["collection"]) == [f"/api.php/semester/{sid}" for sid in expected]
    assert body["pagination"] == {"total": len(expected), "offset": 0, "limit": len(expected)}
    for semester in body["collection"].values():
        assert set(semester) == SEMESTER_KEYS
        assert semester["token"] == "" and semester["visible"] == 1
        assert all(
            isinstance(semester[k], int) for k in ("begin", "end", "seminars_begin", "seminars_end")
        )
    one = get(studip, f"/semester/{expected[0]}").json()
    assert one == body["collection"][f"/api.php/semester/{expected[0]}"]


def test_institutes_work_for_staff_study_for_students(studip: StudipServer, world: World) -> None:
    staff = get(studip, f"/user/{world.seed_dozent_id}/institutes").json()
    assert staff["pagination"] == {"total": 1, "offset": 0, "limit": 20}
    assert staff["collection"]["study"] == []
    (institute,) = staff["collection"]["work"]
    assert set(institute) == INSTITUTE_KEYS
    assert institute["perms"] == "dozent"
    expected = world.studip_institutes[world.studip_users[world.seed_dozent_id].institute_ids[0]]
    assert (institute["name"], institute["faculty_name"]) == (expected.name, expected.faculty_name)
    student = get(studip, f"/user/{student_with_institute(world)}/institutes").json()
    assert student["collection"]["work"] == []
    assert [i["perms"] for i in student["collection"]["study"]] == ["user"]
    assert student["pagination"]["total"] == 1
    nobody = get(studip, "/user/" + world.api_account.user_id + "/institutes").json()
    assert nobody["collection"] == {"work": [], "study": []}
    assert nobody["pagination"]["total"] == 0


def test_settings_carry_the_type_tables(studip: StudipServer) -> None:
    body = get(studip, "/studip/settings").json()
    assert body["SEM_TYPE"] == {
        key: {"name": name, "class": cls} for key, (name, cls) in SEM_TYPES.items()
    }
    assert body["SEM_CLASS"]["1"]["name"] == "Lehre"
    assert body["INST_TYPE"]["7"] == {"name": "Fakultät"}
    assert set(body["TERMIN_TYP"]["1"]) == {"name", "sitzung"}
    assert body["SEM_TYPE"]["99"]["class"] == "99"
    assert body["SEM_CLASS"]["99"]["studygroup_mode"] == "1"
    assert body["SEM_CLASS"]["1"]["studygroup_mode"] == "0"


def test_discovery_is_a_flat_route_map(studip: StudipServer) -> None:
    body = get(studip, "/discovery").json()
    assert len(body) == len(ROUTE_CATALOGUE) > 60
    for route in (
        "/user",
        "/user/:user_id/courses",
        "/course/:course_id/members",
        "/semesters",
        "/studip/settings",
        "/users",
        "/user/:user_id/institutes",
    ):
        assert "get" in body[route]
    assert any(description is None for methods in body.values() for description in methods.values())
    assert body["/user/:user_id"]["delete"] == "deleteUser - deletes a user"


def test_user_search_is_a_collection_of_short_records(studip: StudipServer, world: World) -> None:
    dozent = world.studip_users[world.seed_dozent_id]
    body = get(studip, "/users", params={"q": "KOORDINATION"}).json()
    assert isinstance(body["collection"], list)
    assert [u["id"] for u in body["collection"]] == [dozent.user_id]
    assert set(body["collection"][0]) == MINI_USER_KEYS, "no perms, e-mail or datafields"
    assert body["pagination"] == {"total": 1, "offset": 0, "limit": 20}
    family = world.persons[dozent.pid].family
    by_name = get(studip, "/users", params={"q": family.lower(), "limit": 500}).json()
    hits = by_name["collection"]
    assert dozent.user_id in {u["id"] for u in hits}
    assert [u["name"]["username"] for u in hits] == sorted(u["name"]["username"] for u in hits)
    none = get(studip, "/users", params={"q": "zz-nobody-zz"}).json()
    assert none == {"collection": [], "pagination": {"total": 0, "offset": 0, "limit": 20}}


# --------------------------------------------------------------------------------------------
# Paging


def test_reported_offset_is_rounded_but_data_is_sliced_at_the_raw_offset(
    studip: StudipServer, world: World
) -> None:
    course_id = series_id(world)
    everyone = list(
        get(studip, f"/course/{course_id}/members", params={"limit": 100}).json()["collection"]
    )
    body = get(studip, f"/course/{course_id}/members", params={"offset": 5}).json()
    assert body["pagination"]["offset"] == 0
    assert body["pagination"]["limit"] == 20
    assert list(body["collection"]) == everyone[5:25]
    assert list(body["collection"])[0] == everyone[5]


def test_links_only_when_total_exceeds_limit(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    total = len(world.memberships[course_id])
    exact = get(studip, f"/course/{course_id}/members", params={"limit": total}).json()
    assert "links" not in exact["pagination"]
    paged = get(studip, f"/course/{course_id}/members", params={"limit": total - 1}).json()
    assert set(paged["pagination"]["links"]) == {"first", "previous", "next", "last"}


def test_links_previous_on_first_page_and_next_clamped_on_last(
    studip: StudipServer, world: World
) -> None:
    course_id = series_id(world)
    total = len(world.memberships[course_id])
    base = f"/api.php/course/{course_id}/members"
    first = get(studip, f"/course/{course_id}/members", params={"limit": 5}).json()
    links = first["pagination"]["links"]
    last_offset = (total - 1) // 5 * 5
    assert links["first"] == links["previous"] == f"{base}?offset=0&limit=5"
    assert links["next"] == f"{base}?offset=5&limit=5"
    assert links["last"] == f"{base}?offset={last_offset}&limit=5"
    last = get(
        studip, f"/course/{course_id}/members", params={"offset": last_offset, "limit": 5}
    ).json()
    assert last["pagination"]["offset"] == last_offset
    assert last["pagination"]["links"]["next"] == last["pagination"]["links"]["last"]
    assert last["pagination"]["links"]["previous"] == f"{base}?offset={last_offset - 5}&limit=5"


def test_links_carry_the_filter(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    body = get(
        studip, f"/course/{course_id}/members", params={"status": "autor", "limit": 2}
    ).json()
    assert body["pagination"]["links"]["next"] == (
        f"/api.php/course/{course_id}/members?status=autor&offset=2&limit=2"
    )


def test_empty_page_is_a_json_list(studip: StudipServer, world: World) -> None:
    response = get(studip, f"/user/{world.seed_dozent_id}/courses", params={"offset": 500})
    assert '"collection":[]' in response.text
    assert response.json()["pagination"]["total"] == len(world.user_courses[world.seed_dozent_id])
    own = get(studip, f"/user/{world.api_account.user_id}/courses").json()
    assert own == {"collection": [], "pagination": {"total": 0, "offset": 0, "limit": 20}}


def test_iterating_by_offset_visits_every_member_once(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    seen: list[str] = []
    offset = 0
    while True:
        body = get(
            studip, f"/course/{course_id}/members", params={"offset": offset, "limit": 3}
        ).json()
        items = collection_items(body)
        seen.extend(entry["member"]["id"] for entry in items)
        if offset + len(items) >= body["pagination"]["total"] or not items:
            break
        offset += len(items)
    assert len(seen) == len(set(seen)) == len(world.memberships[course_id])


def test_semesters_page_like_upstream(studip: StudipServer, world: World) -> None:
    body = get(studip, "/semesters", params={"offset": 1, "limit": 1}).json()
    ordered = world.semesters_in_order
    assert list(body["collection"]) == [f"/api.php/semester/{ordered[1].semester_id}"]
    assert body["pagination"]["offset"] == 1
    assert body["pagination"]["links"]["previous"] == "/api.php/semesters?offset=0&limit=1"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"offset": "abc"}, "Parameter offset must be a non-negative integer"),
        ({"offset": "-1"}, "Parameter offset must be a non-negative integer"),
        ({"limit": "x"}, "Parameter limit must be a positive integer"),
        ({"limit": "-5"}, "Parameter limit must be a positive integer"),
        ({"limit": "0"}, "Parameter limit must be a positive integer"),
    ],
)
def test_bad_paging_parameters_are_400(
    studip: StudipServer, world: World, params: dict[str, str], message: str
) -> None:
    response = get(studip, f"/course/{series_id(world)}/members", params=params)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.json() == message


# --------------------------------------------------------------------------------------------
# Filters


def test_status_filter(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    body = get(studip, f"/course/{course_id}/members", params={"status": "dozent"}).json()
    assert [e["member"]["id"] for e in body["collection"].values()] == [world.seed_dozent_id]
    autors = get(
        studip, f"/course/{course_id}/members", params={"status": "autor", "limit": 100}
    ).json()
    expected = sum(1 for s in world.memberships[course_id].values() if s == "autor")
    assert autors["pagination"]["total"] == expected
    assert {e["status"] for e in autors["collection"].values()} == {"autor"}
    bad = get(studip, f"/course/{course_id}/members", params={"status": "root"})
    assert bad.status_code == 400
    assert bad.json() == "Invalid status root"


def test_semester_filter(studip: StudipServer, world: World) -> None:
    user_id = world.seed_dozent_id
    semester = world.current_semester.semester_id
    body = get(studip, f"/user/{user_id}/courses", params={"semester": semester}).json()
    unlimited = sorted(c for c in world.user_courses[user_id] if c != series_id(world)
                       and world.studip_courses[c].start_semester is None)  # fmt: skip
    assert unlimited, "the seed dozent runs a study group"
    ids = [c["course_id"] for c in body["collection"].values()]
    assert ids[0] == series_id(world) and sorted(ids[1:]) == unlimited
    assert body["pagination"]["total"] == 1 + len(unlimited)
    bad = get(studip, f"/user/{user_id}/courses", params={"semester": "0" * 32})
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == JSON_TYPE
    assert bad.json() == "Semester not found."


def test_semester_filter_returns_the_courses_running_in_it(
    studip: StudipServer, world: World
) -> None:
    """A course from the previous into the current semester comes back for both, with its
    start semester; an unlimited one for every semester (reference/studip.md, second look)."""
    long = next(
        c for c in world.studip_courses.values()
        if c.start_semester == world.previous_semester.semester_id
        and c.end_semester == world.current_semester.semester_id
    )  # fmt: skip
    open_ended = next(
        c for c in world.studip_courses.values() if c.start_semester is None and c.sem_type != "99"
    )
    member = next(iter(world.memberships[long.course_id]))
    for semester in (world.previous_semester, world.current_semester):
        body = get(
            studip, f"/user/{member}/courses", params={"semester": semester.semester_id}
        ).json()
        assert body["collection"][f"/api.php/course/{long.course_id}"]["start_semester"] == (
            f"/api.php/semester/{long.start_semester}"
        )
    body = get(
        studip, f"/user/{member}/courses", params={"semester": world.next_semester.semester_id}
    ).json()
    assert f"/api.php/course/{long.course_id}" not in (body["collection"] or {})
    member = next(iter(world.memberships[open_ended.course_id]))
    for semester in world.semesters_in_order:
        body = get(
            studip, f"/user/{member}/courses", params={"semester": semester.semester_id}
        ).json()
        course = body["collection"][f"/api.php/course/{open_ended.course_id}"]
        assert course["start_semester"] is None and course["end_semester"] is None


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/user/" + "f" * 32, "User " + "f" * 32 + " not found"),
        ("/user/" + "f" * 32 + "/courses", "User " + "f" * 32 + " not found"),
        ("/user/" + "f" * 32 + "/institutes", "User " + "f" * 32 + " not found"),
        ("/course/" + "f" * 32, "Course not found"),
        ("/course/" + "f" * 32 + "/members", "Course not found"),
        ("/semester/" + "f" * 32, "Semester not found"),
    ],
)
def test_unknown_ids_are_404_json_strings(studip: StudipServer, path: str, message: str) -> None:
    response = get(studip, path)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.json() == message


@pytest.mark.parametrize(
    "path",
    ["/api.php/nonsense", "/api.php/course", "/api.php", "/api.php/studip/news", "/index.php"],
)
def test_unknown_routes_are_html_404(studip: StudipServer, path: str) -> None:
    response = requests.get(studip.origin + path, auth=AUTH, timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text == "HTTP/1.1 404 Not Found"


def test_user_search_needs_q(studip: StudipServer) -> None:
    for params in ({}, {"q": ""}):
        response = get(studip, "/users", params=params)
        assert response.status_code == 400
        assert response.json() == "Missing search paramter ?q="


def test_other_methods_are_405(studip: StudipServer) -> None:
    response = requests.post(studip.base_url + "/semesters", auth=AUTH, timeout=5)
    assert response.status_code == 405
    assert response.text == "HTTP/1.1 405 Method Not Allowed"
    override = requests.post(
        studip.base_url + "/semesters",
        auth=AUTH,
        timeout=5,
        headers={"X-HTTP-Method-Override": "GET"},
    )
    assert override.status_code == 200
    delete = get(studip, "/semesters", headers={"X-HTTP-Method-Override": "DELETE"})
    assert delete.status_code == 405
    head = requests.head(studip.base_url + "/user", auth=AUTH, timeout=5)
    assert head.status_code == 200 and head.content == b""


# --------------------------------------------------------------------------------------------
# Deactivated routes


def test_disabled_route_is_403_and_missing_from_discovery(
    studip: StudipServer, world: World
) -> None:
    admin = f"{studip.origin}/_sandbox/routes"
    members = f"/course/{series_id(world)}/members"
    assert get(studip, members).status_code == 200
    answer = requests.post(admin, json={"disabled": ["/course/:course_id/members"]}, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["disabled"] == ["/course/:course_id/members"]
    response = get(studip, members)
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "Route not activated"
    assert "/course/:course_id/members" not in get(studip, "/discovery").json()
    assert requests.get(admin, timeout=5).json()["disabled"] == ["/course/:course_id/members"]
    requests.post(admin, json={"disabled": []}, timeout=5)
    assert get(studip, members).status_code == 200
    assert "/course/:course_id/members" in get(studip, "/discovery").json()


def test_routes_admin_rejects_unknown_templates(studip: StudipServer) -> None:
    response = requests.post(
        f"{studip.origin}/_sandbox/routes", json={"disabled": ["/no/such/route"]}, timeout=5
    )
    assert response.status_code == 400
    assert "/no/such/route" in response.json()["error"]
    assert (
        requests.post(
            f"{studip.origin}/_sandbox/routes", json={"disabled": "x"}, timeout=5
        ).status_code
        == 400
    )


def test_disabled_routes_option(world: World) -> None:
    studip = StudipServer(world, disabled_routes={"/semesters"})
    studip.start()
    try:
        assert get(studip, "/semesters").status_code == 403
        assert "/semesters" not in get(studip, "/discovery").json()
    finally:
        studip.stop()
    with pytest.raises(ValueError):
        StudipServer(world, disabled_routes={"/nope"})


# --------------------------------------------------------------------------------------------
# Quirks: version prefix, suffix, escaping, headers, permissions


def test_version_prefix_and_json_suffix(studip: StudipServer, world: World) -> None:
    plain = get(studip, "/semesters").json()
    assert get(studip, "/v2/semesters").json() == plain
    assert get(studip, "/semesters.json").json() == plain
    assert get(studip, "/v2/semesters.json").json() == plain
    user_id = world.seed_dozent_id
    assert get(studip, f"/v2/user/{user_id}.json").json()["user_id"] == user_id
    old = get(studip, "/v1/semesters")
    assert old.status_code == 400
    assert old.headers["Content-Type"] == JSON_TYPE
    assert old.json() == "Version not supported"


def test_slashes_are_escaped_and_content_type_is_phps(studip: StudipServer, world: World) -> None:
    response = get(studip, f"/course/{series_id(world)}")
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    assert '"\\/api.php\\/course\\/' in response.text
    assert "/api.php/" not in response.text
    assert json.loads(response.text)["modules"]["wiki"].startswith("/api.php/course/")


def test_every_response_sets_a_session_cookie(studip: StudipServer, world: World) -> None:
    for path, auth in (
        ("/user", AUTH),
        ("/user", None),
        ("/nonsense", AUTH),
        ("/course/" + "0" * 32, AUTH),
    ):
        response = get(studip, path, auth=auth)
        assert "Seminar_Session" in response.cookies, path
    session = requests.Session()
    session.auth = AUTH
    first = session.get(studip.base_url + "/user", timeout=5).cookies["Seminar_Session"]
    second = session.get(studip.base_url + "/semesters", timeout=5)
    assert second.cookies["Seminar_Session"] == first


def test_user_etag_and_304(studip: StudipServer) -> None:
    response = get(studip, "/user")
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = get(studip, "/user", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert get(studip, "/user", headers={"If-None-Match": '"other"'}).status_code == 200
    assert "ETag" not in get(studip, "/semesters").headers


def test_non_root_account_reads_only_its_own_courses(non_root: StudipServer, world: World) -> None:
    foreign = get(non_root, f"/user/{world.seed_dozent_id}/courses")
    assert foreign.status_code == 401
    assert foreign.headers["Content-Type"] == JSON_TYPE
    assert foreign.text == '""'
    own = get(non_root, f"/user/{world.api_account.user_id}/courses")
    assert own.status_code == 200
    assert get(non_root, "/user").json()["perms"] == "autor"
    group = get(non_root, f"/course/{studygroup_id(world)}")
    assert group.status_code == 401 and group.text == '""'
    assert get(non_root, f"/course/{series_id(world)}").status_code == 200
    assert get(non_root, f"/course/{series_id(world)}/members").status_code == 200


def test_world_changes_show_up(studip: StudipServer, world: World) -> None:
    course_id = series_id(world)
    before = get(studip, f"/course/{course_id}").json()["members"]
    with world.lock:
        world.step()
        after_counts = list(world.memberships[course_id].values())
    after = get(studip, f"/course/{course_id}").json()["members"]
    for status in ("user", "autor", "tutor", "dozent"):
        assert after[f"{status}_count"] == after_counts.count(status)
    assert before["dozent_count"] == after["dozent_count"] == 1


def test_request_counters_use_route_templates(studip: StudipServer, world: World) -> None:
    before = studip.request_count("/course/:course_id/members")
    get(studip, f"/v2/course/{series_id(world)}/members.json")
    deadline = time.monotonic() + 2  # the server counts a request after sending its answer
    while studip.request_count("/course/:course_id/members") == before:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert studip.request_count("GET /api.php/course/:course_id/members") == before + 1


# --------------------------------------------------------------------------------------------
# Faults


def script(server: StudipServer, *kinds: str, **settings: Any) -> None:
    response = requests.post(
        f"{server.origin}/_sandbox/faults", json={"script": list(kinds), **settings}, timeout=5
    )
    assert response.status_code == 200


def test_error_fault_is_a_php_error_page(studip: StudipServer) -> None:
    script(studip, "error")
    response = get(studip, "/semesters")
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.lstrip().startswith("<!DOCTYPE html>")
    assert "Fehler" in response.text
    assert get(studip, "/semesters").status_code == 200


def test_rate_limit_fault(studip: StudipServer) -> None:
    script(studip, "rate_limit", retry_after=7)
    response = get(studip, "/semesters")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert "429 Too Many Requests" in response.text


def test_drop_fault(studip: StudipServer) -> None:
    script(studip, "drop")
    with pytest.raises(requests.ConnectionError):
        get(studip, "/semesters")
    assert get(studip, "/semesters").status_code == 200


def test_truncate_fault(studip: StudipServer) -> None:
    script(studip, "truncate")
    response = get(studip, "/semesters")
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert get(studip, "/semesters").json()["pagination"]["total"] > 0


def test_slow_fault(studip: StudipServer) -> None:
    script(studip, "slow", slow_ms=300)
    started = time.perf_counter()
    assert get(studip, "/semesters").status_code == 200
    assert time.perf_counter() - started >= 0.3


def test_big_course_cache_follows_the_world(
    studip: StudipServer, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sandbox.studip as studip_module

    monkeypatch.setattr(studip_module, "CACHE_MIN_MEMBERS", 1)
    course_id = series_id(world)
    path = f"/course/{course_id}"
    outsider = next(
        u
        for u in world.studip_users.values()
        if u.perms == "autor" and u.user_id not in world.memberships[course_id]
    )
    before = get(studip, path).json()["members"]
    with world.lock:
        world.enrol(course_id, outsider.user_id, "tutor")  # the member count changes
    assert get(studip, path).json()["members"]["tutor_count"] == before["tutor_count"] + 1
    with world.lock:
        world.enrol(course_id, outsider.user_id, "user")  # in place: same member count
    assert get(studip, path).json()["members"]["tutor_count"] == before["tutor_count"] + 1
    studip.invalidate_cache()
    after = get(studip, path).json()["members"]
    assert (after["tutor_count"], after["user_count"]) == (
        before["tutor_count"],
        before["user_count"] + 1,
    )
    with world.lock:
        world.drop(course_id, outsider.user_id)
    assert get(studip, path).json()["members"] == before
