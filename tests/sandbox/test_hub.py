"""The sandbox HUB Sync API over real HTTP: envelope, async log, validation, state, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.http import FaultConfig
from sandbox.hub import (
    DEFAULT_API_KEY,
    DEFAULT_ORG_ID,
    MSG_ITEM_ERROR,
    OBJECT_TYPES,
    HubServer,
    cpf_is_valid,
)
from sandbox.world import World

KEY = {"x-api-key": DEFAULT_API_KEY}
CPF = "52998224725"  # a valid CPF
CPF2 = "11144477735"


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=7, students=80, today=date(2026, 11, 23))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[HubServer]:
    hub = HubServer(world, processing_delay_ms=0, max_body_bytes=200_000)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def clean(server: HubServer) -> Iterator[None]:
    """Each test starts empty, without faults, with the module's options (the admin routes that
    do the same over HTTP have their own tests)."""
    server.faults.configure(FaultConfig())
    server.configure(processing_delay_ms=0, item_delay_ms=0, item_error_rate=0.0, item_error_seed=0)
    server.reset()
    yield
    assert server.wait_idle(5)


# -- helpers ---------------------------------------------------------------------------------


def admin(method: str, server: HubServer, path: str, body: Any = None) -> Any:
    response = requests.request(method, server.origin + path, json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def envelope(*events: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = {
        "doo": "2026-11-23T10:00:00.000Z",
        "ver": "1.0.0",
        "who": "sis.test",
        "org_id": DEFAULT_ORG_ID,
        "dat": list(events),
    }
    body.update(overrides)
    return body


def event(typ: str, **objects: list[Any]) -> dict[str, Any]:
    return {"typ": typ, "obj": objects}


def post(server: HubServer, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{server.base_url}/sync/v1",
        json=body,
        headers=KEY if headers is None else headers,
        timeout=5,
    )


def get_log(
    server: HubServer,
    message_id: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.get(
        f"{server.base_url}/instituicao/getLog/{message_id}",
        params=params,
        json=body,
        headers=KEY if headers is None else headers,
        timeout=5,
    )


def send(server: HubServer, *events: dict[str, Any]) -> str:
    response = post(server, envelope(*events))
    assert response.status_code == 200, response.text
    return response.json()["messageId"]


def run(server: HubServer, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one message, wait until processed, return its log items (``baseItem``s)."""
    message_id = send(server, *events)
    assert server.wait_idle(10)
    body = get_log(server, message_id, body={"limit": 1000}).json()
    assert body["status"] in (3, 4)
    return [item["baseItem"] for item in body["logs"]]


def texts(item: dict[str, Any]) -> list[str]:
    return [m["dsc_error"] for m in item["mensagem"]]


def levels(items: list[dict[str, Any]]) -> list[str]:
    return [m["level_Error"] for item in items for m in item["mensagem"]]


def ok(items: list[dict[str, Any]]) -> None:
    assert levels(items) == ["i"] * len(items), items


def one_error(items: list[dict[str, Any]], text: str) -> None:
    assert len(items) == 1 and levels(items) == ["e"], items
    assert text in texts(items[0]), items


def term(code: str = "2026W", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": f"WS {code}",
        "start_date": "2026-10-01",
        "end_date": "2027-02-28",
        **extra,
    }


def subject(code: str = "MAT1", name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"code": code, "name": name or f"Subject {code}", "status": "active", **extra}


def section(code: str = "S1", term_code: str | None = "2026W", **extra: Any) -> dict[str, Any]:
    obj = {"code": code, "name": f"Section {code}", "sis_id": f"sis-{code}", **extra}
    if term_code is not None:
        obj["term_code"] = term_code
    return obj


def student(code: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "sis_id": f"p-{code}",
        "name": f"Student {code}",
        "dob": "2001-02-03",
        "gender": "F",
        "status": "active",
        "roles": [{"code": "aluno"}],
        **extra,
    }


def teacher(code: str = "t1", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": f"Teacher {code}",
        "dob": "1970-01-01",
        "email": f"{code}@uni.example",
        "cpf": CPF,
        "roles": [{"code": "professor"}],
        **extra,
    }


def parent(code: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": f"Parent {code}",
        "dob": "1975-05-05",
        "email": f"{code}@mail.example",
        "cpf": CPF2,
        "roles": [{"code": "responsavel"}],
        **extra,
    }


def sectionstudent(sec: str = "S1", stu: str = "u1", term_code: str = "2026W") -> dict[str, Any]:
    return {
        "sis_id": f"ss-{sec}-{stu}",
        "section": {"code": sec},
        "student": {"code": stu},
        "term_code": term_code,
    }


def sectionteacher(
    sec: str = "S1", tea: str = "t1", sub: str = "MAT1", term_code: str = "2026W"
) -> dict[str, Any]:
    return {
        "sis_id": f"st-{sec}-{tea}",
        "section": {"code": sec},
        "teacher": {"code": tea},
        "subject": {"code": sub},
        "term_code": term_code,
    }


def studentparent(stu: str = "u1", par: str = "p1") -> dict[str, Any]:
    return {"student": {"code": stu}, "parent": {"code": par}}


def seed_basics(server: HubServer) -> None:
    ok(
        run(
            server,
            event(
                "insert",
                term=[term()],
                subject=[subject()],
                user=[student(), teacher(), parent()],
                section=[section()],
            ),
        )
    )


def seed_links(server: HubServer) -> None:
    seed_basics(server)
    ok(
        run(
            server,
            event(
                "insert",
                sectionstudent=[sectionstudent()],
                sectionteacher=[sectionteacher()],
                studentparent=[studentparent()],
            ),
        )
    )


# -- auth and routing ------------------------------------------------------------------------


