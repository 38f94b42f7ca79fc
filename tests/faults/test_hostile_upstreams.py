"""Hostile or broken upstreams, client by client, against the sandbox over real HTTP.

A response filter turns the sandbox's answers hostile: a redirect to another host (a scripted
sink on loopback that records whatever reaches it), paging that never ends, a gzip bomb, JSON
nested too deeply to parse. Every client must fail with an ``ApiError`` naming the system and
the URL, send nothing on, and stop early. Whole syncs under these faults run in the fault
matrix (``test_fault_matrix.py``); text the HUB must not get is in ``test_hub_text.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest

from resources.campusonline import STUDENTS, campusonline_resource
from resources.http import ApiError, RedirectRefused
from resources.hub import hub_resource
from resources.lms import lms_resource
from resources.settings import Settings, load_settings
from resources.studip import studip_resource
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.faults import hostile
from tests.scripted_server import ScriptedServer, scripted_server

SYSTEMS = {"co": "CAMPUSonline", "studip": "Stud.IP", "lms": "LMS", "hub": "HUB"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=41, students=30, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
    ) as sb:
        yield sb


@pytest.fixture(autouse=True)
def clean_filters(sandbox: Sandbox) -> Iterator[None]:
    yield
    for server in sandbox.servers.values():
        server.clear_request_hooks()


@pytest.fixture
def sink() -> Iterator[ScriptedServer]:
    with scripted_server({}) as server:
        yield server


def settings(sandbox: Sandbox, **env: str) -> Settings:
    return load_settings({**sandbox.env, **env})


def co_students(s: Settings) -> Any:
    with campusonline_resource(s.co, in_process=True).client() as client:
        return list(client.pages(STUDENTS))


def studip_semesters(s: Settings) -> Any:
    return list(studip_resource(s.studip).client().semesters())


def lms_active(s: Settings) -> Any:
    with lms_resource(s.lms).client() as client:
        return list(client.registration_pages("active", None))


def hub_post(s: Settings) -> Any:
    envelope = {"doo": "2026-11-23T10:00:00Z", "ver": "1.0.0", "who": "t", "org_id": "o", "dat": []}
    return hub_resource(s.hub).client().post_batch(json.dumps(envelope))


def hub_log(s: Settings) -> Any:
    return hub_resource(s.hub).client().get_log("0f1e2d3c")


# (server, the path of the request to answer with a redirect, a call that makes that request)
REDIRECTED: dict[str, tuple[str, str, Callable[[Settings], Any]]] = {
    "CO token request": ("co", "/wbOAuth2.token", co_students),
    "CO data": ("co", "/pl/rest/", co_students),
    "Stud.IP": ("studip", "/semesters", studip_semesters),
    "LMS OAuth2 token request": ("lms", "/oauth2/token", lms_active),
    "LMS data": ("lms", "GetActiveRegistrationData", lms_active),
    "HUB POST": ("hub", "/sync/v1", hub_post),
    "HUB getLog": ("hub", "/getLog/", hub_log),
}


@pytest.mark.parametrize("case", list(REDIRECTED))
def test_no_client_follows_a_redirect(sandbox: Sandbox, sink: ScriptedServer, case: str) -> None:
    """A 307 sent the x-api-key, the envelope with personal data, the CO client_secret and the
    LMS password on to the host it named, and the HUB accepted that host's messageId."""
    server, path, call = REDIRECTED[case]

    sandbox.servers[server].add_response_filter(hostile.redirect(path, to=sink.url))
    with pytest.raises(ApiError) as caught:
        call(settings(sandbox))
    assert sink.requests == [], "nothing may reach the host a redirect names"
    message = str(caught.value)
    origin = sandbox.servers[server].origin
    assert message.startswith(f"{SYSTEMS[server]}: "), message
    assert f"{origin}/" in message and path.lower() in message.lower(), message
    assert "-> 307: " in message and f"redirected to {sink.host};" in message, message
    if server != "studip":  # Stud.IP wraps every error in its own, naming the route
        assert isinstance(caught.value, RedirectRefused)


def test_co_serving_the_same_full_page_again_fails_at_the_second_page(sandbox: Sandbox) -> None:
    """CO returned its first full page for every PageNr: 15,315 pages in 90 s, memory rising."""
    sandbox.co.add_response_filter(hostile.repeat_first_page("dmsstudents"))
    before = sandbox.co.request_count("/pl/rest/")
    with pytest.raises(ApiError, match="paging does not end: page 2 repeats page 1"):
        co_students(settings(sandbox, CO_PAGE_SIZE="5"))
    assert sandbox.co.request_count("/pl/rest/") - before == 2


