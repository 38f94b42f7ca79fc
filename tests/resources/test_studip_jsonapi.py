"""The JSON:API client against every recorded JSON:API answer of a real Stud.IP 5.5.8, and its
paging (parallel, overlapping, tolerant of users created or deleted while it lists).

Each recorded success body is served (``responses``) and read with the client: every resource
must parse (nothing rejected) with the recorded values; each recorded error must raise the error
class a sync needs with a message that tells the operator what to do.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from resources.http import HttpClient, RetryPolicy
from resources.studip import StudipAuthError, StudipError, StudipNotFound
from resources.studip.jsonapi import (
    FIELDSETS,
    Course,
    CourseMembership,
    JsonApiClient,
    JsonApiForbidden,
    Membership,
    User,
    parse_memberships,
    parse_resources,
)
from sandbox.studip_jsonapi import sparse
from tests.contract import Recording, recordings

BASE = "https://studip.example/jsonapi.php/v1"
JSONAPI = recordings("jsonapi")
SUCCESSES = [r for r in JSONAPI if r.status == 200]
ERRORS = [r for r in JSONAPI if r.status != 200]


def client(
    page_size: int = 30, concurrency: int = 4, overlap: int | None = None, max_pages: int = 10_000
) -> JsonApiClient:
    http = HttpClient("Stud.IP", BASE, retry_policy=RetryPolicy(attempts=1, backoff_s=0))
    return JsonApiClient(
        http, page_size=page_size, concurrency=concurrency, overlap=overlap, max_pages=max_pages
    )


def _resources(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body["data"] if isinstance(body["data"], list) else [body["data"]]
    return [*data, *body.get("included", [])]


@pytest.mark.parametrize("recording", SUCCESSES, ids=[r.file for r in SUCCESSES])
def test_every_recorded_resource_parses_with_its_recorded_values(recording: Recording) -> None:
    raw = _resources(recording.body)
    records, rejected = parse_resources(raw, "resource")
    assert rejected == []
    assert [r.id for r in records] == [r["id"] for r in raw]
    for record, source in zip(records, raw, strict=True):
        if isinstance(record, User):
            assert record.attributes.username == source["attributes"]["username"]
            assert record.attributes.email == source["attributes"]["email"]
            ids = [i["id"] for i in source["relationships"]["course-memberships"]["data"]]
            assert record.course_membership_ids == ids
        if isinstance(record, CourseMembership):
            assert f"{record.course_id}_{record.user_id}" == source["id"]
            assert record.attributes.permission == source["attributes"]["permission"]
        if isinstance(record, Course):
            start = source["relationships"].get("start-semester", {}).get("data")
            assert record.start_semester_id == (start["id"] if start else None)
            assert record.attributes.course_type == source["attributes"]["course-type"]


@responses.activate
@pytest.mark.parametrize("recording", SUCCESSES, ids=[r.file for r in SUCCESSES])
def test_the_client_reads_every_recorded_listing(recording: Recording) -> None:
    path = recording.path.removeprefix("/jsonapi.php/v1")
    responses.get(BASE + path, json=recording.body, content_type=recording.content_type)
    c = client(page_size=100_000)
    if path == "/users/me":
        assert c.me().attributes.permission == "root"
        return
    if not isinstance(recording.body["data"], list):
        pytest.skip("a single resource: parsed above")
    pages = list(c.listing(path, path, {}))
    assert pages[0].total == recording.body["meta"]["page"]["total"]
    assert [r.id for r in pages[0].records] == [r["id"] for r in recording.body["data"]]
    assert pages[0].rejected == []


def _fieldsets(query: dict[str, list[str]]) -> dict[str, set[str]]:
    return {
        key[len("fields[") : -1]: set(values[0].split(","))
        for key, values in query.items()
        if key.startswith("fields[")
    }


LISTED = [r for r in SUCCESSES if isinstance(r.body["data"], list) or r.path.endswith("/me")]


@responses.activate
@pytest.mark.parametrize("recording", LISTED, ids=[r.file for r in LISTED])
def test_sparse_fieldsets_ask_for_everything_the_models_read(recording: Recording) -> None:
    """The listings ask for sparse fieldsets (a fraction of the bytes). Each recorded body is cut
    down to what the client asked for, as a server honouring ``fields[...]`` sends it: the
    client must read the same records from it as from the whole body, so a field the models
    read but the request leaves out fails here."""
    path = recording.path.removeprefix("/jsonapi.php/v1")
    asked: list[dict[str, set[str]]] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fieldsets = _fieldsets(parse_qs(urlparse(request.url).query))
        asked.append(fieldsets)
        return 200, {"Content-Type": recording.content_type}, json.dumps(
            sparse(recording.body, fieldsets)
        )  # fmt: skip

    responses.add_callback(responses.GET, BASE + path, callback=answer)
    c = client(page_size=100_000)
    kinds = {r["type"] for r in _resources(recording.body)}
    if path == "/users/me":
        assert c.me() == parse_resources([recording.body["data"]], "user")[0][0]
    else:
        page = next(iter(c.listing(path, path, {}, fields=c.fields(*kinds))))
        whole, _ = parse_resources(recording.body["data"], "resource")
        assert page.rejected == []
        assert page.records == whole
        if recording.body.get("included"):
            included, _ = parse_memberships(recording.body["included"], "resource")
            assert page.included == included
    assert asked and all(set(a) == kinds & set(a) and a for a in asked)
    assert all(a[kind] == set(FIELDSETS[kind].split(",")) for a in asked for kind in a)


def test_the_users_listing_asks_for_users_and_their_memberships_only() -> None:
    with responses.RequestsMock() as mock:
        mock.get(BASE + "/users", json={"meta": {"page": {"offset": 0, "limit": 30, "total": 0}},
                                        "data": []})  # fmt: skip
        list(client().users(include_memberships=True))
        query = parse_qs(urlparse(mock.calls[0].request.url).query)
    assert _fieldsets(query) == {
        "users": {"username", "formatted-name", "family-name", "given-name", "permission",
                  "email", "course-memberships"},
        "course-memberships": {"permission", "position", "group"},
    }  # fmt: skip
    assert query["include"] == ["course-memberships"]


def test_a_server_refusing_sparse_fieldsets_is_asked_for_whole_resources() -> None:
    """Stud.IP allows ``fields[...]`` for every type; a server that does not (400) must not
    fail every sync: ``/users/me`` (asked first) tells, and the listings ask without them."""
    me = next(r for r in SUCCESSES if r.path.endswith("/users/me"))
    refusal = {"errors": [{"status": "400", "title": "Bad Request",
                           "detail": "Fields are not allowed"}]}  # fmt: skip
    page = {"meta": {"page": {"offset": 0, "limit": 30, "total": 0}}, "data": []}

    def users_me(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if "fields" in str(request.url):
            return 400, {"Content-Type": "application/json"}, json.dumps(refusal)
        return 200, {"Content-Type": me.content_type}, json.dumps(me.body)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.GET, BASE + "/users/me", callback=users_me)
        mock.get(BASE + "/users", json=page)
        c = client()
        assert c.me().attributes.permission == "root"
        list(c.users())
        listing_query = parse_qs(urlparse(mock.calls[-1].request.url).query)
    assert c.sparse_fieldsets is False
    assert _fieldsets(listing_query) == {}
    assert listing_query["include"] == ["course-memberships"]


INCLUDED = [r for r in SUCCESSES if r.body.get("included")]


@pytest.mark.parametrize("recording", INCLUDED, ids=[r.file for r in INCLUDED])
def test_recorded_included_memberships_become_rows_as_the_model_reads_them(
    recording: Recording,
) -> None:
    rows, rejected = parse_memberships(recording.body["included"], "users")
    models, _ = parse_resources(recording.body["included"], "users")
    assert rejected == []
    assert rows == [
        Membership(m.id, m.course_id, m.user_id, m.attributes.permission)
        if isinstance(m, CourseMembership) else m
        for m in models
    ]  # fmt: skip


def _membership(mid: str, **attributes: Any) -> dict[str, Any]:
    defaults = {"permission": "autor", "position": 0, "group": 5}
    return {"type": "course-memberships", "id": mid, "attributes": {**defaults, **attributes}}


def test_a_membership_the_fast_check_doubts_is_judged_by_the_model() -> None:
    course, user = "a" * 32, "b" * 32
    items = [
        _membership(f"{course}_{user}"),
        _membership(f"{course}_{'c' * 32}", position="3"),  # the model coerces it: kept
        _membership(f"{course}_{'d' * 32}", permission="root"),  # no course permission
        _membership(f"{course}-{user}"),  # not <course_id>_<user_id>
        _membership(f"{course}_{'e' * 32}", permission="dozent\ufffd"),
    ]
    rows, rejected = parse_memberships(items, "users")
    models, model_rejected = parse_resources(items, "users")
    assert [r.id for r in rows] == [m.id for m in models] == [items[0]["id"], items[1]["id"]]
    assert rows[1] == Membership(items[1]["id"], course, "c" * 32, "autor")
    assert [(r.record_key, r.reason) for r in rejected] == [
        (r.record_key, r.reason) for r in model_rejected
    ]
    assert len(rejected) == 3


ERROR_CLASSES = {
    "039-": (JsonApiForbidden, "root"),
    "043-": (StudipError, 'Invalid "semester"'),
    "056-": (StudipAuthError, "STUDIP_USERNAME/STUDIP_PASSWORD"),
}


@responses.activate
@pytest.mark.parametrize("recording", ERRORS, ids=[r.file for r in ERRORS])
def test_every_recorded_error_is_classified(recording: Recording) -> None:
    kind, says = ERROR_CLASSES[recording.file[:4]]
    path = recording.path.removeprefix("/jsonapi.php/v1")
    body = json.dumps(recording.body) if recording.body != "" else ""
    responses.get(BASE + path, body=body, status=recording.status,
                  content_type=recording.content_type)  # fmt: skip
    with pytest.raises(kind) as raised:
        list(client().listing(path, path, {}))
    assert says in str(raised.value)


@responses.activate
def test_an_unknown_resource_is_not_found() -> None:
    body = {"errors": [{"status": "404", "title": "Not Found"}]}
    responses.get(BASE + "/courses/x/memberships", json=body, status=404)
    with pytest.raises(StudipNotFound):
        list(client().course_memberships("x"))


# -- paging ------------------------------------------------------------------------------------


class Listing:
    """A /users listing over a list that a hook may change between requests."""

    def __init__(self, n: int) -> None:
        self.users = [f"{i:032x}" for i in range(n)]
        self.requests: list[int] = []
        self.lock = threading.Lock()
        self.on_request: Any = None

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        query = parse_qs(urlparse(request.url).query)
        offset, limit = int(query["page[offset]"][0]), int(query["page[limit]"][0])
        with self.lock:
            self.requests.append(offset)
            if self.on_request:
                self.on_request(self, len(self.requests))
            window = self.users[offset : offset + limit]
            total = len(self.users)
        data = [
            {"type": "users", "id": uid, "attributes": {"username": f"u{uid[-6:]}",
             "permission": "autor", "email": "x@y"}}
            for uid in window
        ]  # fmt: skip
        body = {"meta": {"page": {"offset": offset, "limit": limit, "total": total}}, "data": data}
        return 200, {"Content-Type": "application/vnd.api+json"}, json.dumps(body)


def _listed(listing: Listing, **kwargs: Any) -> list[str]:
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.GET, BASE + "/users", callback=listing)
        pages = list(client(**kwargs).users(include_memberships=False))
    return [r.id for page in pages for r in page.records]


def test_the_listing_pages_in_parallel_from_the_total_with_overlapping_pages() -> None:
    listing = Listing(95)
    ids = _listed(listing, page_size=10, overlap=2)
    assert sorted(ids) == listing.users, "every user once"
    # offsets step by limit - overlap from the first page's total, then page 0 and the tail again
    # (page 0 again, then the last `overlap` items again: users appended meanwhile are there)
    assert sorted(set(listing.requests)) == [*range(0, 95, 8), 93]
    assert len(listing.requests) == len(range(0, 95, 8)) + 2


def test_users_deleted_while_listing_are_not_losing_anyone_else() -> None:
    listing = Listing(100)
    deleted = [listing.users[3], listing.users[40]]

    def delete_early_users(state: Listing, nr: int) -> None:
        if nr == 4:  # after a few pages: everyone later shifts down by two
            for uid in deleted:
                state.users.remove(uid)

    listing.on_request = delete_early_users
    ids = _listed(listing, page_size=10, overlap=3, concurrency=1)
    assert len(ids) == len(set(ids)), "no duplicates"
    assert set(listing.users) <= set(ids), "no user that still exists is lost"


def test_users_created_while_listing_are_listed() -> None:
    listing = Listing(50)
    created = [f"{1000 + i:032x}" for i in range(3)]

    def create_users(state: Listing, nr: int) -> None:
        if nr == 3:
            state.users.extend(created)

    listing.on_request = create_users
    ids = _listed(listing, page_size=10, overlap=3, concurrency=2)
    assert len(ids) == len(set(ids))
    assert set(ids) == set(listing.users)


def test_more_changes_than_the_overlap_fail_the_listing() -> None:
    listing = Listing(60)

    def delete_many(state: Listing, nr: int) -> None:
        if nr == 2:
            del state.users[:8]

    listing.on_request = delete_many
    with pytest.raises(StudipError, match="total changed from 60 to 52"):
        _listed(listing, page_size=10, overlap=3, concurrency=1)


def test_a_total_beyond_studip_max_pages_fails_before_paging_on() -> None:
    """A hostile meta.page.total of a billion queued a billion offsets."""
    listing = Listing(95)  # 10 a page, 8 new each: 12 pages, then the first again and the tail
    assert len(_listed(Listing(95), page_size=10, overlap=2, max_pages=14)) == 95
    with pytest.raises(StudipError, match=r"needs 13 pages, more than 12 \(STUDIP_MAX_PAGES\)"):
        _listed(listing, page_size=10, overlap=2, max_pages=12)
    assert listing.requests == [0], "only the first page was read"


@responses.activate
def test_a_redirect_is_refused_with_its_reason() -> None:
    """The listing's errors said only "no response": a refused redirect lost its host."""
    location = "http://elsewhere.example/jsonapi.php/v1/users"
    responses.get(BASE + "/users", status=307, headers={"Location": location})
    with pytest.raises(StudipError) as raised:
        list(client().users(include_memberships=False))
    message = str(raised.value)
    assert "JSON:API /users" in message and "redirected to elsewhere.example" in message
    assert len(responses.calls) == 1


def test_users_with_broken_or_oversized_text_are_rejected_naming_the_attribute() -> None:
    """The text checks read the resource's own fields (id, relationships), so a username of
    invalid UTF-8 or a name of a megabyte was taken as sent."""

    def user(n: int, **attributes: str) -> dict[str, Any]:
        fields = {"username": f"u{n}", "permission": "autor", **attributes}
        return {"type": "users", "id": f"{n:032x}", "attributes": fields}

    items = [user(1), user(2, username="m\ufffdller"), user(3, **{"family-name": "x" * 10_001})]
    records, rejected = parse_resources(items, "users")
    assert [r.id for r in records] == [f"{1:032x}"]
    reasons = {r.record_key: r.reason for r in rejected}
    assert reasons == {
        f"{2:032x}": "username holds invalid UTF-8 bytes",
        f"{3:032x}": "family-name is longer than 10000 characters",
    }