def test_base_url_has_the_env(server: HubServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/sandbox"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
def test_api_key_missing_or_wrong_is_403(server: HubServer, headers: dict[str, str]) -> None:
    response = post(server, envelope(event("insert", term=[term()])), headers=headers)
    assert (response.status_code, response.json()) == (403, {"message": "Forbidden"})
    response = get_log(server, "00000000-0000-4000-8000-000000000000", headers=headers)
    assert (response.status_code, response.json()) == (403, {"message": "Forbidden"})
    assert server.messages() == []


def test_other_env_unknown_route_and_wrong_method(server: HubServer) -> None:
    response = requests.post(
        f"{server.origin}/prod/sync/v1", json=envelope(), headers=KEY, timeout=5
    )
    assert (response.status_code, response.json()) == (404, {"message": "Not Found"})
    response = requests.get(f"{server.base_url}/nothing", headers=KEY, timeout=5)
    assert (response.status_code, response.json()) == (404, {"message": "Not Found"})
    response = requests.get(f"{server.base_url}/sync/v1", headers=KEY, timeout=5)
    assert (response.status_code, response.json()) == (405, {"message": "Method Not Allowed"})


def test_custom_env_key_and_org(world: World) -> None:
    hub = HubServer(world, env="qa", api_key="k2", org_id="org2", processing_delay_ms=0)
    hub.start()
    try:
        assert hub.base_url.endswith("/qa")
        body = envelope(event("insert", term=[term()]), org_id="org2")
        response = requests.post(
            f"{hub.base_url}/sync/v1", json=body, headers={"x-api-key": "k2"}, timeout=5
        )
        assert response.status_code == 200
        assert (
            requests.post(
                f"{hub.origin}/sandbox/sync/v1", json=body, headers={"x-api-key": "k2"}, timeout=5
            ).status_code
            == 404
        )
    finally:
        hub.stop()


# -- envelope --------------------------------------------------------------------------------


def _without(name: str) -> dict[str, Any]:
    body = envelope(event("insert", term=[term()]))
    del body[name]
    return body


ENVELOPE_CASES = [
    ("not-json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
    (_without("doo"), "missing field: doo"),
    (_without("ver"), "missing field: ver"),
    (_without("who"), "missing field: who"),
    (_without("org_id"), "missing field: org_id"),
    (envelope(event("insert", term=[term()]), who=""), "missing field: who"),
    (envelope(event("insert", term=[term()]), ver=1), "ver must be a string"),
    (envelope(event("insert", term=[term()]), org_id="other"), "org_id does not match"),
    (_without("dat"), "missing field: dat"),
    (envelope(), "missing field: dat"),
    (envelope(dat={"typ": "insert"}), "dat must be an array"),
    (envelope("x"), "dat[0] must be an object"),
    (envelope({"obj": {"term": []}}), "missing field: dat[0].typ"),
    (envelope(event("upsert", term=[term()])), "dat[0].typ must be one of"),
    (envelope(event("insert", term=[term()]), {"typ": "insert"}), "missing field: dat[1].obj"),
    (envelope({"typ": "insert", "obj": {}}), "missing field: dat[0].obj"),
    (envelope({"typ": "insert", "obj": [1]}), "dat[0].obj must be an object"),
    (envelope(event("insert", course=[{}])), "unknown object type in dat[0].obj: course"),
    (envelope(event("insert", term={"code": "x"})), "dat[0].obj.term must be an array"),
]


@pytest.mark.parametrize(("body", "problem"), ENVELOPE_CASES)
def test_envelope_errors_are_400(server: HubServer, body: Any, problem: str) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = requests.post(
        f"{server.base_url}/sync/v1",
        data=data,
        headers={**KEY, "Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith("Invalid request body") and problem in message
    assert server.messages() == []


def test_body_over_the_limit_is_413(server: HubServer) -> None:
    users = [student(f"u{i}", name="x" * 500) for i in range(400)]
    response = post(server, envelope(event("insert", user=users)))
    assert (response.status_code, response.json()) == (413, {"message": "Request Too Long"})


def test_empty_lists_are_a_message_without_items(server: HubServer) -> None:
    message_id = send(server, event("insert", term=[]))
    assert server.wait_idle(5)
    assert get_log(server, message_id).json() == {"qtdeRegistros": 0, "status": 4, "logs": []}


# -- asynchronous lifecycle ------------------------------------------------------------------


def test_status_1_while_delayed_then_4(server: HubServer) -> None:
    admin("POST", server, "/_sandbox/hub", {"processing_delay_ms": 200})
    message_id = send(server, event("insert", term=[term()]))
    body = get_log(server, message_id).json()
    assert body == {"qtdeRegistros": 0, "status": 1, "logs": []}
    assert server.messages()[0]["state"] == "queued"
    assert server.state_snapshot()["term"] == {}
    assert server.wait_idle(5)
    body = get_log(server, message_id).json()
    assert (body["qtdeRegistros"], body["status"]) == (1, 4)
    assert body["logs"][0] == {
        "baseItem": {
            "obj": "term",
            "sis_id": "2026W",
            "mensagem": [{"dsc_error": "Período incluído com sucesso", "level_Error": "i"}],
        }
    }
    summary = server.messages()[0]
    assert summary["state"] == "finished" and summary["items"] == 1
    assert summary["received_at"] <= summary["started_at"] <= summary["finished_at"]


def test_status_2_while_processing_with_errors_then_3(server: HubServer) -> None:
    admin("POST", server, "/_sandbox/hub", {"item_delay_ms": 100})
    message_id = send(
        server, event("insert", term=[{"code": "bad"}, term("A"), term("B"), term("C")])
    )
    deadline = time.monotonic() + 5
    while (body := get_log(server, message_id).json())["qtdeRegistros"] == 0:
        assert body["status"] == 1
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert body["qtdeRegistros"] < 4 and body["status"] == 2
    assert server.wait_idle(5)
    body = get_log(server, message_id).json()
    assert (body["qtdeRegistros"], body["status"]) == (4, 3)
    assert [i["baseItem"]["mensagem"][0]["level_Error"] for i in body["logs"]] == [
        "e",
        "i",
        "i",
        "i",
    ]
    summary = server.messages()[0]
    assert (summary["items"], summary["processed"], summary["errors"]) == (4, 4, 1)


def test_messages_are_processed_in_order(server: HubServer) -> None:
    admin("POST", server, "/_sandbox/hub", {"processing_delay_ms": 100})
    first = send(server, event("insert", term=[term()]))
    second = send(server, event("insert", section=[section()]))
    assert server.wait_idle(5)
    assert get_log(server, first).json()["status"] == 4
    assert get_log(server, second).json()["status"] == 4


def test_unknown_message_id_is_404(server: HubServer) -> None:
    response = get_log(server, "00000000-0000-4000-8000-000000000000")
    assert (response.status_code, response.json()) == (404, {"message": "messageId not found"})


# -- getLog paging ---------------------------------------------------------------------------


def _thirty_terms(server: HubServer) -> str:
    message_id = send(server, event("insert", term=[term(f"T{i:02}") for i in range(30)]))
    assert server.wait_idle(5)
    return message_id


def _sis_ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["baseItem"]["sis_id"] for item in response.json()["logs"]]


def test_get_log_defaults_to_25(server: HubServer) -> None:
    message_id = _thirty_terms(server)
    body = get_log(server, message_id).json()
    assert body["qtdeRegistros"] == 30 and len(body["logs"]) == 25
    assert body["logs"][0]["baseItem"]["sis_id"] == "T00"


def test_get_log_paging_by_json_body(server: HubServer) -> None:
    message_id = _thirty_terms(server)
    response = get_log(server, message_id, body={"limit": 3, "offset": 2})
    assert _sis_ids(response) == ["T02", "T03", "T04"]
    assert response.json()["qtdeRegistros"] == 30
    assert _sis_ids(get_log(server, message_id, body={"limit": 10, "offset": 25})) == [
        f"T{i}" for i in range(25, 30)
    ]
    assert _sis_ids(get_log(server, message_id, body={"offset": 40})) == []


def test_get_log_ignores_paging_in_the_query_string(server: HubServer) -> None:
    """The document ("Data Consultation") pages in the JSON body only: a client paging by
    query string gets the defaults, the first 25 items, on every page."""
    message_id = _thirty_terms(server)
    response = get_log(server, message_id, params={"limit": 10, "offset": 25})
    assert _sis_ids(response) == [f"T{i:02}" for i in range(25)]
    response = get_log(server, message_id, params={"limit": 1, "offset": 7}, body={"limit": 2})
    assert _sis_ids(response) == ["T00", "T01"]


@pytest.mark.parametrize(
    "body",
    [{"limit": 0}, {"limit": 1001}, {"limit": "abc"}, {"offset": -1}, {"limit": 2.5},
     {"limit": "5x"}, [1]],
)  # fmt: skip
def test_get_log_bad_paging_is_400(server: HubServer, body: Any) -> None:
    message_id = _thirty_terms(server)
    response = get_log(server, message_id, body=body)
    assert response.status_code == 400 and "message" in response.json()


def test_get_log_accepts_limit_1000(server: HubServer) -> None:
    message_id = _thirty_terms(server)
    assert len(_sis_ids(get_log(server, message_id, body={"limit": "1000"}))) == 30


def test_refuse_objects_refuses_the_whole_envelope_with_400(server: HubServer) -> None:
    server.configure(refuse_objects=["term:T07"])
    response = post(server, envelope(event("insert", term=[term("T06"), term("T07")])))
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid Request: term T07: object refused"}
    message_id = send(server, event("insert", term=[term("T06")]))
    assert server.wait_idle(5) and get_log(server, message_id).json()["status"] == 4
    assert set(server.state_snapshot()["term"]) == {"T06"}


def test_null_message_ids_are_processed_but_not_named(server: HubServer) -> None:
    server.configure(null_message_ids=1)
    response = post(server, envelope(event("insert", term=[term("T01")])))
    assert response.status_code == 200 and response.json() == {"messageId": None}
    assert server.wait_idle(5) and set(server.state_snapshot()["term"]) == {"T01"}
    assert server.options.null_message_ids == 0
    assert send(server, event("insert", term=[term("T02")]))


def test_forgotten_messages_are_404_and_the_state_stays(server: HubServer) -> None:
    message_id = send(server, event("insert", term=[term("T01")]))
    assert server.wait_idle(5)
    response = requests.post(f"{server.origin}/_sandbox/messages/forget", timeout=5)
    assert response.json() == {"forgotten": 1}
    assert get_log(server, message_id).status_code == 404
    assert set(server.state_snapshot()["term"]) == {"T01"}


# -- inserts: valid objects ------------------------------------------------------------------


def test_every_type_inserted_valid(server: HubServer) -> None:
    seed_links(server)
    state = server.state_snapshot()
    assert state["term"]["2026W"] == term()
    assert state["subject"]["MAT1"] == subject()
    assert state["section"]["S1"] == section()
    assert set(state["user"]) == {"u1", "t1", "p1"}
    assert state["user"]["t1"] == teacher()
    assert state["sectionstudent"] == {"S1|u1|2026W": sectionstudent()}
    assert state["sectionteacher"] == {"S1|t1|MAT1|2026W": sectionteacher()}
    assert state["studentparent"] == {"u1|p1": studentparent()}


def test_success_messages_and_sis_ids(server: HubServer) -> None:
    items = run(
        server,
        event(
            "insert",
            term=[term()],
            subject=[subject()],
            user=[student(), teacher()],
            section=[section()],
        ),
    )
    assert [(i["obj"], i["sis_id"], texts(i)) for i in items] == [
        ("term", "2026W", ["Período incluído com sucesso"]),
        ("subject", "MAT1", ["Disciplina incluída com sucesso"]),
        ("user", "p-u1", ["Perfil incluído com sucesso"]),
        ("user", "t1", ["Perfil incluído com sucesso"]),
        ("section", "sis-S1", ["Turma incluída com sucesso"]),
    ]
    items = run(
        server,
        event(
            "insert",
            user=[parent()],
            sectionstudent=[sectionstudent()],
            studentparent=[studentparent()],
        ),
    )
    assert [(i["obj"], i["sis_id"], texts(i)) for i in items][1:] == [
        ("sectionstudent", "ss-S1-u1", ["Vínculo cadastrado com sucesso"]),
        ("studentparent", "0", ["Vínculo cadastrado com sucesso"]),
    ]


def test_section_without_term_code_and_student_without_optional_fields(server: HubServer) -> None:
    minimal = {
        "code": "u9",
        "name": "Min",
        "dob": "2000-01-01",
        "roles": [{"code": "aluno"}],
        "email": "",
        "cpf": None,
    }
    ok(run(server, event("insert", section=[section("S9", term_code=None)], user=[minimal])))
    assert server.state_snapshot()["user"]["u9"] == minimal


def test_object_that_is_not_an_object(server: HubServer) -> None:
    items = run(server, event("insert", term=["2026W"]))
    assert items == [
        {
            "obj": "term",
            "sis_id": "0",
            "mensagem": [{"dsc_error": "Objeto inválido", "level_Error": "e"}],
        }
    ]


# -- inserts: invalid objects ----------------------------------------------------------------


REQUIRED_FIELDS = [
    ("term", term, "code"),
    ("term", term, "name"),
    ("term", term, "start_date"),
    ("term", term, "end_date"),
    ("subject", subject, "code"),
    ("subject", subject, "name"),
    ("section", section, "code"),
    ("section", section, "name"),
    ("user", student, "code"),
    ("user", student, "name"),
    ("user", student, "dob"),
    ("user", student, "roles"),
]


@pytest.mark.parametrize(("kind", "factory", "name"), REQUIRED_FIELDS)
def test_missing_required_field(server: HubServer, kind: str, factory: Any, name: str) -> None:
    ok(run(server, event("insert", term=[term()])))
    obj = factory()
    del obj[name]
    before = server.state_snapshot()
    one_error(
        run(server, event("insert", **{kind: [obj]})), f"Campo obrigatório não informado: {name}"
    )
    assert server.state_snapshot() == before


def test_blank_required_field_counts_as_missing(server: HubServer) -> None:
    one_error(
        run(server, event("insert", term=[term(name="  ")])),
        "Campo obrigatório não informado: name",
    )


def test_several_field_errors_are_all_reported(server: HubServer) -> None:
    items = run(server, event("insert", term=[{"code": "X", "start_date": "yesterday"}]))
    assert texts(items[0]) == [
        "Campo obrigatório não informado: name",
        "Valor inválido para start_date: yesterday",
        "Campo obrigatório não informado: end_date",
    ]


LINK_REQUIRED = [
    ("sectionstudent", sectionstudent, "sis_id", "sis_id"),
    ("sectionstudent", sectionstudent, "section", "section.code"),
    ("sectionstudent", sectionstudent, "student", "student.code"),
    ("sectionstudent", sectionstudent, "term_code", "term_code"),
    ("sectionteacher", sectionteacher, "sis_id", "sis_id"),
    ("sectionteacher", sectionteacher, "section", "section.code"),
    ("sectionteacher", sectionteacher, "teacher", "teacher.code"),
    ("sectionteacher", sectionteacher, "subject", "subject.code"),
    ("sectionteacher", sectionteacher, "term_code", "term_code"),
    ("studentparent", studentparent, "student", "student.code"),
    ("studentparent", studentparent, "parent", "parent.code"),
]


@pytest.mark.parametrize(("kind", "factory", "name", "shown"), LINK_REQUIRED)
def test_link_missing_required_field(
    server: HubServer, kind: str, factory: Any, name: str, shown: str
) -> None:
    seed_basics(server)
    obj = factory()
    del obj[name]
    one_error(
        run(server, event("insert", **{kind: [obj]})), f"Campo obrigatório não informado: {shown}"
    )
    assert server.state_snapshot()[kind] == {}


INVALID_VALUES = [
    ("term", term(start_date="2026/10/01"), "Valor inválido para start_date: 2026/10/01"),
    ("term", term(end_date="2026-02-30"), "Valor inválido para end_date: 2026-02-30"),
    ("term", term(end_date="2026-01-01"), "Valor inválido para end_date: 2026-01-01"),
    ("term", term(code=2026), "Valor inválido para code: 2026"),
    ("subject", subject(status="deleted"), "Valor inválido para status: deleted"),
    ("section", section(term_code=None, sis_id=["x"]), 'Valor inválido para sis_id: ["x"]'),
    ("user", student(gender="X"), "Valor inválido para gender: X"),
    ("user", student(status="archived"), "Valor inválido para status: archived"),
    ("user", student(dob="03/02/2001"), "Valor inválido para dob: 03/02/2001"),
    ("user", student(roles=[]), "Campo obrigatório não informado: roles"),
    ("user", student(roles={"code": "aluno"}), 'Valor inválido para roles: {"code": "aluno"}'),
    ("user", student(roles=["aluno"]), "Valor inválido para roles: aluno"),
    ("user", student(roles=[{"id": 1}]), "Campo obrigatório não informado: roles.code"),
    ("user", student(roles=[{"code": "reitor"}]), "Valor inválido para roles.code: reitor"),
    ("user", student(cpf="5299822472"), "Valor inválido para cpf: 5299822472"),
    ("user", student(cpf="52998224726"), "Valor inválido para cpf: 52998224726"),
    ("user", student(cpf="11111111111"), "Valor inválido para cpf: 11111111111"),
    ("user", student(email="not-an-email"), "Valor inválido para email: not-an-email"),
    ("sectionstudent", {**sectionstudent(), "section": "S1"}, "Valor inválido para section.code"),
    (
        "sectionstudent",
        {**sectionstudent(), "student": {"code": 7}},
        "Valor inválido para student.code: 7",
    ),
]


@pytest.mark.parametrize(("kind", "obj", "message"), INVALID_VALUES)
def test_invalid_values(server: HubServer, kind: str, obj: dict[str, Any], message: str) -> None:
    seed_basics(server)
    before = server.state_snapshot()
    items = run(server, event("insert", **{kind: [obj]}))
    assert len(items) == 1 and levels(items) == ["e"]
    assert any(t.startswith(message) for t in texts(items[0])), items
    assert server.state_snapshot() == before


def test_cpf_check_digits() -> None:
    assert cpf_is_valid(CPF) and cpf_is_valid(CPF2)
    assert not cpf_is_valid("52998224724") and not cpf_is_valid("529.982.247-25")


def test_students_need_neither_cpf_nor_email(server: HubServer) -> None:
    obj = student()
    ok(run(server, event("insert", user=[obj])))


@pytest.mark.parametrize(
    "role", ["professor", "responsavel", "diretor", "coordenador", "administrador", "colaborador"]
)
@pytest.mark.parametrize("name", ["cpf", "email"])
def test_non_students_need_cpf_and_email(server: HubServer, role: str, name: str) -> None:
    obj = teacher(roles=[{"code": "aluno"}, {"code": role}])
    del obj[name]
    one_error(run(server, event("insert", user=[obj])), f"Campo obrigatório não informado: {name}")
    assert server.state_snapshot()["user"] == {}


def test_subject_name_is_unique_per_org(server: HubServer) -> None:
    ok(run(server, event("insert", subject=[subject("A", "Linear Algebra")])))
    items = run(server, event("insert", subject=[subject("B", "  linear   ALGEBRA ")]))
    one_error(items, "Nome de disciplina já cadastrado no HUB:   linear   ALGEBRA ")
    assert set(server.state_snapshot()["subject"]) == {"A"}
    # the subject itself may keep its name, and a freed name can be taken
    ok(run(server, event("update", subject=[subject("A", "Linear Algebra", status="arquived")])))
    ok(run(server, event("update", subject=[subject("A", "Algebra")])))
    ok(run(server, event("insert", subject=[subject("B", "Linear Algebra")])))


def test_missing_term_of_a_section(server: HubServer) -> None:
    one_error(
        run(server, event("insert", section=[section(term_code="1999S")])), "Período não cadastrado"
    )
    assert server.state_snapshot()["section"] == {}


MISSING_REFERENCES = [
    ("sectionstudent", sectionstudent(sec="S404"), "Turma não cadastrada"),
    ("sectionstudent", sectionstudent(stu="u404"), "Aluno não cadastrado"),
    ("sectionstudent", sectionstudent(stu="t1"), "Aluno não cadastrado"),
    ("sectionstudent", sectionstudent(term_code="1999S"), "Período não cadastrado"),
    ("sectionteacher", sectionteacher(sec="S404"), "Turma não cadastrada"),
    ("sectionteacher", sectionteacher(tea="t404"), "Professor não cadastrado"),
    ("sectionteacher", sectionteacher(tea="u1"), "Professor não cadastrado"),
    ("sectionteacher", sectionteacher(sub="X404"), "Disciplina não cadastrada"),
    ("sectionteacher", sectionteacher(term_code="1999S"), "Período não cadastrado"),
    ("studentparent", studentparent(stu="u404"), "Aluno não cadastrado"),
    ("studentparent", studentparent(stu="t1"), "Aluno não cadastrado"),
    ("studentparent", studentparent(par="p404"), "Responsável não cadastrado"),
    ("studentparent", studentparent(par="t1"), "Responsável não cadastrado"),
]


@pytest.mark.parametrize(("kind", "obj", "message"), MISSING_REFERENCES)
def test_missing_references(
    server: HubServer, kind: str, obj: dict[str, Any], message: str
) -> None:
    seed_basics(server)
    one_error(run(server, event("insert", **{kind: [obj]})), message)
    assert server.state_snapshot()[kind] == {}


def test_all_missing_references_are_reported(server: HubServer) -> None:
    items = run(server, event("insert", sectionteacher=[sectionteacher()]))
    assert texts(items[0]) == [
        "Turma não cadastrada",
        "Professor não cadastrado",
        "Disciplina não cadastrada",
        "Período não cadastrado",
    ]


# -- duplicates and updates ------------------------------------------------------------------


DUPLICATES = [
    ("term", term(), "Período já cadastrado no HUB"),
    ("subject", subject(), "Disciplina já cadastrada no HUB"),
    ("section", section(), "Turma já cadastrada no HUB"),
    ("user", student(), "Perfil já cadastrado no HUB"),
    ("sectionstudent", sectionstudent(), "Relação Turma x Aluno já cadastrada"),
    ("sectionteacher", sectionteacher(), "Relação Turma x Professor já cadastrada"),
    ("studentparent", studentparent(), "Relação Aluno x Responsável já cadastrada"),
]


@pytest.mark.parametrize(("kind", "obj", "message"), DUPLICATES)
def test_duplicate_insert_is_an_error(
    server: HubServer, kind: str, obj: dict[str, Any], message: str
) -> None:
    seed_links(server)
    before = server.state_snapshot()
    changed = {**obj, "sis_id": "other"}
    one_error(run(server, event("insert", **{kind: [changed]})), message)
    assert server.state_snapshot() == before
    assert server.duplicate_inserts_by_type() == {kind: 1}


def test_duplicate_inside_one_batch(server: HubServer) -> None:
    items = run(
        server, event("insert", term=[term(), term(name="Second")]), event("insert", term=[term()])
    )
    assert levels(items) == ["i", "e", "e"]
    assert texts(items[1]) == ["Período já cadastrado no HUB"]
    assert server.state_snapshot()["term"]["2026W"]["name"] == "WS 2026W"


UPDATES = [
    ("term", term(name="Winter 2026", status="active"), "2026W", "Período atualizado com sucesso"),
    ("subject", subject(name="Maths"), "MAT1", "Disciplina atualizada com sucesso"),
    ("section", section(name="Renamed", status="suspended"), "S1", "Turma atualizada com sucesso"),
    ("user", student(name="New Name", status="arquived"), "u1", "Perfil atualizado com sucesso"),
]


@pytest.mark.parametrize(("kind", "obj", "key", "message"), UPDATES)
def test_update_replaces_the_object(
    server: HubServer, kind: str, obj: dict[str, Any], key: str, message: str
) -> None:
    seed_basics(server)
    items = run(server, event("update", **{kind: [obj]}))
    assert levels(items) == ["i"] and texts(items[0]) == [message]
    assert server.state_snapshot()[kind][key] == obj


def test_update_drops_fields_not_sent(server: HubServer) -> None:
    seed_basics(server)
    obj = student()
    del obj["gender"]
    ok(run(server, event("update", user=[obj])))
    assert "gender" not in server.state_snapshot()["user"]["u1"]


def test_update_is_validated_like_insert(server: HubServer) -> None:
    seed_basics(server)
    before = server.state_snapshot()
    one_error(
        run(server, event("update", user=[teacher(cpf=None)])),
        "Campo obrigatório não informado: cpf",
    )
    one_error(
        run(server, event("update", section=[section(term_code="1999S")])), "Período não cadastrado"
    )
    assert server.state_snapshot() == before


@pytest.mark.parametrize(
    ("kind", "obj", "message"),
    [
        ("term", term("1999S"), "Período não cadastrado"),
        ("subject", subject("X"), "Disciplina não cadastrada"),
        ("section", section("S404"), "Turma não cadastrada"),
        ("user", student("u404"), "Perfil não cadastrado"),
    ],
)
def test_update_of_a_missing_key(
    server: HubServer, kind: str, obj: dict[str, Any], message: str
) -> None:
    seed_basics(server)
    one_error(run(server, event("update", **{kind: [obj]})), message)
    assert obj["code"] not in server.state_snapshot()[kind]


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("sectionstudent", sectionstudent()),
        ("sectionteacher", sectionteacher()),
        ("studentparent", studentparent()),
    ],
)
def test_links_have_no_update(server: HubServer, kind: str, obj: dict[str, Any]) -> None:
    seed_links(server)
    before = server.state_snapshot()
    one_error(
        run(server, event("update", **{kind: [{**obj, "sis_id": "new"}]})),
        "Relacionamentos não possuem atualização",
    )
    assert server.state_snapshot() == before


# -- deletes ---------------------------------------------------------------------------------


def test_user_role_delete_partial_then_full(server: HubServer) -> None:
    both = teacher("x1", roles=[{"code": "aluno"}, {"code": "professor", "id": 2}])
    ok(run(server, event("insert", user=[both])))
    items = run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "aluno"}]}]))
    assert levels(items) == ["i"] and texts(items[0]) == ["Papéis removidos do perfil com sucesso"]
    assert server.state_snapshot()["user"]["x1"]["roles"] == [{"code": "professor", "id": 2}]
    one_error(
        run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "aluno"}]}])),
        "Papel não atribuído ao perfil: aluno",
    )
    items = run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "professor"}]}]))
    assert texts(items[0]) == ["Perfil excluído com sucesso"]
    assert server.state_snapshot()["user"] == {}
    one_error(
        run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "aluno"}]}])),
        "Perfil não cadastrado",
    )


