"""The LMS client: tokens (login, refresh before expiry and on 401, fresh login when a refresh is
refused), TLS 1.2, paging (TotalItems re-read, shifting pages), XML refusal, record validation."""

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from resources.http import ApiError, HttpClient, RetryPolicy
from resources.lms import (
    ENDPOINT_PATHS,
    TOKEN_PATH,
    LmsClient,
    LmsResource,
    Tls12Adapter,
    format_from_date,
    lms_resource,
    validate_registration,
)
from resources.settings import load_settings
from sandbox.server import running_sandbox
from sandbox.world import World

BASE = "http://lms.test"
ORG = "/Root/Test"
ACTIVE_URL = BASE + ENDPOINT_PATHS["active"]
TOKEN_URL = BASE + TOKEN_PATH
PASSWORD = "pa+ss&word"

SEED_ITEM: dict[str, Any] = {
    "CourseCode": "TEST",
    "FirstName": "Pat222",
    "LastName": "Learner",
    "OrganizationLoginId": "PatLearner222",
    "UniqueLoginId": "PatLearner222",
    "EmailAddress": "PatLearner222@marinels.com",
    "ContactEmail": "PatLearner222@marinels.com",
    "CourseName": "Initiation A",
    "CourseId": "a5d2a4aa-19f1-11e7-80bf-0cc47a6f32d0",
    "OfferingShortId": "InitA",
    "CompletionDate": "2017-04-07T23:14:48.9370000Z",
    "RegistrationDate": "2017-04-05T18:18:28.7070000Z",
    "RegistrationId": "aa06f1bb-2eb5-11e7-80c0-0cc47a6f32c8",
    "RegistrationStatus": 2,
    "OrgProfileFieldValues": [
        {"Name": "Rank", "Value": "none"},
        {"Name": "Vessel", "Value": "My Vessel 1"},
    ],
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_client(page_size: int = 3, clock: FakeClock | None = None) -> LmsClient:
    http = HttpClient("LMS", BASE, retry_policy=RetryPolicy(attempts=2, backoff_s=0))
    return LmsClient(
        http,
        username="hubsync",
        password=PASSWORD,
        org_path=ORG,
        page_size=page_size,
        clock=clock or FakeClock(),
    )


def token_body(n: int, expires_in: int = 600) -> dict[str, Any]:
    return {
        "access_token": f"access-{n}",
        "token_type": "bearer",
        "expires_in": expires_in,
        "refresh_token": f"refresh-{n}",
    }


def item(registration_id: str, status: int = 1) -> dict[str, Any]:
    data = {**SEED_ITEM, "RegistrationId": registration_id, "RegistrationStatus": status}
    if status != 2:
        data.pop("CompletionDate")
    return data


def page(ids: list[str], total: int, start: int, page_size: int = 3) -> dict[str, Any]:
    return {
        "Items": [item(i) for i in ids],
        "TotalItems": total,
        "PageSize": page_size,
        "FirstIndexOfNextPage": start + len(ids),
    }


def form(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def token_calls() -> list[dict[str, str]]:
    return [form(c) for c in responses.calls if c.request.url == TOKEN_URL]


def data_calls() -> list[Any]:
    return [c for c in responses.calls if c.request.url.startswith(ACTIVE_URL)]


class TokenSequence:
    """Token endpoint answering token 1, 2, … (or refusing refresh grants when told)."""

    def __init__(self, refuse_refresh: bool = False) -> None:
        self.issued = 0
        self.refuse_refresh = refuse_refresh

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        grant = parse_qs(request.body)["grant_type"][0]
        if grant == "refresh_token" and self.refuse_refresh:
            body = {"error": "invalid_grant", "error_description": "The refresh token is used."}
            return 400, {}, json.dumps(body)
        self.issued += 1
        return 200, {}, json.dumps(token_body(self.issued))


def add_token_endpoint(refuse_refresh: bool = False) -> TokenSequence:
    tokens = TokenSequence(refuse_refresh)
    responses.add_callback(responses.POST, TOKEN_URL, callback=tokens)
    return tokens


def add_selection(selection: list[str], shrink_per_request: int = 0) -> None:
    """An active endpoint over ``selection``; ``shrink_per_request`` items leave it from the
    front before each request (registrations completing while the client pages)."""

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        del selection[:shrink_per_request]
        paging = json.loads(request.body)
        start, size = paging["StartIndex"], paging["PageSize"]
        return 200, {}, json.dumps(page(selection[start : start + size], len(selection), start))

    responses.add_callback(
        responses.POST, ACTIVE_URL, callback=callback, content_type="application/json"
    )


# -- login and requests ----------------------------------------------------------------------


@responses.activate
def test_password_grant_with_the_org_path_as_scope_then_bearer_json_paging() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page(["r1"], 1, 0))
    client = make_client()

    pages = list(client.registration_pages("active", datetime(2026, 11, 23, 10, 1, 2, 345678, UTC)))

    assert token_calls() == [
        {"grant_type": "password", "username": "hubsync", "password": PASSWORD, "scope": ORG}
    ]
    (call,) = data_calls()
    assert call.request.headers["Authorization"] == "Bearer access-1"
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["Accept"] == "application/json"
    assert json.loads(call.request.body) == {"PageSize": 3, "StartIndex": 0}
    query = urlsplit(call.request.url).query
    assert "fromDate=2026-11-23T10%3A01%3A02.345Z" in query
    assert parse_qs(query)["orgPath"] == [ORG]
    assert [p.items[0]["RegistrationId"] for p in pages] == ["r1"]
    assert client.token_stats.logins == 1


@responses.activate
def test_no_from_date_reads_from_the_beginning_of_time() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page([], 0, 0))
    list(make_client().registration_pages("active", None))
    assert "fromDate" not in parse_qs(urlsplit(data_calls()[0].request.url).query)


