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

from resources.http import RetryPolicy
from resources.hub import (
    LINK_TYPES,
    OBJECT_MODELS,
    OBJECT_TYPES,
    CodeRef,
    HubClient,
    MessageNotFound,
    PostOutcome,
    envelope,
)
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
        {"json": {"messageId": None}, "status": 200},
        {"json": {"messageId": ""}, "status": 200},
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


def _item(n: int) -> dict:
    return {
        "baseItem": {
            "obj": "user",
            "sis_id": str(n),
            "mensagem": [{"dsc_error": "ok", "level_Error": "i"}],
        }
    }


def _documented_get_log(total: int, *, cap: int = 1000, echo: int | None = None):
    """A getLog as the document's "Data Consultation" specifies it: paging from the JSON body
    only (a query string is ignored), 25 and 0 when absent; at most ``cap`` items per page;
    with ``echo`` the answer says the page size it used."""
    bodies: list[dict] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        paging = json.loads(request.body) if request.body else {}
        bodies.append(paging)
        limit = echo or min(paging.get("limit", 25), cap)
        offset = paging.get("offset", 0)
        page = {
            "qtdeRegistros": total,
            "status": 4,
            "logs": [_item(n) for n in range(offset, min(offset + limit, total))],
        }
        if echo:
            page["limit"] = echo
        return 200, {}, json.dumps(page)

    return answer, bodies


@pytest.mark.parametrize("total", [26, 50, 501])
@responses.activate
def test_get_log_pages_in_the_json_body_until_qtde_registros(client: HubClient, total: int) -> None:
    answer, bodies = _documented_get_log(total)
    responses.add_callback(responses.GET, f"{URL}/instituicao/getLog/m-1", callback=answer)
    log = client.get_log("m-1")
    assert [i.sis_id for i in log.items] == [str(n) for n in range(total)]
    assert log.finished and log.total == total
    assert bodies == [{"limit": 25, "offset": offset} for offset in range(0, total, 25)]
    assert all("?" not in call.request.url for call in responses.calls)


@responses.activate
def test_get_log_uses_a_larger_limit_the_hub_echoes(client: HubClient) -> None:
    answer, bodies = _documented_get_log(250, echo=100)
    responses.add_callback(responses.GET, f"{URL}/instituicao/getLog/m-1", callback=answer)
    log = client.get_log("m-1")
    assert [i.sis_id for i in log.items] == [str(n) for n in range(250)]
    assert bodies == [
        {"limit": 25, "offset": 0},
        {"limit": 100, "offset": 100},
        {"limit": 100, "offset": 200},
    ]


@responses.activate
def test_get_log_follows_a_hub_that_sends_fewer_items_than_asked(client: HubClient) -> None:
    answer, bodies = _documented_get_log(26, cap=10)
    responses.add_callback(responses.GET, f"{URL}/instituicao/getLog/m-1", callback=answer)
    log = client.get_log("m-1")
    assert [i.sis_id for i in log.items] == [str(n) for n in range(26)]
    assert [body["offset"] for body in bodies] == [0, 10, 20]


@responses.activate
def test_get_log_reads_one_page_while_the_message_is_processing(client: HubClient) -> None:
    responses.get(
        f"{URL}/instituicao/getLog/m-1",
        json={"qtdeRegistros": 60, "status": 1, "logs": [_item(n) for n in range(25)]},
    )
    log = client.get_log("m-1", only_if_finished=True)
    assert (log.status, log.finished, len(responses.calls)) == (1, False, 1)


@responses.activate
def test_get_log_of_an_unknown_message_is_message_not_found(client: HubClient) -> None:
    responses.get(
        f"{URL}/instituicao/getLog/nope", status=404, json={"message": "messageId not found"}
    )
    with pytest.raises(MessageNotFound, match=r"HUB: GET .*/getLog/nope -> 404: getLog does"):
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


@pytest.mark.parametrize("total", [26, 50, 501])
def test_get_log_reads_every_item_from_the_sandbox_hub(sandbox, total: int) -> None:
    """The sandbox HUB pages from the JSON body only: a client paging by query string would
    read the first 25 items over and over and miss the rest."""
    client = HubClient(sandbox.urls["hub"], "sandbox-hub-key")
    text = json.dumps(
        envelope(
            [{"typ": "insert", "obj": {"term": [
                {"code": f"P{total}-{n:03}", "name": f"P {n}", "start_date": "2030-01-01",
                 "end_date": "2030-06-30"} for n in range(total)]}}],
            org_id=sandbox.hub.org_id,
            who="sis.test",
            doo="2026-11-23T10:00:00Z",
        )
    )  # fmt: skip
    result = client.post_batch(text)
    assert sandbox.hub.wait_idle(10)
    log = client.get_log(result.message_id)
    assert sorted(i.sis_id for i in log.items) == [f"P{total}-{n:03}" for n in range(total)]
    assert log.pages == -(-total // 25)


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


def test_the_object_types_name_every_reference_their_models_hold() -> None:
    """The diff, the reference check and delivery read links and references from OBJECT_TYPES:
    a model field naming another object (a CodeRef, or term_code) that the registry leaves out
    would let a link to an unknown object through the check."""
    for kind in OBJECT_TYPES:
        fields = kind.model.model_fields
        named = {f"$.{name}.code" for name, f in fields.items() if f.annotation is CodeRef}
        named |= {"$.term_code"} if "term_code" in fields else set()
        assert {path for path, _ in kind.references} == named, kind.name
        assert all(target in OBJECT_MODELS for _, target in kind.references)
        assert kind.is_link == bool(named - {"$.term_code"}), kind.name
    assert LINK_TYPES == ("studentparent", "sectionstudent", "sectionteacher")