def test_user_delete_needs_roles(server: HubServer) -> None:
    seed_basics(server)
    one_error(
        run(server, event("delete", user=[{"code": "u1"}])),
        "Campo obrigatório não informado: roles",
    )
    one_error(
        run(server, event("delete", user=[{"roles": [{"code": "aluno"}]}])),
        "Campo obrigatório não informado: code",
    )
    assert "u1" in server.state_snapshot()["user"]


DELETE_MISSING = [
    ("term", {"code": "nope"}, "Período não cadastrado"),
    ("subject", {"code": "nope"}, "Disciplina não cadastrada"),
    ("section", {"code": "nope"}, "Turma não cadastrada"),
    ("sectionstudent", sectionstudent(stu="nope"), "Relação Turma x Aluno não cadastrada"),
    ("sectionteacher", sectionteacher(tea="nope"), "Relação Turma x Professor não cadastrada"),
    ("studentparent", studentparent(par="nope"), "Relação Aluno x Responsável não cadastrada"),
]


@pytest.mark.parametrize(("kind", "obj", "message"), DELETE_MISSING)
def test_delete_of_a_missing_key(
    server: HubServer, kind: str, obj: dict[str, Any], message: str
) -> None:
    seed_links(server)
    before = server.state_snapshot()
    one_error(run(server, event("delete", **{kind: [obj]})), message)
    assert server.state_snapshot() == before


