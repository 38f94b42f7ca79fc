"""Control and bidi-override characters in names never reach the HUB; the raw pages keep them.

The sandbox's answers get NUL, BEL, C1, U+2028 and U+202E/U+2066 planted in CO student names,
Stud.IP course titles and LMS course names, so a name could display as another. A full sync
must bring the HUB to exactly the world's expected state (the names without those characters),
count the cleaned objects, and keep the pages as received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import dagster as dg
import duckdb
import pytest

from resources.warehouse import raw_page_bodies
from sandbox.http import Request, Response
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.faults.support import SyncHarness, converged, describe_differences
from tests.instances import ephemeral_instance

# field -> how it is spoiled; every planted character is one hubsync must remove
SPOILED = {
    "GIVENNAME": lambda text: text[:1] + "\x00" + text[1:] + "\u202e",
    "FAMILYNAME": lambda text: "\u2028" + text + "\x07",
    "title": lambda text: "\u202e" + text + "\u2066",  # Stud.IP course
    "CourseName": lambda text: text + "\x85\u202e",  # LMS
}


def _is_course(node: dict[str, Any]) -> bool:
    """A Stud.IP course: classic (``course_id`` beside its title) or the JSON:API's attributes."""
    return "course_id" in node or "course-type" in node


def _spoil(node: Any) -> bool:
    changed = False
    if isinstance(node, dict):
        for name, value in node.items():
            if name in SPOILED and isinstance(value, str) and value:
                if name != "title" or _is_course(node):
                    node[name] = SPOILED[name](value)
                    changed = True
            else:
                changed = _spoil(value) or changed
    elif isinstance(node, list):
        for value in node:
            changed = _spoil(value) or changed
    return changed


def spoil_names(request: Request, response: Response) -> Response:
    if response.status != 200 or "json" not in response.content_type:
        return response
    try:
        payload = json.loads(response.body)
    except ValueError:
        return response
    return Response.json(payload, headers=response.headers) if _spoil(payload) else response


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncHarness]:
    world = World(seed=53, students=30, today=date(2026, 11, 23))
    folder = tmp_path_factory.mktemp("hub_text")
    with (
        running_sandbox(
            port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
        ) as sb,
        ephemeral_instance() as instance,
    ):
        for system in ("co", "studip", "lms"):
            sb.servers[system].add_response_filter(spoil_names)
        yield SyncHarness(sb, folder / "w.duckdb", instance)


def _query(harness: SyncHarness, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_control_and_bidi_characters_are_removed_from_what_the_hub_gets(
    harness: SyncHarness,
) -> None:
    outcome = harness.sync("full")
    assert outcome.success, outcome.errors
    assert converged(harness.sandbox), describe_differences(harness.sandbox)

    # the pages are kept as received (compressed or not)
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        for tables, planted in (
            (("raw_co_students",), "\u202e"),
            (("raw_studip_pages", "raw_studip_listing_pages"), "\u2066"),
            (("raw_lms_active_registrations",), "\u202e"),
        ):
            bodies = [b for t in tables for _, _, b in raw_page_bodies(conn, t, outcome.key)]
            assert any(planted in body for body in bodies), f"{tables} lost what the source sent"

    event = harness.instance.get_latest_materialization_event(dg.AssetKey("hub_desired"))
    assert event is not None and event.asset_materialization is not None
    cleaned = event.asset_materialization.metadata["text_cleaned_objects"].value
    users = len(harness.sandbox.hub.state_snapshot()["user"])
    assert isinstance(cleaned, int) and cleaned > users  # the users, sections and subjects

    # the cleaned objects are what the HUB acknowledged: the next sync sends nothing
    again = harness.sync("full")
    assert again.success, again.errors
    assert _query(harness, "SELECT count(*) FROM hub_events WHERE sync_key = ?", again.key) == [
        (0,)
    ]
