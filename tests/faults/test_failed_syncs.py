"""What a failed sync leaves for the next one (issue 18): every change since the last
*successful* sync still arrives, and a full sync the mass-delete guard blocked is not what the
following syncs are built on. Real syncs against the sandbox, judged by the world's expected
state.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from sandbox.http import FaultConfig
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.faults.support import (
    SyncHarness,
    converged,
    describe_differences,
    fast_http_clients,
    without_records,
)
from tests.instances import ephemeral_instance


@pytest.fixture
def harness(tmp_path) -> Iterator[SyncHarness]:
    world = World(seed=11, students=40, today=date(2026, 11, 23))
    with (
        fast_http_clients(),
        running_sandbox(
            port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
        ) as sandbox,
        ephemeral_instance() as instance,
    ):
        # the crawl: its incremental reads Stud.IP from the changed persons (a listing re-lists)
        yield SyncHarness(sandbox, tmp_path / "w.duckdb", instance, STUDIP_API_MODE="rest")


def test_after_a_failed_incremental_sync_the_next_one_reads_every_studip_change(
    harness: SyncHarness,
) -> None:
    """The failed sync re-read CO (marking the changed students with its key) and then failed
    in Stud.IP. The next sync finds the same CO rows unchanged, so they keep the failed key:
    seeded from its own key only, its Stud.IP crawl had nothing to re-read (3 requests, no
    user's courses) and enrolments and drop-outs went missing until the next full sync."""
    sandbox = harness.sandbox
    assert harness.sync("full").success
    harness.change_world(seed=3)
    sandbox.studip.faults.configure(FaultConfig(error_rate=1.0, path_filter="/course/"))
    try:
        failed = harness.sync("incremental")
    finally:
        sandbox.studip.faults.configure(FaultConfig())
    assert not failed.success
    assert any(error.startswith("studip_raw_pages") for error in failed.errors), failed.errors
    assert not converged(sandbox)  # the changes are still to be delivered

    courses_read = "/user/:user_id/courses"
    before = sandbox.studip.request_count(courses_read)
    outcome = harness.sync("incremental")
    assert outcome.success, outcome.errors
    assert sandbox.studip.request_count(courses_read) - before > 5, "the changed users re-read"
    assert converged(sandbox), describe_differences(sandbox)


@pytest.mark.parametrize(
    "source,path", [("co", "dmsstudents"), ("lms", "registration")], ids=["co", "lms"]
)
def test_a_full_sync_blocked_by_the_delete_guard_does_not_block_the_next_syncs(
    harness: SyncHarness, source: str, path: str
) -> None:
    """A bad day: one source answers a full sync with (almost) nothing. The guard blocks the
    deletes; the source recovers. The next incremental sync was built on the blocked snapshot
    and blocked too, every one of them until the next full sync."""
    sandbox = harness.sandbox
    assert harness.sync("full").success
    sandbox.servers[source].add_response_filter(without_records(path))
    try:
        blocked = harness.sync("full")
    finally:
        sandbox.servers[source].clear_request_hooks()
    assert not blocked.success
    assert any("hub_deletes_within_limit" in e for e in blocked.errors), blocked.errors

    harness.change_world(seed=4)
    outcome = harness.sync("incremental")
    assert outcome.success, outcome.errors  # before the fix: blocked by the guard again
    if source == "co":
        assert converged(sandbox), describe_differences(sandbox)
    # (LMS: learners the blocked snapshot dropped come back as changed in the incremental sync,
    # which then re-reads their Stud.IP users; one that left its courses stays a Stud.IP user
    # until a full sync, as incremental syncs never delete, so the HUB converges on the next)
    assert harness.sync("full").success
    assert converged(sandbox), describe_differences(sandbox)
