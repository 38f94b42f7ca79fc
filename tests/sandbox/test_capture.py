"""Opt-in request capture: the benchmarks replay exactly what a sync requested."""

from __future__ import annotations

from datetime import date

import pytest
import requests

from sandbox.server import running_sandbox
from sandbox.world import World


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(port_base=0, world=World(33, 40, today=date(2026, 11, 23))) as running:
        yield running


def _capture(origin: str, enabled: object) -> requests.Response:
    return requests.post(
        f"{origin}/_sandbox/requests/capture", json={"enabled": enabled}, timeout=5
    )


def test_capture_is_off_until_enabled(sandbox) -> None:
    origin = sandbox.studip.origin
    requests.get(f"{sandbox.studip.base_url}/semesters", timeout=5)
    assert requests.get(f"{origin}/_sandbox/requests/captured", timeout=5).status_code == 409
    assert _capture(origin, "yes").status_code == 400


def test_captures_api_requests_with_query_and_body_but_not_admin_routes(sandbox) -> None:
    origin = sandbox.lms.origin
    assert _capture(origin, True).ok
    requests.get(f"{sandbox.lms.base_url}/nowhere?a=1&b=x%20y", timeout=5)
    requests.post(f"{sandbox.lms.base_url}/also/nowhere", json={"PageSize": 5}, timeout=5)
    requests.get(f"{origin}/_sandbox/world", timeout=5)
    captured = requests.get(f"{origin}/_sandbox/requests/captured", timeout=5).json()["requests"]
    assert captured == [
        {"method": "GET", "path": "/nowhere", "query": "a=1&b=x%20y", "body": ""},
        {"method": "POST", "path": "/also/nowhere", "query": "", "body": '{"PageSize": 5}'},
    ]
    assert _capture(origin, False).ok
    assert requests.get(f"{origin}/_sandbox/requests/captured", timeout=5).status_code == 409


def test_enabling_again_starts_afresh(sandbox) -> None:
    origin = sandbox.co.origin
    assert _capture(origin, True).ok
    requests.get(f"{sandbox.co.base_url}/first", timeout=5)
    assert _capture(origin, True).ok
    requests.get(f"{sandbox.co.base_url}/second", timeout=5)
    captured = requests.get(f"{origin}/_sandbox/requests/captured", timeout=5).json()["requests"]
    assert [r["path"] for r in captured] == ["/second"]
