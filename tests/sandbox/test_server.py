"""The four servers together: ports, world admin routes, the command line, saved state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import requests

from sandbox.expected import expected_hub_state
from sandbox.http import FaultConfig, Response
from sandbox.server import _parse_faults, running_sandbox
from sandbox.world import World

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox():
    world = World(seed=21, students=120, today=date(2026, 11, 23))
    with running_sandbox(port_base=0, world=world) as running:
        yield running


def test_serves_all_four_systems_on_their_urls(sandbox) -> None:
    urls = sandbox.urls
    assert set(urls) == {"co", "studip", "lms", "hub"}
    assert urls["studip"].endswith("/api.php")
    assert urls["hub"].endswith("/sandbox")
    assert set(sandbox.env) == {"CO_API_URL", "STUDIP_API_URL", "LMS_API_URL", "HUB_API_URL"}
    assert requests.get(f"{urls['studip']}/semesters", timeout=5).status_code == 200
    token = requests.post(
        f"{urls['co']}/wbOAuth2.token",
        timeout=5,
        data={
            "client_id": "hubsync",
            "client_secret": "sandbox-co-secret",
            "grant_type": "client_credentials",
        },
    )
    assert token.status_code == 200
    login = requests.post(
        f"{urls['lms']}/services/api/oauth2/token",
        timeout=5,
        data={
            "grant_type": "password",
            "username": "hubsync",
            "password": "sandbox-lms-password",
            "scope": "/Root/Sandbox",
        },
    )
    assert login.status_code == 200
    log = requests.get(
        f"{urls['hub']}/instituicao/getLog/unknown",
        timeout=5,
        headers={"x-api-key": "sandbox-hub-key"},
    )
    assert log.status_code == 404


def test_world_admin_routes_on_every_server(sandbox) -> None:
    for server in sandbox.servers.values():
        described = requests.get(f"{server.origin}/_sandbox/world", timeout=5).json()
        assert described["students"] == 120 and described["seed"] == 21
    co = sandbox.co.origin
    before = requests.get(f"{co}/_sandbox/world", timeout=5).json()
    moved = requests.post(
        f"{co}/_sandbox/world/clock", json={"advance_seconds": 900}, timeout=5
    ).json()
    assert moved["clock_offset_seconds"] >= before["clock_offset_seconds"] + 900
    assert (
        requests.post(
            f"{co}/_sandbox/world/clock", json={"advance_seconds": -5}, timeout=5
        ).status_code
        == 400
    )
    step = requests.post(
        f"{sandbox.lms.origin}/_sandbox/world/step", json={"seed": 3}, timeout=5
    ).json()
    assert step["counts"]["new_student"] >= 1
    after = requests.get(f"{co}/_sandbox/world", timeout=5).json()
    assert after["steps"] == before["steps"] + 1
    expected = requests.get(f"{sandbox.hub.origin}/_sandbox/expected", timeout=10).json()
    assert expected["state"] == expected_hub_state(sandbox.world).state
    assert set(expected["unsendable"]) == set(expected_hub_state(sandbox.world).unsendable)


def test_faults_are_per_server(sandbox) -> None:
    studip = sandbox.studip
    requests.post(f"{studip.origin}/_sandbox/faults", json={"script": ["error"]}, timeout=5)
    try:
        assert requests.get(f"{studip.base_url}/semesters", timeout=5).status_code == 500
        assert requests.get(f"{studip.base_url}/semesters", timeout=5).status_code == 200
        assert requests.get(f"{sandbox.hub.origin}/_sandbox/faults", timeout=5).json() == {
            **FaultConfig().__dict__
        }
    finally:
        requests.post(f"{studip.origin}/_sandbox/faults", json={}, timeout=5)


def test_fault_options_on_the_command_line() -> None:
    faults = _parse_faults(
        ["co:error_rate=0.25", "all:latency_floor_ms=20", "hub:script=error,drop"]
    )
    assert faults["co"].error_rate == 0.25
    assert {f.latency_floor_ms for f in faults.values()} == {20}
    assert faults["hub"].script == ["error", "drop"]
    for bad in ("co", "xx:error_rate=1", "co:error_rate=2", "co:bogus=1"):
        with pytest.raises(Exception, match="fault"):
            _parse_faults([bad])


def test_state_survives_a_restart(tmp_path: Path) -> None:
    headers = {"x-api-key": "sandbox-hub-key"}
    term = {
        "code": "2026W",
        "name": "WS 2026/2027",
        "start_date": "2026-10-01",
        "end_date": "2027-03-31",
    }
    envelope = {
        "doo": "2026-11-23T10:00:00Z",
        "ver": "1.0.0",
        "who": "sis.test",
        "org_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "dat": [{"typ": "insert", "obj": {"term": [term]}}],
    }
    with running_sandbox(port_base=0, students=40, seed=5, state_dir=tmp_path) as first:
        first.world.step(seed=1)
        steps = first.world.step_count
        answer = requests.post(
            f"{first.urls['hub']}/sync/v1", json=envelope, headers=headers, timeout=5
        )
        assert answer.status_code == 200
        first.hub.wait_idle(10)
    with running_sandbox(port_base=0, students=40, seed=5, state_dir=tmp_path) as second:
        assert second.world.step_count == steps
        assert second.hub.state_snapshot()["term"] == {"2026W": term}
    with running_sandbox(port_base=0, students=41, seed=5, state_dir=tmp_path) as other:
        assert other.world.step_count == 0, "another world size starts afresh"
        assert other.hub.state_snapshot()["term"] == {}


def test_command_line_prints_urls_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.server", "--port-base", "0", "--students", "30", "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        while not lines or lines[-1] != "sandbox ready; Ctrl-C stops it":
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line.strip())
        urls = dict(line.split("=", 1) for line in lines if "=" in line)
        assert set(urls) == {"CO_API_URL", "STUDIP_API_URL", "LMS_API_URL", "HUB_API_URL"}
        assert requests.get(f"{urls['STUDIP_API_URL']}/semesters", timeout=5).ok
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


def test_command_line_rejects_bad_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.server", "--fault", "co:nope=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr


def test_request_hooks_see_numbered_api_requests_before_and_after(sandbox) -> None:
    seen: list[tuple[str, str, int]] = []
    server = sandbox.studip
    server.add_request_hook(lambda request, n: seen.append(("before", request.path, n)))
    server.add_request_hook(lambda request, n: seen.append(("after", request.path, n)), after=True)
    try:
        base = sandbox.urls["studip"]
        requests.get(f"{base}/semesters", timeout=5)
        requests.get(f"{sandbox.studip.origin}/_sandbox/requests", timeout=5)  # admin: no hook
        requests.get(f"{base}/semesters", timeout=5)
    finally:
        server.clear_request_hooks()
    first = seen[0][2]
    path = "/api.php/semesters"
    assert seen == [
        ("before", path, first),
        ("after", path, first),
        ("before", path, first + 1),
        ("after", path, first + 1),
    ]
    requests.get(f"{base}/semesters", timeout=5)
    assert len(seen) == 4  # cleared


def test_a_failing_hook_does_not_break_the_answer(sandbox) -> None:
    def broken(request, number) -> None:
        raise RuntimeError("hook bug")

    sandbox.co.add_request_hook(broken)
    try:
        response = requests.post(f"{sandbox.urls['co']}/wbOAuth2.token", timeout=5, data={})
    finally:
        sandbox.co.clear_request_hooks()
    assert response.status_code in (400, 401)


def test_injected_faults_are_counted_by_kind(sandbox) -> None:
    server = sandbox.studip
    before = dict(server.injected)
    server.faults.configure(FaultConfig(script=["error", "ok", "rate_limit"]))
    try:
        for _ in range(3):
            requests.get(f"{sandbox.urls['studip']}/semesters", timeout=5)
    finally:
        server.faults.configure(FaultConfig())
    assert server.injected["error"] == before.get("error", 0) + 1
    assert server.injected["rate_limit"] == before.get("rate_limit", 0) + 1


def test_a_hook_can_drop_the_request_unhandled(sandbox) -> None:
    before = sandbox.hub.request_count("sync/v1")
    sandbox.hub.add_request_hook(lambda request, number: "drop")
    try:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{sandbox.urls['hub']}/sync/v1", json={}, timeout=5)
    finally:
        sandbox.hub.clear_request_hooks()
    assert sandbox.hub.request_count("sync/v1") == before  # never reached the handler
    assert requests.post(f"{sandbox.urls['hub']}/sync/v1", json={}, timeout=5).status_code == 403


def test_response_filters_rewrite_api_answers_until_cleared(sandbox) -> None:
    server = sandbox.studip
    url = f"{sandbox.urls['studip']}/semesters"
    server.add_response_filter(lambda request, response: Response.text("<html/>", 200))
    try:
        rewritten = requests.get(url, timeout=5)
        admin = requests.get(f"{server.origin}/_sandbox/requests", timeout=5)
    finally:
        server.clear_request_hooks()
    assert rewritten.text == "<html/>"
    assert admin.json()["counts"]  # admin answers are never filtered
    assert requests.get(url, timeout=5).json()["collection"]


def test_the_sandbox_listens_on_loopback_unless_told_otherwise(sandbox) -> None:
    from sandbox.server import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert build_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    for server in sandbox.servers.values():
        assert server._httpd is not None
        assert server._httpd.server_address[0] == "127.0.0.1"


def test_the_first_api_request_time_is_kept_until_a_reset(sandbox) -> None:
    server = sandbox.studip
    admin = f"{server.origin}/_sandbox/requests"
    assert requests.post(f"{admin}/reset", timeout=5).ok
    requests.get(f"{sandbox.urls['studip']}/no/such/route", timeout=5)  # a probe: no route
    assert requests.get(admin, timeout=5).json()["first_request_at"] is None  # nor admin routes
    before = time.time()
    requests.get(f"{sandbox.urls['studip']}/semesters", timeout=5)
    first = requests.get(admin, timeout=5).json()["first_request_at"]
    assert before - 1 <= first <= time.time()
    requests.get(f"{sandbox.urls['studip']}/semesters", timeout=5)
    assert requests.get(admin, timeout=5).json()["first_request_at"] == first
    assert requests.post(f"{admin}/reset", timeout=5).ok
    assert requests.get(admin, timeout=5).json()["first_request_at"] is None