def test_delete_with_references_is_rejected_until_links_are_gone(server: HubServer) -> None:
    seed_links(server)
    before = server.state_snapshot()
    items = run(
        server,
        event(
            "delete",
            term=[{"code": "2026W"}],
            subject=[{"code": "MAT1"}],
            section=[{"code": "S1"}],
            user=[
                {"code": "u1", "roles": [{"code": "aluno"}]},
                {"code": "t1", "roles": [{"code": "professor"}]},
                {"code": "p1", "roles": [{"code": "responsavel"}]},
            ],
        ),
    )
    assert [texts(i) for i in items] == [
        ["Período possui vínculos"],
        ["Disciplina possui vínculos"],
        ["Turma possui vínculos"],
        ["Perfil possui vínculos"],
        ["Perfil possui vínculos"],
        ["Perfil possui vínculos"],
    ]
    assert server.state_snapshot() == before
    # dependency order: links, sections, users, subjects, terms
    key_only = {"sis_id": None}
    items = run(
        server,
        event(
            "delete",
            sectionstudent=[{**sectionstudent(), **key_only}],
            sectionteacher=[{k: v for k, v in sectionteacher().items() if k != "sis_id"}],
            studentparent=[studentparent()],
        ),
        event("delete", section=[{"code": "S1"}]),
        event(
            "delete",
            user=[
                {"code": "u1", "roles": [{"code": "aluno"}]},
                {"code": "t1", "roles": [{"code": "professor"}]},
                {"code": "p1", "roles": [{"code": "responsavel"}]},
            ],
        ),
        event("delete", subject=[{"code": "MAT1"}]),
        event("delete", term=[{"code": "2026W"}]),
    )
    ok(items)
    assert texts(items[0]) == ["Vínculo excluído com sucesso"]
    assert server.state_snapshot() == {kind: {} for kind in OBJECT_TYPES}


