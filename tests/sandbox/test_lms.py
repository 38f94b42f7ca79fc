"""The sandbox Marine LMS over real HTTP: tokens, fence posts, paging, churn, errors and faults."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import pytest
import requests

from sandbox.lms import LmsServer, format_datetime, parse_from_date
from sandbox.world import VESSELS, World

ORG = "/Root/Sandbox"
PASSWORD = "sandbox-lms-password"
TOKEN = "/services/api/oauth2/token"
DATA = "/Services/api/ExternalRegistration/Get{}RegistrationData"
NO_BODY = object()
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$")
ACTIVE_KEYS = [
    "CourseCode", "FirstName", "LastName", "OrganizationLoginId", "UniqueLoginId",
    "EmailAddress", "ContactEmail", "CourseName", "CourseId", "OfferingShortId",
    "RegistrationDate", "RegistrationId", "RegistrationStatus", "OrgProfileFieldValues",
]  # fmt: skip
COMPLETED_KEYS = [
    *ACTIVE_KEYS[:10], "CompletionDate", "CompletionLocation", *ACTIVE_KEYS[10:],
]  # fmt: skip


def new_world() -> World:
    return World(seed=7, students=80, today=date(2026, 11, 23))


class Http:
    """Loopback HTTP with a new connection per request, never through a proxy.

    The shared framework writes an answer's headers and body as two TCP segments without
    TCP_NODELAY, so on a kept-alive connection each answer waits ~40 ms for the client's delayed
    ACK; a fresh connection is acknowledged at once, which keeps this file fast.
    """

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(scope="module")
def http() -> Http:
    return Http()


@pytest.fixture(scope="module")
def server() -> Iterator[LmsServer]:
    """A shared server for tests that change neither the world nor the clock."""
    lms = LmsServer(new_world())
    lms.start()
    yield lms
    lms.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., LmsServer]]:
    """Fresh world and server per call, for tests that change the world, clock or options."""
    started: list[LmsServer] = []

    def make(**options: Any) -> LmsServer:
        lms = LmsServer(new_world(), **options)
        lms.start()
        started.append(lms)
        return lms

    yield make
    for lms in started:
        lms.stop()


def login(http: Http, lms: LmsServer, **form: str) -> requests.Response:
    data = {"grant_type": "password", "username": "hubsync", "password": PASSWORD, "scope": ORG}
    return http.post(lms.base_url + TOKEN, data={**data, **form})


def token_of(http: Http, lms: LmsServer) -> str:
    response = login(http, lms)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def fetch(
    http: Http,
    lms: LmsServer,
    token: str | None,
    which: str = "Active",
    *,
    body: Any = NO_BODY,
    params: dict[str, str] | None = None,
    from_date: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    query = {"orgPath": ORG} if params is None else dict(params)
    if from_date is not None:
        query["fromDate"] = from_date
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    kwargs: dict[str, Any] = {} if body is NO_BODY else {"json": body}
    return http.post(lms.base_url + DATA.format(which), params=query, headers=sent, **kwargs)


def ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def ids(payload: dict[str, Any]) -> list[str]:
    return [item["RegistrationId"] for item in payload["Items"]]


def world_ids(lms: LmsServer, statuses: tuple[int, ...]) -> set[str]:
    with lms.world.lock:
        return {
            r.registration_id for r in lms.world.lms_registrations.values() if r.status in statuses
        }


def a_registration(lms: LmsServer, status: int) -> Any:
    with lms.world.lock:
        return next(r for r in lms.world.lms_registrations.values() if r.status == status)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# Token endpoint


def test_base_url_is_the_origin(server):
    assert server.base_url == server.origin == f"http://127.0.0.1:{server.port}"


def test_password_grant_returns_a_bearer_token_pair(http, server):
    response = login(http, server)
    assert response.status_code == 200
    payload = response.json()
    assert set(payload) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert payload["token_type"] == "bearer"
    assert payload["expires_in"] == 3600
    assert payload["access_token"] != payload["refresh_token"]
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("form", [{"password": "wrong"}, {"username": "someone"}, {"password": ""}])
def test_password_grant_rejects_wrong_credentials(http, server, form):
    response = login(http, server, **form)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "The user name or password is incorrect.",
    }


@pytest.mark.parametrize("scope", ["/Root/Other", "", "/Root"])
def test_password_grant_rejects_a_wrong_or_missing_scope(http, server, scope):
    response = login(http, server, scope=scope)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_description"]


def test_user_name_and_scope_compare_case_insensitively(http, server):
    assert login(http, server, username="HubSync", scope="/root/sandbox").status_code == 200
    assert login(http, server, password=PASSWORD.upper()).status_code == 400


@pytest.mark.parametrize("grant", ["client_credentials", "", "Password"])
def test_unknown_grant_type_is_unsupported(http, server, grant):
    response = login(http, server, grant_type=grant)
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


def test_a_json_token_request_is_not_a_form(http, server):
    response = http.post(server.base_url + TOKEN, json={"grant_type": "password"})
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


def test_refresh_grant_issues_a_new_pair_and_uses_up_the_old_refresh_token(http, server):
    first = login(http, server).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = http.post(server.base_url + TOKEN, data=refresh)
    assert second.status_code == 200
    pair = second.json()
    assert set(pair) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert pair["access_token"] != first["access_token"]
    assert pair["refresh_token"] != first["refresh_token"]
    ok(fetch(http, server, pair["access_token"]))
    ok(fetch(http, server, first["access_token"]))  # the old access token lives until it expires
    reused = http.post(server.base_url + TOKEN, data=refresh)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("refresh_token", ["not-a-token", ""])
def test_refresh_grant_rejects_unknown_tokens(http, server, refresh_token):
    response = http.post(
        server.base_url + TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_access_token_expires_after_token_ttl(http, make_server):
    lms = make_server(token_ttl=60)
    pair = login(http, lms).json()
    assert pair["expires_in"] == 60
    lms.world.clock.advance(55)
    ok(fetch(http, lms, pair["access_token"]))
    lms.world.clock.advance(6)
    response = fetch(http, lms, pair["access_token"])
    assert response.status_code == 401
    assert response.json() == {"Message": "Authorization has been denied for this request."}
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_refresh_works_before_expiry_and_fails_after(http, make_server):
    lms = make_server(token_ttl=60)
    first = login(http, lms).json()
    lms.world.clock.advance(50)
    second = http.post(
        lms.base_url + TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
    ).json()
    lms.world.clock.advance(20)  # past the first pair's expiry, within the second's
    assert fetch(http, lms, first["access_token"]).status_code == 401
    ok(fetch(http, lms, second["access_token"]))
    lms.world.clock.advance(45)  # past the second pair's expiry
    late = http.post(
        lms.base_url + TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
    )
    assert late.status_code == 400
    assert late.json()["error"] == "invalid_grant"
    assert fetch(http, lms, second["access_token"]).status_code == 401


@pytest.mark.parametrize("header", [None, "Bearer unknown-token", "Bearer ", "Basic aHViOnN5bmM="])
def test_data_routes_deny_requests_without_a_valid_bearer_token(http, server, header):
    headers = {"Authorization": header} if header else {}
    response = fetch(http, server, None, "Completed", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"Message": "Authorization has been denied for this request."}


def test_admin_route_expires_access_tokens(http, make_server):
    lms = make_server()
    pair = login(http, lms).json()
    expired = http.post(lms.base_url + "/_sandbox/lms/tokens/expire", json={})
    assert expired.json()["expired"] >= 1
    assert fetch(http, lms, pair["access_token"]).status_code == 401
    refreshed = http.post(
        lms.base_url + TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
    )
    assert refreshed.status_code == 200
    http.post(lms.base_url + "/_sandbox/lms/tokens/expire", json={"refresh": True})
    again = http.post(
        lms.base_url + TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]},
    )
    assert again.status_code == 400


# --------------------------------------------------------------------------------------------
# fromDate fence posts


FENCE_POST = datetime(2022, 7, 14, 22, 58, 21, 73000, tzinfo=UTC)  # the seed's DateModified


@pytest.fixture(scope="module")
def fence() -> Iterator[tuple[LmsServer, dict[str, str]]]:
    """A server where one active and one completed registration were modified at the fence post."""
    lms = LmsServer(new_world())
    moved = {"Active": a_registration(lms, 1), "Completed": a_registration(lms, 2)}
    with lms.world.lock:
        for registration in moved.values():
            registration.modified_at = FENCE_POST
    lms.start()
    yield lms, {which: r.registration_id for which, r in moved.items()}
    lms.stop()


@pytest.mark.parametrize("which", ["Completed", "Active"])
def test_the_seed_fence_post_example(http, fence, which):
    lms, moved = fence
    token = token_of(http, lms)
    excluded = ok(fetch(http, lms, token, which, from_date="2022-07-14T23:03:30.000Z"))
    included = ok(fetch(http, lms, token, which, from_date="2022-07-14T23:03:10.000Z"))
    assert moved[which] not in ids(excluded)
    assert moved[which] in ids(included)
    assert included["TotalItems"] == excluded["TotalItems"] + 1


@pytest.mark.parametrize("from_date,included", [
    ("2022-07-14T23:03Z", True),  # the document's yyyy-mm-ddThh:mmZ
    ("2022-07-14T23:03:10Z", True),
    ("2022-07-14T23:03:10+00:00", True),
    ("2022-07-15T01:03:10+02:00", True),
    ("2022-07-14T23:03:10", True),  # no zone: UTC
    ("2022-07-14T23:03:21.0729999Z", True),
    ("2022-07-14T23:03:21.0730000Z", False),  # fence == modified date: strictly greater only
    ("2022-07-14T23:04Z", False),
])  # fmt: skip
def test_from_date_formats_and_strictness(http, fence, from_date, included):
    lms, moved = fence
    payload = ok(fetch(http, lms, token_of(http, lms), "Completed", from_date=from_date))
    assert (moved["Completed"] in ids(payload)) is included


def test_overlap_returns_items_of_the_previous_sync_again(http, make_server):
    lms = make_server()
    token = token_of(http, lms)
    previous = lms.world.clock.now() - timedelta(hours=1)
    this_sync = lms.world.clock.now()
    recent, older = [r for r in lms.world.lms_registrations.values() if r.status == 2][:2]
    with lms.world.lock:
        recent.modified_at = this_sync - timedelta(seconds=299)
        older.modified_at = this_sync - timedelta(seconds=301)
    first = ids(ok(fetch(http, lms, token, "Completed", from_date=iso(previous))))
    second = ids(ok(fetch(http, lms, token, "Completed", from_date=iso(this_sync))))
    assert recent.registration_id in first and older.registration_id in first
    assert second == [recent.registration_id]  # the duplicate a client must de-duplicate


def test_overlap_seconds_option(http, make_server):
    lms = make_server(overlap_seconds=0)
    registration = a_registration(lms, 1)
    now = lms.world.clock.now()
    with lms.world.lock:
        registration.modified_at = now - timedelta(seconds=60)
    payload = ok(fetch(http, lms, token_of(http, lms), from_date=iso(now)))
    assert payload["TotalItems"] == 0


def test_no_from_date_selects_everything_and_a_future_one_nothing(http, server):
    token = token_of(http, server)
    everything = ok(fetch(http, server, token, "Completed"))
    assert set(ids(everything)) == world_ids(server, (2,))
    future = iso(server.world.clock.now() + timedelta(days=1))
    nothing = ok(fetch(http, server, token, "Completed", from_date=future))
    assert nothing == {"Items": [], "TotalItems": 0, "PageSize": 0, "FirstIndexOfNextPage": 0}


def test_late_vessel_completion_comes_with_its_old_completion_date(http, make_server):
    lms = make_server()
    registration = a_registration(lms, 1)
    now = lms.world.clock.now()
    completed_on_board = now - timedelta(days=10)
    with lms.world.lock:
        registration.status = 2
        registration.completion_date = completed_on_board
        registration.modified_at = now
    since = iso(now - timedelta(days=1))  # after the completion date
    payload = ok(fetch(http, lms, token_of(http, lms), "Completed", from_date=since))
    item = next(i for i in payload["Items"] if i["RegistrationId"] == registration.registration_id)
    assert item["CompletionDate"] == format_datetime(completed_on_board)
    learner = lms.world.lms_learners[registration.login]
    assert item["CompletionLocation"] == learner.profile.get("Vessel", item["CompletionLocation"])
    assert item["CompletionLocation"] in VESSELS


def test_a_world_step_shows_up_after_the_previous_from_date(http, make_server):
    lms = make_server()
    token = token_of(http, lms)
    before = lms.world.clock.now()
    lms.world.clock.advance(600)
    summary = lms.world.step()
    completed = ids(ok(fetch(http, lms, token, "Completed", from_date=iso(before))))
    active = ids(ok(fetch(http, lms, token, "Active", from_date=iso(before))))
    changes = summary.changes
    assert set(changes["completion"] + changes["late_vessel_completion"]) <= set(completed)
    assert set(changes["retake"]) <= set(active)
    assert changes["completion"] or changes["late_vessel_completion"]


# --------------------------------------------------------------------------------------------
# Paging and TotalItems


@pytest.mark.parametrize("which,statuses", [("Active", (0, 1)), ("Completed", (2,))])
def test_paging_visits_every_item_once_on_a_quiet_world(http, server, which, statuses):
    token = token_of(http, server)
    seen: list[str] = []
    start, pages = 0, 0
    while True:
        page = ok(fetch(http, server, token, which, body={"PageSize": 7, "StartIndex": start}))
        assert page["PageSize"] == 7 and len(page["Items"]) <= 7
        assert page["FirstIndexOfNextPage"] == start + len(page["Items"])
        seen += ids(page)
        start, pages = page["FirstIndexOfNextPage"], pages + 1
        if start >= page["TotalItems"]:
            break
    assert len(seen) == len(set(seen)) == page["TotalItems"] > 7
    assert set(seen) == world_ids(server, statuses)
    unpaged = ok(fetch(http, server, token, which))
    assert ids(unpaged) == seen  # the same stable order
    assert unpaged["PageSize"] == 0 and unpaged["FirstIndexOfNextPage"] == 0
    registrations = server.world.lms_registrations
    keys = [(registrations[i].registration_date, i) for i in seen]
    assert keys == sorted(keys)


def test_a_start_index_past_the_end_returns_no_items(http, server):
    page = ok(fetch(http, server, token_of(http, server), body={"PageSize": 5, "StartIndex": 999}))
    assert page["Items"] == [] and page["FirstIndexOfNextPage"] == 999
    assert page["TotalItems"] == len(world_ids(server, (0, 1)))


def test_churn_shifts_total_items_between_pages(http, make_server):
    lms = make_server(churn_per_request=2)
    token = token_of(http, lms)
    totals = {"Completed": [], "Active": []}
    for which in ("Completed", "Active", "Completed", "Active"):
        page = ok(fetch(http, lms, token, which, body={"PageSize": 5, "StartIndex": 0}))
        totals[which].append(page["TotalItems"])
    assert totals["Completed"][1] == totals["Completed"][0] + 4  # two requests of churn since
    assert totals["Active"][1] == totals["Active"][0] - 4
    assert fetch(http, lms, "bad-token").status_code == 401
    after_401 = ok(fetch(http, lms, token, "Completed", body={"PageSize": 5}))
    assert after_401["TotalItems"] == totals["Completed"][1] + 4  # no churn for a rejected call


def test_churn_is_settable_at_run_time(http, make_server):
    lms = make_server()
    url = lms.base_url + "/_sandbox/lms/churn"
    assert http.get(url).json() == {"per_request": 0}
    token = token_of(http, lms)
    quiet = [ok(fetch(http, lms, token, "Completed"))["TotalItems"] for _ in range(2)]
    assert quiet[0] == quiet[1]
    assert http.post(url, json={"per_request": 3}).json() == {"per_request": 3}
    assert http.get(url).json() == {"per_request": 3}
    busy = [ok(fetch(http, lms, token, "Completed"))["TotalItems"] for _ in range(2)]
    assert busy[1] == busy[0] + 3
    for bad in ({"per_request": -1}, {"per_request": "2"}, {}, [1]):
        assert http.post(url, json=bad).status_code == 400


# --------------------------------------------------------------------------------------------
# Items


def test_active_items_carry_exactly_the_seed_fields(http, server):
    payload = ok(fetch(http, server, token_of(http, server)))
    assert payload["Items"]
    world = server.world
    for item in payload["Items"]:
        assert list(item) == ACTIVE_KEYS
        assert item["RegistrationStatus"] in (0, 1)
        registration = world.lms_registrations[item["RegistrationId"]]
        learner = world.lms_learners[registration.login]
        course = world.lms_courses[registration.course_id]
        person = world.persons[learner.pid]
        assert (item["FirstName"], item["LastName"]) == (person.given, person.family)
        assert item["OrganizationLoginId"] == learner.login
        assert item["UniqueLoginId"] == learner.unique_login
        assert (item["EmailAddress"], item["ContactEmail"]) == (
            learner.email,
            learner.contact_email,
        )
        assert (
            item["CourseCode"],
            item["CourseName"],
            item["CourseId"],
            item["OfferingShortId"],
        ) == (course.code, course.name, course.course_id, course.offering_short_id)
        assert DATETIME.match(item["RegistrationDate"])
        assert parse_from_date(item["RegistrationDate"]) == registration.registration_date
        assert item["OrgProfileFieldValues"] == [
            {"Name": k, "Value": v} for k, v in sorted(learner.profile.items())
        ]


def test_completed_items_add_completion_date_and_location(http, server):
    payload = ok(fetch(http, server, token_of(http, server), "Completed"))
    assert payload["Items"]
    for item in payload["Items"]:
        assert list(item) == COMPLETED_KEYS
        assert item["RegistrationStatus"] == 2
        assert DATETIME.match(item["CompletionDate"]) and DATETIME.match(item["RegistrationDate"])
        registration = server.world.lms_registrations[item["RegistrationId"]]
        assert parse_from_date(item["CompletionDate"]) == registration.completion_date
        vessel = server.world.lms_learners[registration.login].profile.get("Vessel")
        assert item["CompletionLocation"] == (vessel or "Shore")


def test_crew_learners_show_their_vessel_profile_field(http, server):
    payload = ok(fetch(http, server, token_of(http, server), "Completed"))
    crew = [
        i
        for i in payload["Items"]
        if any(f["Name"] == "Vessel" for f in i["OrgProfileFieldValues"])
    ]
    assert crew
    for item in crew:
        fields = {f["Name"]: f["Value"] for f in item["OrgProfileFieldValues"]}
        assert item["CompletionLocation"] == fields["Vessel"] in VESSELS
        assert [f["Name"] for f in item["OrgProfileFieldValues"]][0] == "Rank"


def test_respond_xml_answers_application_xml(http, make_server):
    lms = make_server(respond_xml=True)
    token = token_of(http, lms)
    response = fetch(http, lms, token, "Completed", body={"PageSize": 3, "StartIndex": 0})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/xml")
    with pytest.raises(ValueError):
        response.json()
    root = ElementTree.fromstring(response.content)
    ns = {"d": root.tag[1:].split("}")[0]}
    assert int(root.findtext("d:TotalItems", namespaces=ns)) == len(world_ids(lms, (2,)))
    assert root.findtext("d:PageSize", namespaces=ns) == "3"
    items = root.findall("d:Items/d:RegistrationData", ns)
    assert len(items) == 3
    assert items[0].findtext("d:RegistrationStatus", namespaces=ns) == "2"
    assert items[0].find("d:OrgProfileFieldValues/d:OrgProfileFieldValue/d:Name", ns) is not None


def test_accept_header_negotiates_xml_like_web_api(http, server):
    token = token_of(http, server)
    xml = fetch(http, server, token, headers={"Accept": "application/xml"})
    assert xml.headers["Content-Type"].startswith("application/xml")
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert (
        fetch(http, server, token, headers={"Accept": browser})
        .headers["Content-Type"]
        .startswith("application/xml")
    )
    both = fetch(http, server, token, headers={"Accept": "application/json, application/xml"})
    assert both.headers["Content-Type"].startswith("application/json")


# --------------------------------------------------------------------------------------------
# Bad requests


@pytest.mark.parametrize(
    "size,ok_", [(0, False), (1, True), (60000, True), (60001, False), (-5, False)]
)
def test_page_size_bounds(http, server, size, ok_):
    response = fetch(http, server, token_of(http, server), body={"PageSize": size, "StartIndex": 0})
    if ok_:
        assert response.status_code == 200 and response.json()["PageSize"] == size
    else:
        assert response.status_code == 400
        assert response.json() == {"Message": "PageSize must be between 1 and 60000"}


def test_page_size_range_option(http, make_server):
    lms = make_server(page_size_range=(10, 20))
    token = token_of(http, lms)
    assert fetch(http, lms, token, body={"PageSize": 9}).json() == {
        "Message": "PageSize must be between 10 and 20"
    }
    assert fetch(http, lms, token, body={"PageSize": 10}).status_code == 200


@pytest.mark.parametrize("body,message", [
    ({"PageSize": 5, "StartIndex": -1}, "StartIndex must be greater than or equal to 0"),
    ({}, "PageSize must be between 1 and 60000"),
    ({"StartIndex": 0}, "PageSize must be between 1 and 60000"),
])  # fmt: skip
def test_bad_paging_values(http, server, body, message):
    response = fetch(http, server, token_of(http, server), body=body)
    assert response.status_code == 400
    assert response.json() == {"Message": message}


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        "PageSize",
        {"PageSize": "ten"},
        {"PageSize": 2.5},
        {"PageSize": True},
        {"PageSize": None},
    ],
)
def test_unbindable_bodies_are_invalid_requests(http, server, body):
    response = fetch(http, server, token_of(http, server), body=body)
    assert response.status_code == 400
    assert response.json()["Message"] == "The request is invalid."
    assert response.json()["MessageDetail"]


def test_json_paging_keys_are_case_insensitive_and_numeric_strings_bind(http, server):
    page = ok(fetch(http, server, token_of(http, server), body={"pagesize": "4", "startindex": 1}))
    assert len(page["Items"]) == 4 and page["FirstIndexOfNextPage"] == 5


def test_a_null_body_means_no_paging(http, server):
    page = ok(fetch(http, server, token_of(http, server), body=None))
    assert page["PageSize"] == 0 and len(page["Items"]) == page["TotalItems"]


def test_a_body_that_is_not_json_is_rejected(http, server):
    headers = {
        "Authorization": f"Bearer {token_of(http, server)}",
        "Content-Type": "application/json",
    }
    response = http.post(
        server.base_url + DATA.format("Active"),
        params={"orgPath": ORG},
        data=b"{PageSize: 5",
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json()["Message"] == "The request is invalid."


def test_a_body_of_another_media_type_is_unsupported(http, server):
    headers = {"Authorization": f"Bearer {token_of(http, server)}", "Content-Type": "text/plain"}
    response = http.post(
        server.base_url + DATA.format("Active"),
        params={"orgPath": ORG},
        data=b'{"PageSize": 5}',
        headers=headers,
    )
    assert response.status_code == 415
    assert "text/plain" in response.json()["Message"]


@pytest.mark.parametrize("params,message", [
    ({}, "The orgPath parameter is required."),
    ({"orgPath": ""}, "The orgPath parameter is required."),
    ({"orgPath": "/Root/Other"}, "The organization path '/Root/Other' was not found."),
])  # fmt: skip
def test_org_path_must_be_the_configured_one(http, server, params, message):
    response = fetch(http, server, token_of(http, server), "Completed", params=params)
    assert response.status_code == 400
    assert response.json() == {"Message": message}


@pytest.mark.parametrize(
    "from_date",
    [
        "yesterday",
        "2022-13-01T00:00Z",
        "2022-07-14T25:00Z",
        "14.07.2022",
        "2022-07-14T23:03:30+99:00",
        "2022-07-14T23:03:30.12345678Z",
    ],
)
def test_malformed_from_date_is_an_invalid_request(http, server, from_date):
    response = fetch(http, server, token_of(http, server), from_date=from_date)
    assert response.status_code == 400
    assert response.json()["Message"] == "The request is invalid."
    assert from_date in response.json()["MessageDetail"]


def test_an_unencoded_plus_in_from_date_arrives_as_a_space(http, server):
    token = token_of(http, server)
    url = (
        f"{server.base_url}{DATA.format('Active')}?orgPath={ORG}&fromDate=2022-07-14T23:03:30+00:00"
    )
    response = http.post(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400
    assert response.json()["Message"] == "The request is invalid."


def test_suppress_course_code_filtering_is_accepted_when_boolean(http, server):
    token = token_of(http, server)
    plain = ok(fetch(http, server, token))
    for value in ("true", "False"):
        params = {"orgPath": ORG, "suppressCourseCodeFiltering": value}
        assert ok(fetch(http, server, token, params=params))["TotalItems"] == plain["TotalItems"]
    params = {"orgPath": ORG, "suppressCourseCodeFiltering": "maybe"}
    response = fetch(http, server, token, params=params)
    assert response.status_code == 400
    assert response.json()["Message"] == "The request is invalid."


def test_paths_and_query_names_are_case_insensitive(http, server):
    token = http.post(
        server.base_url + "/Services/API/OAuth2/Token",
        data={"grant_type": "password", "username": "hubsync", "password": PASSWORD, "scope": ORG},
    ).json()["access_token"]
    url = server.base_url + "/services/api/externalregistration/getactiveregistrationdata"
    response = http.post(
        url,
        params={"orgpath": ORG, "FROMDATE": "2000-01-01T00:00Z"},
        headers={"Authorization": f"bearer {token}"},
    )
    assert response.status_code == 200
    assert response.json()["TotalItems"] == len(world_ids(server, (0, 1)))


def test_unknown_routes_and_methods_answer_like_web_api(http, server):
    missing = http.post(server.base_url + "/Services/api/ExternalRegistration/Nope?x=1")
    assert missing.status_code == 404
    assert missing.json() == {
        "Message": "No HTTP resource was found that matches the request "
        f"URI '{server.base_url}/Services/api/"
        "ExternalRegistration/Nope?x=1'."
    }
    wrong_method = http.get(server.base_url + DATA.format("Active"))
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {
        "Message": "The requested resource does not support http method 'GET'."
    }


def test_options_are_validated():
    world = new_world()
    for options in (
        {"token_ttl": 0},
        {"page_size_range": (0, 10)},
        {"page_size_range": (20, 10)},
        {"overlap_seconds": -1},
        {"churn_per_request": -1},
    ):
        with pytest.raises(ValueError):
            LmsServer(world, **options)


def test_parse_and_format_round_trip():
    moment = datetime(2017, 7, 7, 22, 13, 49, 367000, tzinfo=UTC)
    assert format_datetime(moment) == "2017-07-07T22:13:49.3670000Z"
    assert parse_from_date("2017-07-07T22:13:49.3670000Z") == moment
    assert parse_from_date("2017-07-08T00:13:49.367+0200") == moment


# --------------------------------------------------------------------------------------------
# Faults


@pytest.fixture
def faulty(http, server) -> Iterator[Callable[..., str]]:
    """Scripts one fault for the next data request on the shared server; returns a token."""

    def arm(kind: str, **config: Any) -> str:
        token = token_of(http, server)
        setting = {"script": [kind], "path_filter": "ExternalRegistration", **config}
        assert http.post(server.base_url + "/_sandbox/faults", json=setting).status_code == 200
        return token

    yield arm
    http.post(server.base_url + "/_sandbox/faults", json={})


def test_fault_error_503_is_the_iis_page(http, server, faulty):
    token = faulty("error")
    response = fetch(http, server, token)
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Service Unavailable" in response.text
    ok(fetch(http, server, token))  # the script is used up


def test_fault_error_500_is_web_api_json(http, server, faulty):
    token = faulty("error", error_status=500)
    response = fetch(http, server, token)
    assert response.status_code == 500
    assert response.json() == {"Message": "An error has occurred."}


def test_fault_rate_limit(http, server, faulty):
    token = faulty("rate_limit", retry_after=7)
    response = fetch(http, server, token, "Completed")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert "quota" in response.json()["Message"]


def test_fault_drop(http, server, faulty):
    token = faulty("drop")
    dropped = server.request_count("(dropped)")
    with pytest.raises(requests.ConnectionError):
        fetch(http, server, token, "Completed")
    assert server.request_count("(dropped)") == dropped + 1


def test_fault_truncate(http, server, faulty):
    token = faulty("truncate")
    response = fetch(http, server, token, "Completed")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert len(response.content) < len(fetch(http, server, token, "Completed").content)


def test_fault_slow(http, server, faulty):
    token = faulty("slow", slow_ms=300)
    started = time.perf_counter()
    ok(fetch(http, server, token))
    assert time.perf_counter() - started >= 0.3
