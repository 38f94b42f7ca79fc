"""The sandbox Stud.IP answers every recorded request of a real Stud.IP 5.5.8 in the same shape.

Each classic recording (``tests/fixtures/studip-5.5.8/0NN-*.json`` with ``api`` = ``api``)
is sent to the sandbox with the same path, parameters and auth role, the demo's ids replaced by
equivalent objects of the sandbox's world (any course the API account is not in, a study
group, a student in a course and a study group, ...). The answer must have the recording's
status, content type family and shape (``tests/contract.py``); an error's body must be the same
text. This is the guard that the sandbox keeps answering like the real system: a new recording
needs only its ids in ``equivalents`` (and the JSON:API ones a sandbox serving them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
import requests

from sandbox.studip import StudipServer
from sandbox.world import SEM_TYPES, STUDYGROUP_CLASSES, World
from tests.contract import Recording, media_type, recordings, shape_differences

AUTH = ("hubsync-api", "sandbox-studip-password")
CLASSIC = recordings("api")

# The demo's ids (fixtures/README.md)
DEMO_AUTOR = "e7a0a84b161f3e8c09b4a0a2e8a58147"
DEMO_DOZENT = "205f3efb7997a0fc9755da2b535038da"
DEMO_COURSE = "a07535cf2f8a72df33c12ddfa4b53dde"
DEMO_STUDYGROUP = "7cb72dab1bf896a0b55c6aa7a70a3a86"
DEMO_SS_2024 = "322f640f3f4643ebe514df65f1163eb1"  # test_autor has only the study group then
DEMO_WS_2024 = "4967f0a483e36554b77e3dc47aa58941"  # ... and the course too


@dataclass
class Sandbox:
    world: World
    root: StudipServer
    non_root: StudipServer  # the API account as test_admin/test_dozent: not root
    equivalents: dict[str, str]  # demo id or text -> the sandbox's


def _studygroup(world: World, course_id: str) -> bool:
    return SEM_TYPES[world.studip_courses[course_id].sem_type][1] in STUDYGROUP_CLASSES


def _equivalents(world: World) -> dict[str, str]:
    """Sandbox objects standing in for the demo's, chosen so each answer holds the same kinds
    of items as the recorded one (e.g. test_autor: a student in courses of the current semester
    and in a study group, nothing in the earliest semester but the study group)."""
    current, earliest = world.current_semester, world.semesters_in_order[0]

    def courses(user_id: str) -> list[Any]:
        return [world.studip_courses[c] for c in sorted(world.user_courses[user_id])]

    def in_current(user_id: str) -> list[Any]:
        return [c for c in courses(user_id) if c.start_semester == current.semester_id]

    autor = next(
        u.user_id
        for u in sorted(world.studip_users.values(), key=lambda u: u.user_id)
        if u.perms == "autor"
        and u.institute_ids
        and in_current(u.user_id)
        and [c.course_id for c in courses(u.user_id) if c.start_semester is None]
        and all(_studygroup(world, c.course_id) for c in courses(u.user_id) if not c.start_semester)
    )
    dozent = next(
        u.user_id
        for u in sorted(world.studip_users.values(), key=lambda u: u.user_id)
        if u.perms == "dozent"
        and u.user_id != world.seed_dozent_id
        and in_current(u.user_id)
        and all(c.start_semester for c in courses(u.user_id))
    )
    course = next(
        c.course_id
        for c in in_current(autor)
        if len(world.memberships[c.course_id]) >= 3
        and list(world.memberships[c.course_id].values()).count("dozent") == 1
    )
    studygroup = next(c.course_id for c in courses(autor) if _studygroup(world, c.course_id))
    person = world.persons[world.studip_users[autor].pid or 0]
    return {
        DEMO_AUTOR: autor,
        DEMO_DOZENT: dozent,
        DEMO_COURSE: course,
        DEMO_STUDYGROUP: studygroup,
        DEMO_WS_2024: current.semester_id,
        DEMO_SS_2024: earliest.semester_id,
        "test_autor": world.studip_users[autor].username,
        "Testaccount Autor": f"{person.given} {person.family}",
    }


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=7, students=80, today=date(2026, 11, 23))
    root, non_root = StudipServer(world), StudipServer(world, api_account_is_root=False)
    root.start()
    non_root.start()
    try:
        yield Sandbox(world, root, non_root, _equivalents(world))
    finally:
        root.stop()
        non_root.stop()


def _substitute(text: str, equivalents: dict[str, str]) -> str:
    for demo, ours in equivalents.items():
        text = text.replace(demo, ours)
    return text


def _query(recording: Recording, sandbox: Sandbox) -> dict[str, Any]:
    params = {k: _substitute(str(v), sandbox.equivalents) for k, v in recording.params.items()}
    if recording.file.startswith("009-"):  # "past the end" of test_autor's two courses
        autor = sandbox.equivalents[DEMO_AUTOR]
        params["offset"] = str(len(sandbox.world.user_courses[autor]) + 3)
    if recording.file.startswith("037-"):  # the JSON:API search for test_autor
        params["filter[search]"] = sandbox.equivalents["test_autor"]
    if recording.file.startswith("022-"):  # a search with a few hits (one page), like "test"
        params["q"] = _few_hits_query(sandbox)
    return params


def _few_hits_query(sandbox: Sandbox) -> str:
    for user in sorted(sandbox.world.studip_users.values(), key=lambda u: u.user_id):
        if user.pid is None:
            continue
        family = sandbox.world.persons[user.pid].family
        total = requests.get(
            sandbox.root.base_url + "/users", params={"q": family}, auth=AUTH, timeout=5
        ).json()["pagination"]["total"]
        if 2 <= total <= 20:
            return family
    raise AssertionError("no family name with 2 to 20 users")


def _send(recording: Recording, sandbox: Sandbox) -> requests.Response:
    server = sandbox.root if recording.auth in ("root@studip", None) else sandbox.non_root
    auth: tuple[str, str] | None = AUTH
    if recording.auth is None:
        auth = None
    elif "wrong-password" in recording.file:
        auth = (AUTH[0], "not-the-password")
    url = server.origin + _substitute(recording.path, sandbox.equivalents)
    return requests.get(url, params=_query(recording, sandbox), auth=auth, timeout=10)


def _body(response: requests.Response) -> Any:
    if media_type(response.headers.get("Content-Type", "")) == "application/json":
        return response.json()
    return response.text


@pytest.mark.parametrize("recording", CLASSIC, ids=[r.file for r in CLASSIC])
def test_the_sandbox_answers_like_the_recording(recording: Recording, sandbox: Sandbox) -> None:
    response = _send(recording, sandbox)
    assert response.status_code == recording.status
    assert media_type(response.headers["Content-Type"]) == media_type(recording.content_type)
    body = _body(response)
    assert shape_differences(recording.body, body) == []
    if recording.status >= 400:
        assert body == _substitute(recording.body, sandbox.equivalents)


def test_every_classic_route_the_client_uses_is_recorded() -> None:
    """So the test above covers each of them (tests/resources/test_studip_contract.py parses
    every recorded success body with the client)."""
    from resources.studip import CRAWL_ROUTES, SEARCH_ROUTE

    recorded = {r.route_path for r in CLASSIC}
    for route in (*CRAWL_ROUTES, SEARCH_ROUTE):
        pattern = route.replace(":user_id", DEMO_AUTOR).replace(":course_id", DEMO_COURSE)
        assert pattern in recorded or route.replace(":user_id", DEMO_DOZENT) in recorded, route


# -- the shape comparison itself ----------------------------------------------------------------


def test_shape_differences_see_types_keys_nulls_and_kinds_of_items() -> None:
    course = {"id": "a", "start": "/s/1", "group": None, "modules": {"forum": "x", "wiki": "y"}}
    group = {"id": "b", "start": None, "group": None, "modules": {"wiki": "y"}}
    recorded = {"collection": {"/api.php/course/a": course, "/api.php/course/b": group}}
    assert shape_differences(recorded, recorded) == []
    other_ids = {"collection": {"/api.php/course/c": course, "/api.php/course/d": group}}
    assert shape_differences(recorded, other_ids) == [], "map keys are data"
    assert shape_differences(recorded, {"collection": {"/api.php/course/c": course}}) == [
        "$.collection{*}: no actual item has the shape of recorded item 1"
    ]
    as_int = {**course, "group": 5}
    problems = shape_differences({"collection": {"/x": course}}, {"collection": {"/y": as_int}})
    assert "int where the recording has null" in problems[0] and len(problems) == 2
    assert shape_differences({"a": 1}, {"a": 1, "b": 2}) == [
        "$: key 'b' the recording does not have"
    ]
    assert shape_differences({"a": []}, {"a": [{"x": 1}]}) == [], "nothing known of the items"
    assert shape_differences({"collection": []}, {"collection": {"/x": course}}) == [
        "$.collection: object where the recording has list"
    ]
    assert shape_differences("Course not found", "Course not found") == []
    assert shape_differences({"a": 1}, {"a": 1.5}) == ["$.a: float where the recording has int"]


# -- the JSON:API (/jsonapi.php/v1) -------------------------------------------------------------

JSONAPI = recordings("jsonapi")


def _resources(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    data = body.get("data")
    items = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    return [*items, *body.get("included", [])]


# Every resource object any recording holds, by type: a sandbox resource must have the shape of
# one of them (which users or courses a page holds depends on the world; their shapes may not).
RECORDED_RESOURCES: dict[str, list[Any]] = {}
for _recording in JSONAPI:
    for _resource in _resources(_recording.body):
        RECORDED_RESOURCES.setdefault(_resource["type"], []).append(_resource)
# An ordinary course can be unlimited too (reference: "More facts"): it has no start and end
# semester, like the recorded study group, but a number and subtitle like the recorded course.
for _course in list(RECORDED_RESOURCES["courses"]):
    if "start-semester" in _course["relationships"]:
        _relationships = {
            k: v for k, v in _course["relationships"].items() if not k.endswith("-semester")
        }
        RECORDED_RESOURCES["courses"].append({**_course, "relationships": _relationships})


def _jsonapi_problems(
    recorded: Any, actual: Any, shapes: dict[str, list[Any]] = RECORDED_RESOURCES
) -> list[str]:
    """Shape differences of a JSON:API document: same top-level members and meta, links with
    first/last and prev/next exactly where the page has one, each resource shaped like a
    recorded resource of its type, and every type the recording holds present."""
    if not isinstance(recorded, dict) or "data" not in recorded:
        return shape_differences(recorded, actual)
    problems = []
    if set(recorded) != set(actual):
        problems.append(f"top-level members {sorted(actual)} != {sorted(recorded)}")
    if "meta" in recorded:
        problems += shape_differences(recorded["meta"], actual.get("meta"), "$.meta")
    if "links" in recorded:
        links, page = actual.get("links", {}), actual["meta"]["page"]
        wanted = {"first", "last"}
        wanted |= {"prev"} if page["offset"] > 0 else set()
        wanted |= {"next"} if page["offset"] + page["limit"] < page["total"] else set()
        if set(links) != wanted:
            problems.append(f"links {sorted(links)} where the page needs {sorted(wanted)}")
        problems += [
            f"link {k} is not a string" for k, v in links.items() if not isinstance(v, str)
        ]
    for index, resource in enumerate(_resources(actual)):
        candidates = shapes.get(resource.get("type"), [])
        if not candidates or all(shape_differences(r, resource) for r in candidates):
            best = min((shape_differences(r, resource) for r in candidates), key=len, default=[])
            problems.append(f"resource {index} ({resource.get('type')}) matches none: {best}")
    recorded_types = {(r["type"]) for r in _resources(recorded)}
    actual_types = {(r["type"]) for r in _resources(actual)}
    problems += [f"no {kind} resource" for kind in sorted(recorded_types - actual_types)]
    return problems


@pytest.mark.parametrize("recording", JSONAPI, ids=[r.file for r in JSONAPI])
def test_the_sandbox_jsonapi_answers_like_the_recording(
    recording: Recording, sandbox: Sandbox
) -> None:
    response = _send(recording, sandbox)
    assert response.status_code == recording.status
    assert media_type(response.headers["Content-Type"]) == media_type(recording.content_type)
    kind = media_type(recording.content_type)
    body = response.json() if kind.endswith("json") else response.text
    assert _jsonapi_problems(recording.body, body) == []
    if recording.status >= 400:
        assert body == recording.body


def test_the_jsonapi_shape_check_sees_a_missing_attribute_and_a_missing_next_link() -> None:
    recorded = next(r for r in JSONAPI if r.file.startswith("035-")).body
    assert _jsonapi_problems(recorded, recorded) == []
    broken = json.loads(json.dumps(recorded))
    del broken["data"][0]["attributes"]["email"]
    assert "matches none" in _jsonapi_problems(recorded, broken)[0]
    no_next = json.loads(json.dumps(recorded))
    del no_next["links"]["next"]
    assert _jsonapi_problems(recorded, no_next) == [
        "links ['first', 'last'] where the page needs ['first', 'last', 'next']"
    ]


# A sparse fieldset per type: some attributes and, where the type has them, some relationships.
FIELDSETS = {
    "users": {"username", "email", "course-memberships"},
    "course-memberships": {"permission", "group"},
    "courses": {"title", "course-type", "start-semester", "institute"},
    "semesters": {"title", "start"},
    "institutes": {"name", "sub-institutes"},
    "institute-memberships": {"permission", "institute"},
}


def _cut(resource: dict[str, Any]) -> dict[str, Any]:
    """A recorded resource as JSON:API sparse fieldsets cut it: the attributes and relationships
    of its type's fieldset; type, id, links and meta unchanged; empty members left out."""
    wanted = FIELDSETS[resource["type"]]
    cut = {}
    for key, value in resource.items():
        if key in ("attributes", "relationships"):
            value = {name: v for name, v in value.items() if name in wanted}
            if not value:
                continue
        cut[key] = value
    return cut