def test_from_date_is_utc_with_milliseconds_never_later() -> None:
    moment = datetime(2022, 7, 15, 1, 3, 30, 999_999, tzinfo=UTC)
    assert format_from_date(moment) == "2022-07-15T01:03:30.999Z"
    vienna = datetime.fromisoformat("2022-07-15T01:03:10+02:00")
    assert format_from_date(vienna) == "2022-07-14T23:03:10.000Z"


@responses.activate
def test_a_refused_login_names_the_reason_but_not_the_password() -> None:
    body = {
        "error": "invalid_grant",
        "error_description": "The user name or password is incorrect.",
    }
    responses.post(TOKEN_URL, json=body, status=400)
    with pytest.raises(ApiError) as caught:
        list(make_client().registration_pages("active", None))
    message = str(caught.value)
    assert "login refused: invalid_grant: The user name or password is incorrect." in message
    assert PASSWORD not in message and "pa" + "+ss" not in message


# -- token renewal ---------------------------------------------------------------------------


@responses.activate
def test_the_token_is_refreshed_shortly_before_expires_in_runs_out() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page([], 0, 0))
    clock = FakeClock()
    client = make_client(clock=clock)

    list(client.registration_pages("active", None))
    clock.now += 600 - 61  # more than a minute left: the token is used as it is
    list(client.registration_pages("active", None))
    assert client.token_stats.refreshes == 0
    clock.now += 2  # under a minute left of the 600 s
    list(client.registration_pages("active", None))

    assert [c["grant_type"] for c in token_calls()] == ["password", "refresh_token"]
    assert token_calls()[1]["refresh_token"] == "refresh-1"
    assert data_calls()[-1].request.headers["Authorization"] == "Bearer access-2"
    assert client.token_stats.refreshes == 1


@responses.activate
def test_a_401_in_the_middle_of_paging_refreshes_and_repeats_the_request() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page(["a", "b", "c"], 5, 0))
    responses.post(ACTIVE_URL, json={"Message": "Authorization has been denied."}, status=401)
    responses.post(ACTIVE_URL, json=page(["c", "d", "e"], 5, 2))
    client = make_client()

    pages = list(client.registration_pages("active", None))

    assert [i["RegistrationId"] for p in pages for i in p.items] == ["a", "b", "c", "c", "d", "e"]
    assert [c["grant_type"] for c in token_calls()] == ["password", "refresh_token"]
    auth = [c.request.headers["Authorization"] for c in data_calls()]
    assert auth == ["Bearer access-1", "Bearer access-1", "Bearer access-2"]
    assert json.loads(data_calls()[2].request.body) == {"PageSize": 3, "StartIndex": 2}
    assert (client.token_stats.unauthorized, client.token_stats.refreshes) == (1, 1)