def test_co_pages_beyond_co_max_pages_fail_naming_the_setting(sandbox: Sandbox) -> None:
    pages = len(co_students(settings(sandbox, CO_PAGE_SIZE="5")))
    assert pages >= 3
    cap = str(pages - 1)
    before = sandbox.co.request_count("/pl/rest/")
    with pytest.raises(ApiError) as caught:
        co_students(settings(sandbox, CO_PAGE_SIZE="5", CO_MAX_PAGES=cap))
    message = str(caught.value)
    assert message.startswith(f"CAMPUSonline: GET {sandbox.co.origin}/pl/rest/"), message
    assert f"paging does not end: more than {cap} pages (CO_MAX_PAGES)" in message
    assert sandbox.co.request_count("/pl/rest/") - before == pages - 1
    assert len(co_students(settings(sandbox, CO_PAGE_SIZE="5", CO_MAX_PAGES=str(pages)))) == pages


def test_studip_total_growing_with_the_same_items_fails_at_the_repeat(sandbox: Sandbox) -> None:
    sandbox.studip.add_response_filter(hostile.repeat_first_page("/semesters"))
    sandbox.studip.add_response_filter(hostile.growing_studip_total("/semesters"))
    before = sandbox.studip.request_count("/semesters")
    with pytest.raises(ApiError, match="paging does not end: page 1 repeats page 0"):
        studip_semesters(settings(sandbox))
    assert sandbox.studip.request_count("/semesters") - before == 2


def test_studip_pages_beyond_studip_max_pages_fail_naming_the_setting(sandbox: Sandbox) -> None:
    # every page brings new semesters (the sandbox serves the next offset) and a larger total
    sandbox.studip.add_response_filter(hostile.growing_studip_total("/semesters"))
    client = studip_resource(settings(sandbox, STUDIP_MAX_PAGES="4").studip).client()
    client.page_size = 1
    with pytest.raises(ApiError) as caught:
        list(client.semesters())
    assert str(caught.value) == (
        f"Stud.IP: GET {sandbox.studip.base_url}/semesters: "
        "paging does not end: more than 4 pages (STUDIP_MAX_PAGES)"
    )


def test_lms_total_items_growing_with_the_same_items_fails_at_the_repeat(
    sandbox: Sandbox,
) -> None:
    sandbox.lms.add_response_filter(hostile.repeat_first_page("getactiveregistrationdata"))
    sandbox.lms.add_response_filter(hostile.growing_lms_total("getactiveregistrationdata"))
    with pytest.raises(ApiError) as caught:
        lms_active(settings(sandbox, LMS_PAGE_SIZE="5"))
    assert "paging does not end: page 1 (StartIndex 4) repeats the page before" in str(caught.value)


def test_lms_pages_beyond_lms_max_pages_fail_naming_the_setting(sandbox: Sandbox) -> None:
    sandbox.lms.add_response_filter(
        hostile.growing_lms_total("getactiveregistrationdata")
    )  # real items, then ever more pages
    with pytest.raises(ApiError) as caught:
        lms_active(settings(sandbox, LMS_PAGE_SIZE="5", LMS_MAX_PAGES="6"))
    assert str(caught.value).startswith(
        f"LMS: POST {sandbox.lms.origin}/Services/api/ExternalRegistration/"
        "GetActiveRegistrationData: paging does not end: more than 6 pages (LMS_MAX_PAGES)"
    )


# (server, path of the page to spoil, the call that reads it)
PAGES = {
    "co": ("dmsstudents", co_students),
    "studip": ("/semesters", studip_semesters),
    "lms": ("getactiveregistrationdata", lms_active),
    "hub": ("/getlog/", hub_log),
}


@pytest.mark.parametrize("server", list(PAGES))
def test_json_nested_too_deeply_fails_as_a_bad_page_naming_system_and_url(
    sandbox: Sandbox, server: str
) -> None:
    """It failed with a bare RecursionError, naming neither."""
    path, call = PAGES[server]
    sandbox.servers[server].add_response_filter(hostile.body(path, hostile.DEEP_JSON))
    with pytest.raises(ApiError) as caught:
        call(settings(sandbox))
    message = str(caught.value)
    assert message.startswith(f"{SYSTEMS[server]}: "), message
    assert sandbox.servers[server].origin in message and path in message.lower(), message
    assert "nests arrays or objects too deeply" in message


@pytest.mark.parametrize("server", ["co", "studip", "lms"])
def test_a_gzip_bomb_fails_at_hubsync_max_response_mb(sandbox: Sandbox, server: str) -> None:
    path, call = PAGES[server]
    bomb = hostile.gzip_of_zeros(64)  # 64 KB on the wire
    sandbox.servers[server].add_response_filter(
        hostile.body(path, bomb, {"Content-Encoding": "gzip"})
    )
    with pytest.raises(ApiError) as caught:
        call(settings(sandbox, HUBSYNC_MAX_RESPONSE_MB="8"))
    message = str(caught.value)
    assert message.startswith(f"{SYSTEMS[server]}: "), message
    assert "larger than 8 MB decoded (HUBSYNC_MAX_RESPONSE_MB)" in message
