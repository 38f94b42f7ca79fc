"""The Stud.IP client: paging, collections, types, errors, OAuth1 and the crawl."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from oauthlib.oauth1 import Client as OAuthClient
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from responses import matchers

from resources import studip as studip_module
from resources.http import ApiError, RetryPolicy
from resources.settings import load_settings
from resources.studip import (
    CRAWL_ROUTES,
    CourseMember,
    SemesterSelectionError,
    StudipAuthError,
    StudipClient,
    StudipError,
    StudipMember,
    StudIPResource,
    StudipRouteNotActivated,
    StudipRoutesMissing,
    StudipSemester,
    collection_values,
    select_semesters,
    studip_resource,
)
from sandbox.expected import crawl_studip, default_seed_ids, default_semester_ids
from sandbox.http import FaultConfig
from sandbox.studip import StudipServer
from sandbox.world import World
from tests.contract import recordings

BASE = "https://studip.example.test/api.php"
U1, U2, U3 = "1" * 32, "2" * 32, "3" * 32
C1, C2 = "c" * 32, "d" * 32
S1 = "5" * 32
OAUTH = ("hubsync-consumer", "sandbox-consumer-secret", "hubsync-token", "sandbox-token-secret")


def resource(**overrides: Any) -> StudIPResource:
    config: dict[str, Any] = {
        "api_url": BASE,
        "username": "hubsync-api",
        "password": "sandbox-studip-password",
        "page_size": 2,
    }
    return StudIPResource(**{**config, **overrides})


@pytest.fixture
def client() -> StudipClient:
    return resource().client(retry_policy=RetryPolicy(attempts=3, backoff_s=0))


def member(user_id: str, status: str = "autor") -> dict[str, Any]:
    name = {"username": f"u{user_id[:3]}", "formatted": "", "family": "", "given": ""}
    return {
        "member": {"id": user_id, "href": f"/api.php/user/{user_id}", "name": name},
        "status": status,
    }


def collection(items: list[dict[str, Any]], key: str = "member") -> dict[str, Any] | list[Any]:
    return {f"/api.php/user/{item[key]['id']}": item for item in items} if items else []


def page(items: list[dict[str, Any]], total: int, offset: int, limit: int) -> dict[str, Any]:
    pagination: dict[str, Any] = {"total": total, "offset": offset, "limit": limit}
    if total > limit:
        last = (total - 1) // limit * limit
        link = f"/api.php/course/{C1}/members?offset=%d&limit={limit}"
        pagination["links"] = {
            "first": link % 0,
            "previous": link % max(0, offset - limit),
            "next": link % min(last, offset + limit),
            "last": link % last,
        }
    return {"collection": collection(items), "pagination": pagination}


def members_url() -> str:
    return f"{BASE}/course/{C1}/members"


def expect(offset: int, limit: int, body: Any, status: int = 200) -> None:
    responses.get(
        members_url(),
        json=body,
        status=status,
        match=[matchers.query_param_matcher({"offset": str(offset), "limit": str(limit)})],
    )


# -- paging ------------------------------------------------------------------------------------


@responses.activate
def test_paging_uses_its_own_offset_not_the_rounded_one_and_stops_on_total(
    client: StudipClient,
) -> None:
    users = [U1, U2, U3]
    # The server rounds the reported offset down and clamps next: only offset + items counts.
    expect(0, 2, page([member(u) for u in users[:2]], 3, 0, 2))
    expect(2, 2, page([member(users[2])], 3, 2, 2))
    pages = list(client.course_members(C1))
    assert [p.page_nr for p in pages] == [0, 1]
    assert [m.user_id for p in pages for m in p.records] == users
    assert len(responses.calls) == 2, "stops on offset + items >= total, not on the links"


@responses.activate
def test_paging_with_a_rounded_reported_offset() -> None:
    client = resource(page_size=3).client()
    # Sent offset 3 with limit 3 but the server says offset 0 (rounded): ignored.
    expect(0, 3, page([member(U1), member(U2), member(U3)], 4, 0, 3))
    expect(3, 3, page([member(C2)], 4, 0, 3))
    assert sum(len(p.records) for p in client.course_members(C1)) == 4
    assert len(responses.calls) == 2


@responses.activate
def test_an_empty_collection_is_a_list(client: StudipClient) -> None:
    expect(0, 2, {"collection": [], "pagination": {"total": 0, "offset": 0, "limit": 2}})
    pages = list(client.course_members(C1))
    assert len(pages) == 1 and pages[0].records == [] and pages[0].total == 0


@responses.activate
def test_no_links_when_total_fits_one_page(client: StudipClient) -> None:
    body = page([member(U1)], 1, 0, 2)
    assert "links" not in body["pagination"]
    expect(0, 2, body)
    assert [m.user_id for p in client.course_members(C1) for m in p.records] == [U1]
    assert len(responses.calls) == 1


@responses.activate
def test_an_empty_page_before_total_ends_the_paging(client: StudipClient) -> None:
    expect(0, 2, page([member(U1), member(U2)], 5, 0, 2))
    expect(2, 2, {"collection": [], "pagination": {"total": 5, "offset": 2, "limit": 2}})
    assert len(list(client.course_members(C1))) == 2


def serve_members(
    users: list[str], *, total: Any = None, short_at: int | None = None, ignore_offset: bool = False
) -> list[tuple[int, int]]:
    """A members route answering every offset from ``users`` (``total``: what it reports,
    ``len(users)`` by default, or a function of the offset; ``short_at``: the page at this
    offset has one item only; ``ignore_offset``: the first page for every offset). Returns the
    (offset, limit) of each request as it comes."""
    asked: list[tuple[int, int]] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        with flight.lock:
            flight.now += 1
            flight.peak = max(flight.peak, flight.now)
        time.sleep(flight.latency_s)
        with flight.lock:
            flight.now -= 1
        query = dict(parse_qsl(urlsplit(request.url).query))
        offset, limit = int(query["offset"]), int(query["limit"])
        asked.append((offset, limit))
        start = 0 if ignore_offset else offset
        items = [member(u) for u in users[start : start + (1 if offset == short_at else limit)]]
        reported = len(users) if total is None else total(offset) if callable(total) else total
        return 200, {}, json.dumps(page(items, reported, offset, limit))

    responses.add_callback(responses.GET, members_url(), callback=answer)
    return asked


class _Flight:
    """Requests in flight at the members route (``peak``: the most at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.latency_s = 0.0


flight = _Flight()


def ids(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(n)]


@responses.activate
def test_a_courses_pages_after_the_first_are_read_ahead_and_come_in_order() -> None:
    client = resource(page_size=2, concurrency=3).client()
    users = ids(11)
    asked = serve_members(users)
    flight.peak, flight.latency_s = 0, 0.02
    try:
        pages = list(client.course_members(C1))
    finally:
        flight.latency_s = 0.0
    assert [p.page_nr for p in pages] == [0, 1, 2, 3, 4, 5]
    assert [m.user_id for p in pages for m in p.records] == users
    assert asked[0] == (0, 2) and sorted(asked[1:]) == [(o, 2) for o in range(2, 12, 2)]
    assert flight.peak == 3, f"expected 3 requests in flight at the peak, saw {flight.peak}"


@responses.activate
def test_a_server_ignoring_the_offset_fails_reading_ahead_too() -> None:
    client = resource(page_size=2, concurrency=4).client()
    asked = serve_members(ids(10), ignore_offset=True)
    with pytest.raises(ApiError, match="paging does not end: page 1 repeats page 0"):
        list(client.course_members(C1))
    assert len(asked) <= 5, "no more requests than the total needs"


@responses.activate
def test_a_total_past_studip_max_pages_asks_for_no_page_ahead() -> None:
    client = resource(page_size=2, concurrency=4).client()
    client.max_pages = 3
    asked = serve_members(ids(10))  # 5 pages
    with pytest.raises(ApiError, match=r"more than 3 pages \(STUDIP_MAX_PAGES\)"):
        list(client.course_members(C1))
    assert asked == [(0, 2)]


@responses.activate
def test_a_short_page_among_those_read_ahead_goes_on_from_where_it_ends() -> None:
    """The page at offset 2 has one member (a server that leaves some out after its LIMIT):
    the pages read ahead start one member too far, so they are dropped and paging goes on
    from offset 3, one page after another, as it would have without reading ahead."""
    client = resource(page_size=2, concurrency=4).client()
    users = ids(7)
    asked = serve_members(users, short_at=2)
    read = [m.user_id for p in client.course_members(C1) for m in p.records]
    assert read == users
    assert asked[-2:] == [(3, 2), (5, 2)]


@responses.activate
def test_a_course_deleted_while_its_pages_are_read_ahead_ends_as_gone() -> None:
    """A 404 on a page read ahead ends the paging as one page after another would: the pages
    before it, then an empty page with ``found=False``."""
    client = resource(page_size=2, concurrency=4).client()
    users = ids(6)
    expect(0, 2, page([member(u) for u in users[:2]], 6, 0, 2))
    expect(2, 2, {"collection": [], "pagination": {}}, status=404)
    expect(4, 2, page([member(u) for u in users[4:]], 6, 4, 2))
    pages = list(client.course_members(C1))
    assert [(p.page_nr, p.found) for p in pages] == [(0, True), (1, False)]
    assert [m.user_id for m in pages[0].records] == users[:2] and not pages[1].records


@responses.activate
def test_a_total_that_grew_while_reading_ahead_is_read_to_its_end() -> None:
    client = resource(page_size=2, concurrency=4).client()
    users = ids(8)
    serve_members(users, total=lambda offset: 4 if offset == 0 else 8)
    read = [m.user_id for p in client.course_members(C1) for m in p.records]
    assert read == users


@responses.activate
def test_a_malformed_record_is_rejected_with_its_reason_and_the_rest_kept(
    client: StudipClient,
) -> None:
    bad = member(U2, status="superuser")
    expect(0, 2, page([member(U1), bad], 2, 0, 2))
    (only,) = list(client.course_members(C1))
    assert [m.user_id for m in only.records] == [U1]
    (rejected,) = only.rejected
    assert rejected.record_key == U2 and "status" in rejected.reason


def course(course_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "course_id": course_id,
        "number": "12345",
        "title": "Test",
        "subtitle": "",
        "type": "1",
        "start_semester": f"/api.php/semester/{S1}",
        "end_semester": f"/api.php/semester/{S1}",
        "group": 5,
        **fields,
    }


@responses.activate
def test_mixed_types_are_normalised(client: StudipClient) -> None:
    body = {
        "collection": {
            f"/api.php/course/{C1}": course(C1, type=1, group="5", number=12345),
            f"/api.php/course/{C2}": course(
                C2, type="99", start_semester=None, end_semester=None, group=8
            ),
        },
        "pagination": {"total": 2, "offset": 0, "limit": 2},
    }
    responses.get(f"{BASE}/user/{U1}/courses", json=body)
    (only,) = list(client.user_courses(U1, S1))
    first, group = only.records
    assert (first.type, first.group, first.number, first.start_semester_id) == ("1", 5, "12345", S1)
    assert (group.type, group.start_semester_id, group.end_semester_id) == ("99", None, None)
    assert responses.calls[0].request.params["semester"] == S1
    assert only.request_key == f"/user/{U1}/courses?semester={S1}"


@responses.activate
def test_semester_times_as_strings_become_ints(client: StudipClient) -> None:
    semester = {"id": S1, "title": "WS 2024/2025", "token": "", "begin": "1727733600",
                "end": 1743458399, "seminars_begin": 1729461600, "seminars_end": 1738969199,
                "visible": 1}  # fmt: skip
    responses.get(
        f"{BASE}/semesters",
        json={"collection": {f"/api.php/semester/{S1}": semester},
              "pagination": {"total": 1, "offset": 0, "limit": 2}},
    )  # fmt: skip
    (only,) = list(client.semesters())
    assert only.records[0].begin == 1727733600


@responses.activate
def test_institutes_come_as_work_and_study(client: StudipClient) -> None:
    inst = {"institute_id": C1, "name": "Test Einrichtung", "perms": "dozent",
            "faculty_name": "Test Fakultät"}  # fmt: skip
    responses.get(
        f"{BASE}/user/{U1}/institutes",
        json={"collection": {"work": [inst], "study": []},
              "pagination": {"total": 1, "offset": 0, "limit": 20}},
    )  # fmt: skip
    responses.get(
        f"{BASE}/user/{U2}/institutes",
        json={"collection": [], "pagination": {"total": 0, "offset": 0, "limit": 20}},
    )
    (work,) = list(client.user_institutes(U1))
    assert [(r, i.institute_id, i.perms) for r, i in work.records] == [("work", C1, "dozent")]
    (empty,) = list(client.user_institutes(U2))
    assert empty.records == []


@responses.activate
def test_user_datafields_become_a_map(client: StudipClient) -> None:
    user = {
        "user_id": U1, "username": "s1", "perms": "autor", "email": "a@b.at",
        "name": {"username": "s1", "formatted": "A B", "family": "B", "given": "A"},
        "datafields": [
            {"id": "x", "name": "Matrikelnummer", "type": "textline", "value": "1234567"},
            {"id": "y", "name": "CPF", "type": "textline", "value": None},
        ],
    }  # fmt: skip
    responses.get(f"{BASE}/user/{U1}", json=user)
    (record,) = client.user_page(U1).records
    assert record.datafield_map == {"Matrikelnummer": "1234567"}


# -- errors ------------------------------------------------------------------------------------


@responses.activate
def test_401_is_an_auth_error_naming_the_settings(client: StudipClient) -> None:
    responses.get(
        f"{BASE}/user",
        body="HTTP/1.1 401 Unauthorized (no consumer)",
        status=401,
        content_type="text/html",
        headers={"WWW-Authenticate": 'Basic realm="x"'},
    )
    with pytest.raises(StudipAuthError, match="STUDIP_USERNAME/STUDIP_PASSWORD") as error:
        client.user_page()
    assert error.value.status == 401 and "sandbox-studip-password" not in str(error.value)


@responses.activate
def test_403_route_not_activated_names_the_route(client: StudipClient) -> None:
    responses.get(members_url(), body="Route not activated", status=403,
                  content_type="text/plain")  # fmt: skip
    with pytest.raises(StudipRouteNotActivated, match="/course/:course_id/members") as error:
        list(client.course_members(C1))
    assert error.value.route == "/course/:course_id/members"
    assert "administrator" in str(error.value)


@responses.activate
def test_404_is_data_not_a_crash(client: StudipClient) -> None:
    responses.get(f"{BASE}/user/{U1}", json=f"User {U1} not found", status=404)
    responses.get(members_url(), json="Course not found", status=404)
    gone = client.user_page(U1)
    assert (gone.found, gone.records) == (False, [])
    (members,) = list(client.course_members(C1))
    assert (members.found, members.records, members.body) == (False, [], b"null")


@responses.activate
def test_an_unknown_route_is_an_error_not_a_missing_object(client: StudipClient) -> None:
    responses.get(members_url(), body="HTTP/1.1 404 Not Found", status=404,
                  content_type="text/html")  # fmt: skip
    with pytest.raises(StudipError, match="STUDIP_API_URL") as error:
        list(client.course_members(C1))
    assert error.value.status == 404


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<!DOCTYPE html><html><body>Fehler! isReadable() on null</body></html>", "text/html"),
        ('{"status":500,"message":"Sie haben nicht die Berechtigung"}', "application/json"),
    ],
)
@responses.activate
def test_500_is_retried_then_fails_with_route_and_status(
    client: StudipClient, body: str, content_type: str
) -> None:
    responses.get(members_url(), body=body, status=500, content_type=content_type)
    with pytest.raises(StudipError, match="/course/:course_id/members") as error:
        list(client.course_members(C1))
    assert error.value.status == 500
    assert f"/course/{C1}/members" in str(error.value) and "-> 500" in str(error.value)
    assert len(responses.calls) == 3, "retried"


