"""The shared HTTP client: retries only when asked, waits as told, fails with safe messages."""

from __future__ import annotations

import pytest
import requests
import responses

from resources.http import ApiError, HttpClient, RetryPolicy, safe_url

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
    assert client.stats.as_metadata()["api_calls"] == 3
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
    assert client.json(response, clean=lambda b: b + b"]}") == {"resource": []}


def test_safe_url_drops_query_and_credentials() -> None:
    assert safe_url("https://user:pw@h.test:8443/p/a?x=1#f") == "https://h.test:8443/p/a"
