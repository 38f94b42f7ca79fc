"""Unreachable systems: a closed port or a host name that does not resolve fails within seconds,
with an error naming the system and the host (and never a credential).

The retry waits are recorded instead of slept (their sum counts towards the time to fail), so
the tests take milliseconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from resources.campusonline import STUDENTS, CampusOnlineResource
from resources.http import ApiError, HttpClient
from resources.hub import HubClient
from resources.lms import LmsResource
from resources.studip import StudIPResource

FAIL_FAST_S = 10  # a refused connection: five attempts with backoff, about 4-8 s
UNRESOLVABLE = "hubsync-no-such-host.invalid"  # .invalid never resolves (RFC 2606)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens


def _co(url: str) -> None:
    client = CampusOnlineResource(
        api_url=url, client_id="hubsync", client_secret="co-secret-x1"
    ).client()
    next(iter(client.pages(STUDENTS)))


def _studip(url: str) -> None:
    StudIPResource(
        api_url=f"{url}/api.php", username="u", password="studip-secret-x2"
    ).client().discovery()


def _lms(url: str) -> None:
    LmsResource(
        api_url=url, username="u", password="lms-secret-x3", org_path="/Root/X"
    ).client().login()


def _hub(url: str) -> None:
    HubClient(f"{url}/prod", "hub-secret-x4").get_log("some-message")


CALLS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "co": ("CAMPUSonline", _co),
    "studip": ("Stud.IP", _studip),
    "lms": ("LMS", _lms),
    "hub": ("HUB", _hub),
}


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry waits of every HttpClient, recorded instead of slept."""
    recorded: list[float] = []
    original = HttpClient.__init__

    def recording(self: HttpClient, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "sleep": recorded.append})

    monkeypatch.setattr(HttpClient, "__init__", recording)
    return recorded


@pytest.mark.parametrize("system", sorted(CALLS))
@pytest.mark.parametrize("where", ["closed port", "unresolvable host"])
def test_unreachable_host_fails_fast_naming_the_host(
    system: str, where: str, waits: list[float]
) -> None:
    host = "127.0.0.1" if where == "closed port" else UNRESOLVABLE
    url = f"http://{host}:{_closed_port()}"
    name, call = CALLS[system]
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        call(url)
    elapsed = time.monotonic() - started + sum(waits)
    message = str(caught.value)
    assert elapsed < FAIL_FAST_S, f"{system} would take {elapsed:.1f} s to give up"
    if where == "unresolvable host":
        assert waits == []  # a name that does not resolve is not retried
    assert message.startswith(f"{name}:")
    assert host in message
    assert "secret-x" not in message