@responses.activate
def test_a_refused_refresh_falls_back_to_one_fresh_login() -> None:
    add_token_endpoint(refuse_refresh=True)
    responses.post(ACTIVE_URL, json={"Message": "denied"}, status=401)
    responses.post(ACTIVE_URL, json=page(["a"], 1, 0))
    client = make_client()

    list(client.registration_pages("active", None))

    grants = [c["grant_type"] for c in token_calls()]
    assert grants == ["password", "refresh_token", "password"]
    assert data_calls()[-1].request.headers["Authorization"] == "Bearer access-2"
    assert (client.token_stats.logins, client.token_stats.failed_refreshes) == (2, 1)


@responses.activate
def test_a_401_for_a_fresh_token_is_an_error() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json={"Message": "denied"}, status=401)
    with pytest.raises(ApiError, match="refused a freshly issued token"):
        list(make_client().registration_pages("active", None))
    assert len(data_calls()) == 2


# -- answers ---------------------------------------------------------------------------------


@responses.activate
def test_an_xml_answer_is_refused_with_a_clear_error() -> None:
    add_token_endpoint()
    responses.post(
        ACTIVE_URL,
        body="<PagedResultOfRegistrationData/>",
        content_type="application/xml; charset=utf-8",
    )
    with pytest.raises(ApiError, match="answered application/xml instead of JSON"):
        list(make_client().registration_pages("active", None))


@responses.activate
def test_an_error_answer_carries_the_web_api_message() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json={"Message": "PageSize must be between 1 and 60000"}, status=400)
    with pytest.raises(ApiError, match="400: PageSize must be between 1 and 60000"):
        list(make_client().registration_pages("active", None))


@responses.activate
def test_server_errors_are_retried() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, body="<h2>Service Unavailable</h2>", status=503)
    responses.post(ACTIVE_URL, json=page(["a"], 1, 0))
    client = make_client()
    assert len(list(client.registration_pages("active", None))) == 1
    assert client.http.stats.retries == 1


# -- paging ----------------------------------------------------------------------------------


@responses.activate
def test_paging_rereads_total_items_and_stops_at_first_index_of_next_page() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page(["a", "b", "c"], 8, 0))
    # TotalItems fell from 8 to 5: this page ends the selection
    responses.post(ACTIVE_URL, json=page(["c", "d", "e"], 5, 2))
    pages = list(make_client().registration_pages("active", None))
    assert len(pages) == len(data_calls()) == 2
    assert [p.total_items for p in pages] == [8, 5]


@responses.activate
def test_paging_continues_while_the_selection_grows() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json=page(["a", "b", "c"], 3, 0))
    pages = list(make_client().registration_pages("active", None))
    assert len(pages) == 1  # FirstIndexOfNextPage 3 >= TotalItems 3

    responses.replace(responses.POST, ACTIVE_URL, json=page(["a", "b", "c"], 4, 0))
    responses.add(responses.POST, ACTIVE_URL, json=page(["c", "d"], 4, 2))
    pages = list(make_client().registration_pages("active", None))
    assert [i["RegistrationId"] for i in pages[-1].items] == ["c", "d"]


@responses.activate
def test_items_leaving_the_selection_while_paging_lose_nothing() -> None:
    add_token_endpoint()
    everything = [f"r{n:02d}" for n in range(30)]
    selection = list(everything)
    add_selection(selection, shrink_per_request=2)

    pages = list(make_client(page_size=5).registration_pages("active", None))

    fetched = {i["RegistrationId"] for p in pages for i in p.items}
    assert len({p.total_items for p in pages}) > 1  # TotalItems did change while paging
    assert any(p.stepped_back for p in pages)
    # what left the selection before it was read went elsewhere (completed): all the rest came
    left_early = set(everything) - set(selection)
    assert set(everything) - fetched <= left_early
    assert set(selection) <= fetched


@responses.activate
def test_a_page_that_does_not_advance_is_an_error() -> None:
    add_token_endpoint()
    responses.post(ACTIVE_URL, json={**page(["a", "b", "c"], 9, 0), "FirstIndexOfNextPage": 0})
    with pytest.raises(ApiError, match="paging does not advance"):
        list(make_client().registration_pages("active", None))