@responses.activate
def test_500_then_success_is_retried_transparently(client: StudipClient) -> None:
    responses.get(members_url(), body="<html>PHP</html>", status=500, content_type="text/html")
    expect(0, 2, page([member(U1)], 1, 0, 2))
    assert [m.user_id for p in client.course_members(C1) for m in p.records] == [U1]


@responses.activate
def test_a_rejected_oauth_signature_is_an_auth_error(client: StudipClient) -> None:
    responses.get(
        f"{BASE}/user",
        json={"status": 500, "message": "Verification of signature failed (signature base ..."},
        status=500,
    )
    with pytest.raises(StudipAuthError, match="OAuth1 signature was rejected"):
        client.user_page()


@responses.activate
def test_discovery_failure_lists_the_missing_routes(client: StudipClient) -> None:
    offered = {route: {"get": "x"} for route in CRAWL_ROUTES if "members" not in route}
    offered["/user/:user_id/institutes"] = {"delete": None}
    responses.get(f"{BASE}/discovery", json=offered)
    with pytest.raises(StudipRoutesMissing) as error:
        client.check_routes(CRAWL_ROUTES)
    assert error.value.missing == ("/user/:user_id/institutes", "/course/:course_id/members")
    assert "GET /course/:course_id/members" in str(error.value)
    assert "administrator" in str(error.value)


