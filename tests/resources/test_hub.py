"""The HUB client: when a POST may be repeated, and reading getLog to the end."""

from __future__ import annotations

import json
import socket
from datetime import date
from http.client import RemoteDisconnected

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from resources.http import ApiError, RetryPolicy
from resources.hub import OBJECT_MODELS, HubClient, PostOutcome, envelope
from sandbox.expected import expected_hub_state
from sandbox.http import FaultConfig
from sandbox.server import running_sandbox
from sandbox.world import World

URL = "https://hub.example.test/qa"
BODY = json.dumps(envelope([], org_id="org", who="sis.test", doo="2026-11-23T10:00:00Z"))


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def client(waits: list[float]) -> HubClient:
    return HubClient(URL, "key", retry_policy=RetryPolicy(attempts=3), sleep=waits.append)


def _refused() -> requests.ConnectionError:
    return requests.ConnectionError(MaxRetryError(None, URL, NewConnectionError(None, "refused")))


def _dropped() -> requests.ConnectionError:
    return requests.ConnectionError(
        ProtocolError("Connection aborted.", RemoteDisconnected("closed"))
    )


@responses.activate
def test_accepted_with_the_api_key(client: HubClient) -> None:
    responses.post(f"{URL}/sync/v1", json={"messageId": "m-1"})
    result = client.post_batch(BODY)
    assert (result.outcome, result.message_id, result.attempts) == (PostOutcome.ACCEPTED, "m-1", 1)
    request = responses.calls[0].request
    assert request.headers["x-api-key"] == "key"
    assert request.body == BODY.encode()


@responses.activate
def test_repeated_only_when_provably_not_arrived(client: HubClient, waits: list[float]) -> None:
    responses.post(f"{URL}/sync/v1", body=_refused())
    responses.post(f"{URL}/sync/v1", status=429, headers={"Retry-After": "3"})
    responses.post(f"{URL}/sync/v1", json={"messageId": "m-2"})
    result = client.post_batch(BODY)
    assert (result.outcome, result.message_id, result.attempts) == (PostOutcome.ACCEPTED, "m-2", 3)
    assert waits[1] == 3


@pytest.mark.parametrize(
    "answer",
    [
        {"body": _dropped()},
        {"body": requests.ReadTimeout("read timed out")},
        {"body": '{"messageId": "m-', "status": 200},
        {"json": {"ok": True}, "status": 200},
    ],
)
@responses.activate
def test_never_repeated_once_it_may_have_arrived(client: HubClient, answer: dict) -> None:
    responses.post(f"{URL}/sync/v1", **answer)
    result = client.post_batch(BODY)
    assert result.outcome is PostOutcome.UNKNOWN
    assert len(responses.calls) == 1


@responses.activate
def test_rejected_envelope_keeps_the_hubs_answer(client: HubClient) -> None:
    responses.post(f"{URL}/sync/v1", status=400, json={"message": "Invalid request body: dat"})
    result = client.post_batch(BODY)
    assert result.outcome is PostOutcome.REJECTED
    assert result.status == 400 and "Invalid request body" in result.body
    assert len(responses.calls) == 1


@responses.activate
def test_gives_up_after_the_attempts(client: HubClient) -> None:
    responses.post(f"{URL}/sync/v1", status=503, body="Service Unavailable")
    result = client.post_batch(BODY)
    assert (result.outcome, result.status, result.attempts) == (PostOutcome.NOT_ARRIVED, 503, 3)
    assert len(responses.calls) == 3


@responses.activate
def test_get_log_reads_every_page(client: HubClient) -> None:
    def item(n: int) -> dict:
        return {
            "baseItem": {
                "obj": "user",
                "sis_id": str(n),
                "mensagem": [{"dsc_error": "ok", "level_Error": "i"}],
            }
        }

    log_url = f"{URL}/instituicao/getLog/m-1"
    responses.get(
        log_url,
        match=[responses.matchers.query_param_matcher({"limit": "2", "offset": "0"})],
        json={"qtdeRegistros": 5, "status": 2, "logs": [item(0), item(1)]},
    )
    responses.get(
        log_url,
        match=[responses.matchers.query_param_matcher({"limit": "2", "offset": "2"})],
        json={"qtdeRegistros": 5, "status": 3, "logs": [item(2), item(3)]},
    )
    responses.get(
        log_url,
        match=[responses.matchers.query_param_matcher({"limit": "2", "offset": "4"})],
        json={"qtdeRegistros": 5, "status": 3, "logs": [item(4)]},
    )
    log = client.get_log("m-1", page_size=2)
    assert [i.sis_id for i in log.items] == ["0", "1", "2", "3", "4"]
    assert log.status == 3 and log.finished


@responses.activate
def test_get_log_of_an_unknown_message_fails_clearly(client: HubClient) -> None:
    responses.get(
        f"{URL}/instituicao/getLog/nope", status=404, json={"message": "messageId not found"}
    )
    with pytest.raises(ApiError, match=r"HUB: GET .*/getLog/nope -> 404: getLog failed"):
        client.get_log("nope")


def test_expected_objects_fit_the_models() -> None:
    """The product's models accept every object of the world's expected HUB state."""
    state = expected_hub_state(World(9, 150, today=date(2026, 11, 23))).state
    for kind, objects in state.items():
        for obj in objects.values():
            assert OBJECT_MODELS[kind].model_validate(obj).model_dump(exclude_none=True) == obj


# -- against the sandbox HUB ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(port_base=0, world=World(9, 40, today=date(2026, 11, 23))) as running:
        yield running


def _term_envelope(code: str) -> str:
    term = {
        "code": code,
        "name": f"Term {code}",
        "start_date": "2026-10-01",
        "end_date": "2027-03-31",
    }
    return json.dumps(
        envelope(
            [{"typ": "insert", "obj": {"term": [term]}}],
            org_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            who="sis.test",
            doo="2026-11-23T10:00:00Z",
        )
    )


def test_round_trip_with_the_sandbox_hub(sandbox) -> None:
    client = HubClient(sandbox.urls["hub"], "sandbox-hub-key")
    result = client.post_batch(_term_envelope("2030W"))
    assert result.outcome is PostOutcome.ACCEPTED
    assert sandbox.hub.wait_idle(10)
    log = client.get_log(result.message_id)
    assert log.status == 4
    assert [(i.obj, i.mensagem[0].level_Error) for i in log.items] == [("term", "i")]
    again = client.post_batch(_term_envelope("2030W"))
    assert sandbox.hub.wait_idle(10)
    duplicate = client.get_log(again.message_id)
    assert duplicate.status == 3 and duplicate.items[0].mensagem[0].level_Error == "e"


def test_a_dropped_post_is_unknown_and_not_repeated(sandbox) -> None:
    client = HubClient(sandbox.urls["hub"], "sandbox-hub-key", sleep=lambda s: None)
    sandbox.hub.faults.configure(FaultConfig(script=["drop"]))
    before = sandbox.hub.request_count("sync/v1") + sandbox.hub.request_count("(dropped)")
    assert client.post_batch(_term_envelope("2031S")).outcome is PostOutcome.UNKNOWN
    after = sandbox.hub.request_count("sync/v1") + sandbox.hub.request_count("(dropped)")
    assert after == before + 1


def test_a_refused_connection_is_repeated_then_not_arrived() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []
    client = HubClient(
        f"http://127.0.0.1:{port}/qa", "k", retry_policy=RetryPolicy(attempts=3), sleep=waits.append
    )
    result = client.post_batch(BODY)
    assert (result.outcome, result.attempts) == (PostOutcome.NOT_ARRIVED, 3)
    assert len(waits) == 2