def test_term_used_only_by_a_section_cannot_be_deleted(server: HubServer) -> None:
    ok(run(server, event("insert", term=[term()], section=[section()])))
    one_error(run(server, event("delete", term=[{"code": "2026W"}])), "Período possui vínculos")
    ok(run(server, event("update", section=[section(term_code=None)])))
    ok(run(server, event("delete", term=[{"code": "2026W"}])))


def test_removing_a_linked_role_is_rejected(server: HubServer) -> None:
    both = teacher("x1", roles=[{"code": "aluno"}, {"code": "professor"}])
    ok(
        run(
            server,
            event("insert", term=[term()], subject=[subject()], section=[section()], user=[both]),
            event("insert", sectionteacher=[sectionteacher(tea="x1")]),
        )
    )
    one_error(
        run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "professor"}]}])),
        "Perfil possui vínculos",
    )
    ok(run(server, event("delete", user=[{"code": "x1", "roles": [{"code": "aluno"}]}])))
    assert server.state_snapshot()["user"]["x1"]["roles"] == [{"code": "professor"}]


# -- item errors and robustness --------------------------------------------------------------


def test_item_error_rate_1_leaves_the_state_unchanged(server: HubServer) -> None:
    seed_basics(server)
    before = server.state_snapshot()
    admin("POST", server, "/_sandbox/hub", {"item_error_rate": 1.0})
    items = run(
        server,
        event("insert", term=[term("2027S")], user=[student("u2")]),
        event("delete", section=[{"code": "S1"}]),
    )
    assert [texts(i) for i in items] == [[MSG_ITEM_ERROR]] * 3
    assert levels(items) == ["e"] * 3
    assert server.state_snapshot() == before