# -- OAuth1 --------------------------------------------------------------------------------------


@responses.activate
def test_oauth1_requests_carry_a_valid_hmac_sha1_signature() -> None:
    key, secret, token, token_secret = OAUTH
    client = resource(
        oauth_consumer_key=key,
        oauth_consumer_secret=secret,
        oauth_token=token,
        oauth_token_secret=token_secret,
    ).client()
    responses.get(
        f"{BASE}/semesters",
        json={"collection": [], "pagination": {"total": 0, "offset": 0, "limit": 2}},
    )
    list(client.semesters())
    request = responses.calls[0].request
    header = request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    assert header.startswith("OAuth ") and 'oauth_signature_method="HMAC-SHA1"' in header
    params = oauth_signature.collect_parameters(
        uri_query=request.url.split("?", 1)[1], headers={"Authorization": header},
        exclude_oauth_signature=False,
    )  # fmt: skip
    signature = dict(params)["oauth_signature"]
    base_string = oauth_signature.signature_base_string(
        "GET",
        oauth_signature.base_string_uri(request.url.split("?")[0]),
        oauth_signature.normalize_parameters([(k, v) for k, v in params if k != "oauth_signature"]),
    )

    def sign(consumer_secret: str) -> str:
        signer = OAuthClient(key, client_secret=consumer_secret, resource_owner_secret=token_secret)
        return oauth_signature.sign_hmac_sha1_with_client(base_string, signer)

    assert sign(secret) == signature
    assert sign("wrong") != signature