# -- records ---------------------------------------------------------------------------------


def test_the_seed_example_validates_with_seven_fraction_digits() -> None:
    registration = validate_registration(SEED_ITEM)
    assert registration.CompletionDate == datetime(2017, 4, 7, 23, 14, 48, 937000, UTC)
    assert registration.status_name == "Completed"
    assert registration.profile == {"Rank": "none", "Vessel": "My Vessel 1"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"RegistrationId": ""}, "RegistrationId"),
        ({"OrganizationLoginId": None}, "OrganizationLoginId"),
        ({"RegistrationStatus": "2"}, "RegistrationStatus"),
        ({"RegistrationStatus": 7}, "RegistrationStatus 7 is not 0, 1 or 2"),
        ({"CompletionDate": None}, "without a CompletionDate"),
        ({"RegistrationDate": "2017-04-05T18:18:28"}, "timezone"),
        ({"OrgProfileFieldValues": [{"Name": "A"}, {"Name": "A"}]}, "repeats a Name"),
    ],
)
def test_malformed_records_are_rejected_with_a_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_registration({**SEED_ITEM, **change})


def test_a_record_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(ValueError, match="not an object"):
        validate_registration(["RegistrationId"])


# -- TLS and the resource --------------------------------------------------------------------


def test_https_connections_require_tls_1_2_or_newer() -> None:
    http = HttpClient("LMS", "https://lms.example.org")
    client = LmsClient(http, username="u", password="p", org_path=ORG)
    adapter = client.http.session.get_adapter("https://lms.example.org/x")
    assert isinstance(adapter, Tls12Adapter)
    assert adapter.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert adapter.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert adapter.poolmanager.connection_pool_kw["ssl_context"] is adapter.ssl_context
    proxied = adapter.proxy_manager_for("http://proxy.example.org:3128")
    assert proxied.connection_pool_kw["ssl_context"] is adapter.ssl_context


def test_the_resource_comes_from_the_settings_with_the_password_as_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings({"LMS_PAGE_SIZE": "250", "LMS_ORG_PATH": "/Root/Uni/"})
    resource = lms_resource(settings.lms)
    assert (resource.page_size, resource.org_path) == (250, "/Root/Uni")
    assert resource.password == "sandbox-lms-password"
    monkeypatch.setenv("LMS_PASSWORD", "real-secret")
    assert lms_resource(settings.lms).password.__class__.__name__ == "EnvVar"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with running_sandbox(port_base=0, world=World(7, 60, today=date(2026, 11, 23))) as sb:
        yield sb


def sandbox_resource(sb: Any, **options: Any) -> LmsResource:
    settings = load_settings(sb.env).lms
    return LmsResource(
        api_url=settings.api_url,
        username=settings.username,
        password=settings.password.get_secret_value(),
        org_path=settings.org_path,
        **options,
    )


def test_against_the_sandbox_every_registration_arrives(sandbox: Any) -> None:
    pages: dict[str, int] = {}
    ids: dict[str, list[str]] = {}
    with sandbox_resource(sandbox, page_size=7).client() as client:
        for endpoint in ("active", "completed"):
            read = list(client.registration_pages(endpoint, None))
            pages[endpoint] = len(read)
            ids[endpoint] = [validate_registration(i).RegistrationId for p in read for i in p.items]
    for endpoint in ("active", "completed"):
        # each page after the first starts with the last item of the one before
        assert len(ids[endpoint]) - len(set(ids[endpoint])) == pages[endpoint] - 1
    with sandbox.world.lock:
        registrations = list(sandbox.world.lms_registrations.values())
    assert set(ids["active"]) == {r.registration_id for r in registrations if r.status < 2}
    assert set(ids["completed"]) == {r.registration_id for r in registrations if r.status == 2}


def test_against_the_sandbox_xml_is_refused(sandbox: Any) -> None:
    sandbox.lms.respond_xml = True
    try:
        with sandbox_resource(sandbox).client() as client, pytest.raises(ApiError) as caught:
            list(client.registration_pages("completed", None))
    finally:
        sandbox.lms.respond_xml = False
    assert "application/xml instead of JSON" in str(caught.value)
    assert requests.utils.urlparse(caught.value.url).query == ""
