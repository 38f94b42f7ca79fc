"""Bad requests never crash a sandbox server, and every request is logged in one line."""

from __future__ import annotations

import logging
import socket
from datetime import date

import pytest
import requests

from sandbox.server import running_sandbox
from sandbox.world import World

JUNK_BODIES = [
    b"",
    b"{",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'{"a": 1}',
    b"x" * 100_000,
    b'{"PageSize": "many", "StartIndex": -1}',
    b'{"dat": [{"typ": 1}]}',
]
JUNK_QUERIES = [
    "",
    "?PageNr=abc&PageSize=0",
    "?offset=-1&limit=x",
    "?%ff%fe=1",
    "?LastSyncDate=99.99.9999T99:99:99",
    "?fromDate=yesterday&orgPath=%00",
    "?limit=1000000&offset=1000000000000",
    "?q=" + "a" * 5000,
]


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(port_base=0, world=World(31, 60, today=date(2026, 11, 23))) as running:
        yield running


def _paths(sandbox) -> list[str]:
    return [
        f"{sandbox.urls['co']}/wbOAuth2.token",
        f"{sandbox.urls['co']}/pl/rest/loc_api-dms.dmsstudents/",
        f"{sandbox.urls['co']}/pl/rest/loc_api-dms.nothing/",
        f"{sandbox.urls['studip']}/user/%ff/courses",
        f"{sandbox.urls['studip']}/course/x/members",
        f"{sandbox.urls['studip']}/users",
        f"{sandbox.urls['lms']}/services/api/oauth2/token",
        f"{sandbox.urls['lms']}/Services/api/ExternalRegistration/GetActiveRegistrationData",
        f"{sandbox.urls['hub']}/sync/v1",
        f"{sandbox.urls['hub']}/instituicao/getLog/%00",
        f"{sandbox.co.origin}/_sandbox/world/step",
        f"{sandbox.hub.origin}/_sandbox/faults",
    ]


def test_junk_gets_an_error_answer_not_a_crash(sandbox) -> None:
    headers = [
        {},
        {"Authorization": "Bearer nope", "Content-Type": "application/json"},
        {"x-api-key": "sandbox-hub-key", "Content-Type": "text/xml"},
        {"Authorization": "Basic !!!"},
    ]
    for url in _paths(sandbox):
        for index, body in enumerate(JUNK_BODIES):
            query = JUNK_QUERIES[index % len(JUNK_QUERIES)]
            for method in ("GET", "POST", "DELETE"):
                response = requests.request(
                    method,
                    url + query,
                    data=body,
                    timeout=10,
                    headers=headers[index % len(headers)],
                )
                assert 400 <= response.status_code < 500 or response.status_code == 200, (
                    method,
                    url,
                    query,
                    response.status_code,
                    response.text[:200],
                )
    for name, server in sandbox.servers.items():
        assert server.request_count("(crash)") == 0, name


def test_malformed_http_does_not_kill_the_server(sandbox) -> None:
    for server in sandbox.servers.values():
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            raw.sendall(b"NONSENSE\r\n\r\n")
            raw.recv(4096)
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            raw.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")  # then hang up
        assert requests.get(f"{server.origin}/_sandbox/requests", timeout=5).ok


def test_each_request_is_logged_in_one_line(sandbox, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("sandbox")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="sandbox"):
            requests.get(f"{sandbox.urls['studip']}/semesters?limit=2", timeout=5)
            requests.get(f"{sandbox.urls['studip']}/nowhere", timeout=5)
    finally:
        logger.setLevel(level)
    lines = [r.getMessage() for r in caplog.records if r.name == "sandbox"]
    assert len(lines) == 2
    assert lines[0].startswith("studip GET /api.php/semesters?limit=2 200 ")
    assert lines[1].startswith("studip GET /api.php/nowhere 404 ")
    assert all("\n" not in line for line in lines)