@pytest.fixture(scope="module")
def world() -> World:
    return World(11, 60, today=date(2026, 11, 23))


@pytest.fixture
def server(world: World) -> Iterator[StudipServer]:
    server = StudipServer(world)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_oauth1_against_the_sandbox(server: StudipServer) -> None:
    key, secret, token, token_secret = OAUTH
    settings = load_settings(
        {
            "STUDIP_API_URL": server.base_url,
            "STUDIP_OAUTH_CONSUMER_KEY": key,
            "STUDIP_OAUTH_CONSUMER_SECRET": secret,
            "STUDIP_OAUTH_TOKEN": token,
            "STUDIP_OAUTH_TOKEN_SECRET": token_secret,
        }
    )
    studip = studip_resource(settings.studip)
    assert studip.uses_oauth1
    (me,) = studip.client().user_page().records
    assert me.username == "hubsync-api"
    wrong = studip.model_copy(update={"oauth_consumer_secret": "not-it"})
    with pytest.raises(StudipAuthError, match="signature"):
        wrong.client(retry_policy=RetryPolicy(attempts=1)).user_page()


def test_basic_auth_with_a_wrong_password_fails_clearly(server: StudipServer) -> None:
    studip = resource(api_url=server.base_url, password="wrong")
    with pytest.raises(StudipAuthError, match="401"):
        studip.client().user_page()