SPARSE_SHAPES = {kind: [_cut(r) for r in shapes] for kind, shapes in RECORDED_RESOURCES.items()}
LISTED = [r for r in JSONAPI if r.status == 200 and not r.file.endswith("-me.json")]


@pytest.mark.parametrize("recording", LISTED, ids=[r.file for r in LISTED])
def test_the_sandbox_sends_the_sparse_fieldsets_asked_for_in_the_recorded_shapes(
    recording: Recording, sandbox: Sandbox
) -> None:
    """``fields[<type>]=...`` (JSON:API sparse fieldsets, allowed for every type by Stud.IP's
    routes): each resource keeps exactly the asked attributes and relationships, in the shape a
    recorded resource of its type has once cut so."""
    server = sandbox.root if recording.auth in ("root@studip", None) else sandbox.non_root
    url = server.origin + _substitute(recording.path, sandbox.equivalents)
    fields = {f"fields[{kind}]": ",".join(sorted(names)) for kind, names in FIELDSETS.items()}
    response = requests.get(
        url, params={**_query(recording, sandbox), **fields}, auth=AUTH, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert _jsonapi_problems(recording.body, body, SPARSE_SHAPES) == []
    for resource in _resources(body):
        kept = {*resource.get("attributes", {}), *resource.get("relationships", {})}
        assert kept <= FIELDSETS[resource["type"]], resource


def test_included_resources_follow_only_relationships_the_fieldsets_keep(
    sandbox: Sandbox,
) -> None:
    origin = sandbox.root.origin + "/jsonapi.php/v1"
    users = {"include": "course-memberships", "page[limit]": "20"}
    full = requests.get(origin + "/users", params=users, auth=AUTH, timeout=10).json()
    assert full["included"], "members are listed with their memberships"
    without = {**users, "fields[users]": "username,email"}
    assert (
        "included"
        not in requests.get(origin + "/users", params=without, auth=AUTH, timeout=10).json()
    )
    courses = {"include": "start-semester,end-semester", "fields[courses]": "title,end-semester"}
    body = requests.get(origin + "/courses", params=courses, auth=AUTH, timeout=10).json()
    ends = {c["relationships"]["end-semester"]["data"]["id"] for c in body["data"]
            if "end-semester" in c.get("relationships", {})}  # fmt: skip
    assert {s["id"] for s in body.get("included", [])} == ends


def test_the_sandbox_counts_jsonapi_requests_per_route(sandbox: Sandbox) -> None:
    before = sandbox.root.request_count("GET /jsonapi.php/v1/users")
    requests.get(sandbox.root.origin + "/jsonapi.php/v1/users", auth=AUTH, timeout=5)
    requests.get(sandbox.root.origin + "/jsonapi.php/v1/users/me", auth=AUTH, timeout=5)
    assert sandbox.root.counts["GET /jsonapi.php/v1/users/me"] >= 1
    assert sandbox.root.request_count("GET /jsonapi.php/v1/users") == before + 2
