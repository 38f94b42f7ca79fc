"""Whole syncs in Stud.IP's listing mode (the default against a root account): an incremental
sync re-lists Stud.IP and brings Stud.IP-only changes to the HUB exactly."""

from __future__ import annotations

import pytest

from sandbox.expected import expected_hub_state
from tests.test_end_to_end import run_sync, sandbox  # noqa: F401  (the fixtures)


def _raw_metadata(result, node: str = "studip_raw_pages") -> dict:  # type: ignore[no-untyped-def]
    events = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in events[0].metadata.items()}


@pytest.mark.parametrize("sandbox", [(11, 80)], indirect=True)
def test_an_incremental_listing_brings_stud_ip_only_changes_to_the_hub(sandbox, run_sync) -> None:  # noqa: F811
    world = sandbox.world
    full = run_sync("full-20261123T020000Z")
    assert _raw_metadata(full)["crawl"] == "listing-full"
    before = expected_hub_state(world)
    assert sandbox.hub.state_snapshot() == before.state

    # Stud.IP-only changes: nothing changes in CAMPUSonline or the LMS
    with world.lock:
        course_id = sorted(before.sections)[0]
        members = world.memberships[course_id]
        students = [
            u for u in sorted(before.reached_users)
            if world.studip_users[u].pid is not None and world.studip_users[u].perms == "autor"
        ]  # fmt: skip
        leaving = next(u for u in students if members.get(u) == "autor")
        joining = next(u for u in students if u not in members)
        world.drop(course_id, leaving)
        world.enrol(course_id, joining, "autor")
        renamed = next(u for u in students if u not in (leaving, joining))
        world.studip_users[renamed].username += "x"
    after = expected_hub_state(world)
    assert after.state != before.state, "the changes matter to the HUB"

    world.clock.advance(900)
    incremental = run_sync("incr-20261123T030000Z")
    numbers = _raw_metadata(incremental)
    assert numbers["crawl"] == "listing-incremental"
    assert sandbox.hub.state_snapshot() == after.state
    assert sandbox.hub.duplicate_inserts(links=False) == 0
    # the listing read in full only the renamed user (the memberships come with the listing)
    assert numbers["users"] == 1 or numbers["requests"] < _raw_metadata(full)["requests"] / 2