# -- semesters ---------------------------------------------------------------------------------


def semester(n: int, begin: int, end: int, title: str) -> StudipSemester:
    return StudipSemester(id=f"{n:032x}", title=title, begin=begin, end=end)


SEMESTERS = [
    semester(1, 100, 199, "SS 2026"),
    semester(3, 300, 399, "SS 2027"),
    semester(2, 200, 299, "WS 2026/2027"),
]


def at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def test_current_and_next_semesters_by_date() -> None:
    assert select_semesters(SEMESTERS, ["current", "next"], at(250)) == [f"{2:032x}", f"{3:032x}"]
    assert select_semesters(SEMESTERS, ["SS 2026", f"{3:032x}"], at(250)) == [
        f"{1:032x}",
        f"{3:032x}",
    ]


def test_unknown_or_missing_semesters_fail_listing_the_known_ones() -> None:
    with pytest.raises(SemesterSelectionError, match="'WS 1999'.*SS 2026, WS 2026/2027"):
        select_semesters(SEMESTERS, ["WS 1999"], at(250))
    with pytest.raises(SemesterSelectionError, match="no next semester"):
        select_semesters(SEMESTERS, ["next"], at(350))


# -- the crawl ---------------------------------------------------------------------------------


def served(server: StudipServer, route: str) -> int:
    """Requests the server answered for exactly this route template."""
    return server.counts.get(f"GET /api.php{route}", 0)