def test_item_errors_repeat_for_a_seed(server: HubServer) -> None:
    def pattern() -> list[str]:
        admin("POST", server, "/_sandbox/reset")
        admin("POST", server, "/_sandbox/hub", {"item_error_rate": 0.5, "item_error_seed": 3})
        return levels(run(server, event("insert", term=[term(f"T{i}") for i in range(20)])))

    first = pattern()
    assert "e" in first and "i" in first
    assert pattern() == first
    assert len(server.state_snapshot()["term"]) == first.count("i")


def test_worker_survives_a_bug(server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    real = server._store.apply

    def flaky(op: str, kind: str, obj: Any) -> Any:
        if isinstance(obj, dict) and obj.get("code") == "BOOM":
            raise RuntimeError("sandbox bug")
        return real(op, kind, obj)

    monkeypatch.setattr(server._store, "apply", flaky)
    items = run(server, event("insert", term=[term("BOOM"), term()]))
    assert levels(items) == ["e", "i"] and texts(items[0]) == [MSG_ITEM_ERROR]
    ok(run(server, event("insert", subject=[subject()])))


def test_big_batches_are_processed_quickly(server: HubServer) -> None:
    started = time.monotonic()
    ids = [
        send(server, event("insert", user=[student(f"b{m}-{i}") for i in range(500)]))
        for m in range(10)
    ]
    assert server.wait_idle(10)
    assert time.monotonic() - started < 5
    assert len(server.state_snapshot()["user"]) == 5000
    assert all(get_log(server, i).json()["qtdeRegistros"] == 500 for i in ids)


# -- state and admin -------------------------------------------------------------------------


def test_state_snapshot_format(server: HubServer) -> None:
    empty = {kind: {} for kind in OBJECT_TYPES}
    assert server.state_snapshot() == empty
    assert admin("GET", server, "/_sandbox/state") == empty
    seed_links(server)
    state = admin("GET", server, "/_sandbox/state")
    assert state == server.state_snapshot()
    assert list(state) == list(OBJECT_TYPES)
    assert list(state["sectionteacher"]) == ["S1|t1|MAT1|2026W"]
    # a deep copy: changing it changes nothing on the server
    state = server.state_snapshot()
    state["user"]["u1"]["name"] = "changed"
    assert server.state_snapshot()["user"]["u1"]["name"] == "Student u1"


def test_admin_messages_reset_and_options(server: HubServer) -> None:
    message_id = send(server, event("insert", term=[term(), {"code": "bad"}]))
    assert server.wait_idle(5)
    [summary] = admin("GET", server, "/_sandbox/messages")["messages"]
    assert summary["messageId"] == message_id and summary["who"] == "sis.test"
    assert (summary["status"], summary["items"], summary["processed"], summary["errors"]) == (
        3,
        2,
        2,
        1,
    )
    admin("POST", server, "/_sandbox/reset")
    assert admin("GET", server, "/_sandbox/messages") == {"messages": []}
    assert server.state_snapshot()["term"] == {}
    assert get_log(server, message_id).status_code == 404
    options = admin("POST", server, "/_sandbox/hub", {"item_delay_ms": 5})
    assert options["item_delay_ms"] == 5 and admin("GET", server, "/_sandbox/hub") == options
    for bad in ({"item_error_rate": 2}, {"nope": 1}, {"processing_delay_ms": -1}):
        response = requests.post(f"{server.origin}/_sandbox/hub", json=bad, timeout=5)
        assert response.status_code == 400
    response = requests.post(f"{server.origin}/_sandbox/save", timeout=5)
    assert response.status_code == 400  # no state_path


def test_reset_drops_queued_messages(server: HubServer) -> None:
    admin("POST", server, "/_sandbox/hub", {"processing_delay_ms": 300})
    send(server, event("insert", term=[term()]))
    admin("POST", server, "/_sandbox/reset")
    assert server.wait_idle(5)
    assert server.state_snapshot()["term"] == {} and server.messages() == []


def test_state_path_round_trip(world: World, tmp_path: Path) -> None:
    path = tmp_path / "hub" / "state.json"
    first = HubServer(world, processing_delay_ms=0, state_path=path)
    first.start()
    try:
        seed_links(first)
        saved = requests.post(f"{first.origin}/_sandbox/save", timeout=5).json()
        assert saved["counts"]["sectionteacher"] == 1 and path.exists()
        assert json.loads(path.read_text()) == first.state_snapshot()
        send(first, event("insert", term=[term("2027S")]))  # saved by stop()
    finally:
        first.stop()
    expected = json.loads(path.read_text())
    assert "2027S" in expected["term"]
    second = HubServer(world, processing_delay_ms=0, state_path=path)
    second.start()
    try:
        assert second.state_snapshot() == expected
        # the indexes are rebuilt: references and duplicates behave as before
        one_error(run(second, event("delete", term=[{"code": "2026W"}])), "Período possui vínculos")
        one_error(
            run(second, event("insert", subject=[subject("OTHER", "Subject MAT1")])),
            "Nome de disciplina já cadastrado no HUB: Subject MAT1",
        )
    finally:
        second.stop()


def test_a_bad_state_file_fails_at_start(world: World, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"users": {}}))
    with pytest.raises(ValueError, match="HUB state"):
        HubServer(world, state_path=path).start()


