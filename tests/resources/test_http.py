"""The shared HTTP client: retries only when asked, waits as told, fails with safe messages."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
import requests
import responses

from resources.http import ApiError, HttpClient, RedirectRefused, RetryPolicy, safe_url
from tests.scripted_server import scripted_server

BASE = "https://api.example.test/base"


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def client(waits: list[float]) -> HttpClient:
    return HttpClient(
        "CO", BASE, retry_policy=RetryPolicy(attempts=3, backoff_s=1), sleep=waits.append
    )


@responses.activate
def test_retries_5xx_and_429_when_asked(client: HttpClient, waits: list[float]) -> None:
    responses.get(f"{BASE}/x", status=503)
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/x", json={"ok": True})
    response = client.request("GET", "/x", retry=True)
    assert response.json() == {"ok": True}
    assert 0.5 <= waits[0] <= 1.0, "exponential backoff with jitter"
    assert waits[1] == 7, "Retry-After wins"
    assert client.stats.as_metadata()["requests"] == 3
    assert client.stats.as_metadata()["retries"] == 2


@responses.activate
def test_no_retry_unless_asked(client: HttpClient, waits: list[float]) -> None:
    responses.post(f"{BASE}/send", status=503)
    assert client.request("POST", "/send").status_code == 503
    assert waits == [] and len(responses.calls) == 1


@responses.activate
def test_gives_up_and_returns_the_last_response(client: HttpClient) -> None:
    responses.get(f"{BASE}/x", status=500)
    assert client.request("GET", "/x", retry=True).status_code == 500
    assert len(responses.calls) == 3


@responses.activate
def test_connection_failures_end_in_a_safe_api_error(
    client: HttpClient, waits: list[float]
) -> None:
    responses.get(f"{BASE}/x", body=requests.ConnectionError("refused"))
    with pytest.raises(ApiError) as caught:
        client.request("GET", "/x?token=secret-value", retry=True)
    assert len(waits) == 2
    message = str(caught.value)
    assert "CO: GET https://api.example.test/base/x" in message
    assert "no response after 3 attempt(s)" in message
    assert "secret-value" not in message and caught.value.status is None


@responses.activate
def test_invalid_json_names_the_url(client: HttpClient) -> None:
    responses.get(f"{BASE}/page", body=b'{"resource": [', status=200)
    response = client.request("GET", "/page?PageNr=2")
    with pytest.raises(ApiError, match=r"GET https://api.example.test/base/page -> 200: .*JSON"):
        client.json(response)
    assert client.json(response, content=response.content + b"]}") == {"resource": []}


def test_safe_url_drops_query_and_credentials() -> None:
    assert safe_url("https://user:pw@h.test:8443/p/a?x=1#f") == "https://h.test:8443/p/a"


# -- hostile servers: a scripted server on loopback --------------------------------------------

SINK_ANSWER = (200, {"Content-Type": "application/json"}, b'{"messageId": "stolen"}')


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_naming_the_system_the_url_and_the_other_host(status: int) -> None:
    """A 307 used to carry the x-api-key and the whole body on to the other host."""
    with scripted_server({"/steal": SINK_ANSWER}) as sink:
        location = f"{sink.url}/steal?token=from-the-location"
        with scripted_server({"/sync/v1": (status, {"Location": location}, b"")}) as api:
            client = HttpClient("HUB", api.url, retry_policy=RetryPolicy(attempts=3))
            with pytest.raises(RedirectRefused) as caught:
                client.request(
                    "POST",
                    "/sync/v1",
                    retry=True,
                    data=b'{"dat": "personal data"}',
                    headers={"x-api-key": "secret-key-zz9"},
                )
        assert sink.requests == [], "nothing may reach the host the redirect points at"
    assert len(api.requests) == 1, "a redirect is not retried either"
    message = str(caught.value)
    assert message.startswith(f"HUB: POST {api.url}/sync/v1 -> {status}: redirected to {sink.host}")
    assert "token" not in message and "secret-key-zz9" not in message
    assert isinstance(caught.value, ApiError)


def _gzip_of_zeros(megabytes: int) -> bytes:
    """A gzip body decoding to ``megabytes`` MB of zeros: one member per MB (gzip allows
    members back to back), so it is built in milliseconds."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header
    member = packer.compress(bytes(1024 * 1024)) + packer.flush()
    return member * megabytes


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    bomb = _gzip_of_zeros(512)
    assert len(bomb) < 600 * 1024  # about 0.5 MB on the wire, 512 MB decoded
    return bomb


def test_a_gzip_bomb_is_refused_while_it_streams_in(gzip_bomb: bytes) -> None:
    """A 299 KB gzip bomb grew memory by 946 MB: requests decoded all of it before anyone
    looked. The body is now decoded in chunks and refused at the limit."""
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with scripted_server({"/page": (200, headers, gzip_bomb)}) as api:
        client = HttpClient("LMS", api.url, max_response_bytes=16 * 1024 * 1024)
        tracemalloc.start()
        try:
            with pytest.raises(ApiError) as caught:
                client.request("GET", "/page", retry=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert str(caught.value).startswith(f"LMS: GET {api.url}/page -> 200: the response body is")
    assert "larger than 16 MB decoded (HUBSYNC_MAX_RESPONSE_MB)" in str(caught.value)
    assert peak < 40 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB while refusing a 512 MB body"
    assert len(api.requests) == 1, "a body that is too large is not fetched again"


def test_a_body_within_the_limit_is_read_whole_and_counted() -> None:
    body = b'{"items": "' + b"x" * 300_000 + b'"}'
    with scripted_server({"/page": (200, {"Content-Type": "application/json"}, body)}) as api:
        client = HttpClient("CO", api.url, max_response_bytes=len(body))
        response = client.request("GET", "/page")
        assert client.json(response) == {"items": "x" * 300_000}
        assert client.stats.as_metadata()["bytes"] == len(body)
        small = HttpClient("CO", api.url, max_response_bytes=len(body) - 1)
        with pytest.raises(ApiError, match="larger than"):
            small.request("GET", "/page")


def test_json_nested_too_deeply_is_a_bad_page_not_a_recursion_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with scripted_server({"/page": (200, {"Content-Type": "application/json"}, deep)}) as api:
        client = HttpClient("Stud.IP", api.url)
        response = client.request("GET", "/page?offset=0")
        with pytest.raises(ApiError) as caught:
            client.json(response)
        # the clients' own `except ValueError` around response.json() catch it too
        with pytest.raises(ValueError, match="too deeply"):
            response.json()
    assert str(caught.value).startswith(f"Stud.IP: GET {api.url}/page -> 200: the body is not")
    assert "nests arrays or objects too deeply" in str(caught.value)


@responses.activate
def test_a_redirect_with_a_malformed_location_is_refused_too(client: HttpClient) -> None:
    responses.get(f"{BASE}/x", status=302, headers={"Location": "http://elsewhere:port/"})
    with pytest.raises(RedirectRefused, match="redirected to an unusable Location"):
        client.request("GET", "/x", retry=True)