def seeds(world: World) -> list[str]:
    return default_seed_ids(world)


def test_the_crawl_reaches_closure_and_requests_nothing_twice(
    server: StudipServer, world: World
) -> None:
    client = resource(api_url=server.base_url, page_size=20).client()
    semester_ids = default_semester_ids(world)
    pages = list(client.crawl(seeds(world), semester_ids))

    users, courses = crawl_studip(world, semester_ids, seeds(world))
    reached = {p.records[0].user_id for p in pages if p.route == "/user/:user_id"}
    member_reads = [p.subject for p in pages if p.route == "/course/:course_id/members"]
    assert reached == users
    assert set(member_reads) == courses
    requests_sent = [(p.request_key, p.page_nr) for p in pages]
    assert len(requests_sent) == len(set(requests_sent)), "nothing requested twice"
    assert served(server, "/user/:user_id") == len(users)
    assert served(server, "/user/:user_id/courses") == len(
        [p for p in pages if p.route == "/user/:user_id/courses"]
    )
    assert served(server, "/course/:course_id/members") == len(member_reads)
    assert server.request_count() == len(pages)


def test_known_users_are_not_expanded(server: StudipServer, world: World) -> None:
    client = resource(api_url=server.base_url).client()
    semester_ids = default_semester_ids(world)
    users, _ = crawl_studip(world, semester_ids, seeds(world))
    seed = world.seed_dozent_id
    pages = list(client.crawl([seed], semester_ids, known_users=users))
    assert {p.subject for p in pages if p.route.startswith("/user/")} == {seed}