# -- generic faults --------------------------------------------------------------------------


def _script(server: HubServer, kind: str, **extra: Any) -> None:
    admin("POST", server, "/_sandbox/faults", {"script": [kind], **extra})


def test_fault_error(server: HubServer) -> None:
    _script(server, "error")
    response = post(server, envelope(event("insert", term=[term()])))
    assert (response.status_code, response.json()) == (503, {"message": "Service Unavailable"})
    assert server.messages() == []
    assert post(server, envelope(event("insert", term=[term()]))).status_code == 200


def test_fault_rate_limit(server: HubServer) -> None:
    _script(server, "rate_limit", retry_after=7)
    response = post(server, envelope(event("insert", term=[term()])))
    assert (response.status_code, response.json()) == (429, {"message": "Too Many Requests"})
    assert response.headers["Retry-After"] == "7"


def test_fault_drop(server: HubServer) -> None:
    _script(server, "drop")
    with pytest.raises(requests.ConnectionError):
        post(server, envelope(event("insert", term=[term()])))
    assert server.messages() == []


def test_fault_truncate(server: HubServer) -> None:
    _script(server, "truncate")
    response = post(server, envelope(event("insert", term=[term()])))
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert len(server.messages()) == 1  # accepted, only the answer was cut


def test_fault_slow(server: HubServer) -> None:
    _script(server, "slow", slow_ms=300)
    started = time.monotonic()
    response = post(server, envelope(event("insert", term=[term()])))
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


def test_duplicate_inserts_counts_items_refused_as_already_there(server: HubServer) -> None:
    run(server, event("insert", term=[term("2026W"), term("2027S")]))
    assert server.duplicate_inserts() == 0

    run(server, event("insert", term=[term("2026W")]), event("update", term=[term("2027S")]))
    assert server.duplicate_inserts() == 1


def test_duplicate_inserts_are_counted_by_type(server: HubServer) -> None:
    run(server, event("insert", term=[term("2026W")]))
    run(server, event("insert", term=[term("2026W")]))
    assert server.duplicate_inserts_by_type() == {"term": 1}
    assert server.duplicate_inserts(links=False) == server.duplicate_inserts() == 1