class InFlight:
    """Counts the client's requests in flight; ``peak`` is the most at once."""

    def __init__(self, client: StudipClient) -> None:
        self.now, self.peak = 0, 0
        self._lock = threading.Lock()
        self._send = client.http.session.request
        client.http.session.request = self._counting  # type: ignore[method-assign]

    def _counting(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return self._send(*args, **kwargs)
        finally:
            with self._lock:
                self.now -= 1


def test_concurrency_stays_within_its_bound(server: StudipServer, world: World) -> None:
    server.faults.configure(FaultConfig(latency_ms=15))
    client = resource(api_url=server.base_url, concurrency=3).client()
    flight = InFlight(client)
    started = time.perf_counter()
    pages = list(client.crawl(seeds(world), default_semester_ids(world)))
    assert len(pages) > 20
    assert flight.peak == 3, f"expected exactly 3 requests in flight at the peak, saw {flight.peak}"
    assert time.perf_counter() - started > 0.015 * len(pages) / 3
    server.faults.configure(FaultConfig())


def test_user_pages_are_read_concurrently_and_come_in_order(
    server: StudipServer, world: World
) -> None:
    """The hits of a name search are read ``concurrency`` at a time (at 100,000 students a
    changed student's full name had about 30 hits, read one after another), in their order;
    an unknown id gives its page without a record."""
    server.faults.configure(FaultConfig(latency_ms=15))
    client = resource(api_url=server.base_url, concurrency=3).client()
    flight = InFlight(client)
    user_ids = [*sorted(world.studip_users)[:8], "f" * 32]
    pages = list(client.user_pages(user_ids))
    server.faults.configure(FaultConfig())
    assert [p.subject for p in pages] == user_ids
    assert [p.records[0].user_id for p in pages[:-1]] == user_ids[:-1]
    assert not pages[-1].found and not pages[-1].records
    assert flight.peak == 3, f"expected 3 requests in flight at the peak, saw {flight.peak}"
    assert list(client.user_pages([])) == []


def test_searches_run_concurrently_and_come_in_order(server: StudipServer, world: World) -> None:
    """The name searches of an incremental crawl run ``concurrency`` at a time (each scans the
    user table on the server), each with all its pages, in the order asked."""
    server.faults.configure(FaultConfig(latency_ms=15))
    client = resource(api_url=server.base_url, concurrency=3, page_size=2).client()
    flight = InFlight(client)
    users = sorted(world.studip_users.values(), key=lambda u: u.user_id)[:6]
    texts = [*(u.username for u in users), "nobody-has-this-name"]
    results = list(client.searches(texts))
    server.faults.configure(FaultConfig())
    assert [[p.subject for p in pages] for pages in results] == [
        [text] * len(pages) for text, pages in zip(texts, results, strict=True)
    ]
    for user, pages in zip(users, results[:-1], strict=True):
        assert user.user_id in {hit.id for page in pages for hit in page.records}
    assert [hit for page in results[-1] for hit in page.records] == []
    assert flight.peak == 3, f"expected 3 requests in flight at the peak, saw {flight.peak}"
    assert list(client.searches([])) == []


def test_fetching_waits_for_a_slow_consumer_and_a_stopped_one_frees_the_pool(
    server: StudipServer, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetched pages wait for landing in a bounded queue: fetching pauses instead of holding
    the whole crawl in memory, and a consumer that stops (an error, a closed run) does not
    leave fetch threads blocked on the full queue."""
    monkeypatch.setattr(studip_module, "PAGES_WAITING_PER_WORKER", 2)
    client = resource(api_url=server.base_url, concurrency=2, page_size=5).client()
    crawl = client.crawl(seeds(world), default_semester_ids(world))
    for _ in range(10):  # a slow consumer: unbounded, the fetchers would run far ahead
        next(crawl)
        time.sleep(0.05)
    # 10 consumed, at most 4 waiting, and each of the 2 fetchers holding one page
    assert server.request_count() <= 10 + 2 * 2 + 2

    closing = threading.Thread(target=crawl.close)  # the consumer stops, the queue full
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive(), "fetch threads stayed blocked on the full queue"
    assert not [t for t in threading.enumerate() if t.name.startswith("studip-crawl")]


def test_a_failing_request_stops_the_crawl_with_its_error(
    server: StudipServer, world: World
) -> None:
    server.faults.configure(FaultConfig(error_rate=1.0))
    client = resource(api_url=server.base_url).client(
        retry_policy=RetryPolicy(attempts=2, backoff_s=0)
    )
    with pytest.raises(StudipError, match="server error"):
        list(client.crawl(seeds(world), default_semester_ids(world)))
    server.faults.configure(FaultConfig())


@responses.activate
def test_user_search_is_a_collection_of_short_records_paged_on_total(client: StudipClient) -> None:
    """Stud.IP 5.5 answers /users?q= with {"collection": [short records], "pagination"}: the
    hits carry no perms, e-mail or datafields (fixtures 022-025)."""

    def hit(n: int, username: str) -> dict[str, Any]:
        name = {"username": username, "formatted": "", "family": "", "given": "",
                "prefix": "", "suffix": ""}  # fmt: skip
        return {"id": f"{n:032x}", "href": f"/api.php/user/{n:032x}", "name": name}

    def answer(hits: list[dict[str, Any]], offset: int) -> dict[str, Any]:
        return {"collection": hits, "pagination": {"total": 3, "offset": offset, "limit": 2}}

    responses.get(
        f"{BASE}/users",
        json=answer([hit(1, "a.lehre.koordination"), hit(2, "b.lehre")], 0),
        match=[matchers.query_param_matcher({"q": "lehre", "offset": "0", "limit": "2"})],
    )
    responses.get(
        f"{BASE}/users",
        json=answer([hit(3, "lehre.koordination")], 2),
        match=[matchers.query_param_matcher({"q": "lehre", "offset": "2", "limit": "2"})],
    )
    pages = list(client.search_users("lehre"))
    assert [[(u.id, u.username) for u in p.records] for p in pages] == [
        [(f"{1:032x}", "a.lehre.koordination"), (f"{2:032x}", "b.lehre")],
        [(f"{3:032x}", "lehre.koordination")],
    ]
    assert [p.request_key for p in pages] == ["/users?q=lehre"] * 2
    assert len(responses.calls) == 2, "stops on offset + items >= total"


def test_all_selects_every_semester() -> None:
    ordered = [f"{1:032x}", f"{2:032x}", f"{3:032x}"]
    assert select_semesters(SEMESTERS, ["all"], at(250)) == ordered
    assert select_semesters(SEMESTERS, ["ALL"], at(1000)) == ordered, "with no current one"


def test_a_refused_connection_says_so_once() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = resource(api_url=f"http://127.0.0.1:{port}/api.php").client(
        retry_policy=RetryPolicy(attempts=1, backoff_s=0)
    )
    with pytest.raises(StudipError) as error:
        client.user_page()
    message = str(error.value)
    assert message.count("Stud.IP: GET") == 1, message
    assert message.startswith(f"Stud.IP: GET http://127.0.0.1:{port}/api.php/user: /user: no ")
    assert "ConnectionError" in message


# -- members parsed without validating ------------------------------------------------------


def _validated_members(collection: Any) -> tuple[list[Any], list[Any]]:
    """What the model alone makes of a members collection: the reference for the plain path."""
    records, rejected = [], []
    for raw in collection_values(collection):
        record, problem = studip_module._validate(StudipMember, raw, "membership", "")
        if record is not None:
            records.append(CourseMember(record.member.id, record.status))
        elif problem is not None:
            rejected.append((problem.reason, raw))
    return records, rejected


def _same(parsed: tuple[list[Any], list[Any]], expected: tuple[list[Any], list[Any]]) -> None:
    records, rejected = parsed
    assert (records, [(r.reason, r.raw) for r in rejected]) == expected


def test_members_built_without_validating_equal_the_validated_ones(
    server: StudipServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member of every course the sandbox serves and of every recorded members body:
    the plain path (``plain_member``) gives exactly what the model gives."""
    bodies = [r.body for r in recordings("api") if r.path.endswith("/members") and r.status == 200]
    assert bodies, "no recorded members body"
    world = server.world
    for course_id in sorted(world.memberships)[:60]:
        response = requests.get(
            f"{server.base_url}/course/{course_id}/members",
            params={"limit": 1000},
            auth=("hubsync-api", "sandbox-studip-password"),
            timeout=10,
        )
        bodies.append(response.json())
    for body in bodies:
        collection = body["collection"]
        _same(studip_module._parse_members(collection), _validated_members(collection))

    validated = []
    monkeypatch.setattr(
        studip_module, "_validate", lambda *args: validated.append(args) or (None, None)
    )
    members = sum(len(studip_module._parse_members(b["collection"])[0]) for b in bodies)
    assert members > 100 and not validated, "plainly valid members are not validated"


@pytest.mark.parametrize(
    "change",
    [
        {"status": "superuser"},
        {"status": 3},
        {"member": None},
        {"member": {"id": "A" * 32}},
        {"member": {"id": "a" * 31}},
        {"member": {"id": 12345}},
        {"member": {"id": "a" * 32}},
        {"member": {"id": "a" * 32, "name": None}},
        {"member": {"id": "a" * 32, "name": {"formatted": "x"}}},
        {"member": {"id": "a" * 32, "name": {"username": 123}}},
        {"member": {"id": "a" * 32, "name": {"username": "u", "given": "Gr\ufffdn"}}},
        {"member": {"id": "a" * 32, "name": {"username": "u", "family": "x" * 10_001}}},
        {"member": {"id": "a" * 32, "name": {"username": "u", "prefix": None}}},
        {"member": {"id": "a" * 32, "name": {"username": "u", "extra": 1}, "avatar": "x"}},
        {"member": {"id": "a" * 32, "name": "u"}},
    ],
)
def test_a_member_that_is_not_plain_is_what_the_model_makes_of_it(change: dict[str, Any]) -> None:
    raw = {**member("b" * 32), **change}
    collection = {"/api.php/user/x": raw}
    _same(studip_module._parse_members(collection), _validated_members(collection))
