"""Whole syncs against a HUB that refuses objects, forgets messages or never finishes one.

Each test runs the sync jobs (as ``hubsync sync`` does) against the sandbox and checks what the
operator sees: the run's outcome, ``sync_runs``, the error text, the WARN checks; then that the
HUB reaches the world's expected state without an insert sent twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date

import dagster as dg
import duckdb
import pytest

from cli.runs import SyncReport, render_summary
from sandbox.expected import expected_hub_state
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.faults.support import SyncHarness, converged, fast_http_clients
from tests.instances import ephemeral_instance

ACK_TIMEOUT_S = 0.3
MAX_AGE_S = 1.5


@pytest.fixture
def harness(tmp_path) -> Iterator[SyncHarness]:
    world = World(seed=31, students=30, today=date(2026, 11, 23))
    with (
        fast_http_clients(),
        running_sandbox(
            port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
        ) as sandbox,
        ephemeral_instance() as instance,
    ):
        yield SyncHarness(
            sandbox,
            tmp_path / "w.duckdb",
            instance,
            HUB_ACK_TIMEOUT=str(ACK_TIMEOUT_S),
            HUB_MESSAGE_MAX_AGE=str(MAX_AGE_S),
        )


def _summary(harness: SyncHarness, key: str) -> dict:
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        (text,) = conn.execute("SELECT summary FROM sync_runs WHERE key = ?", [key]).fetchone()
    return json.loads(text)


def _checks(harness: SyncHarness, key: str) -> dict[str, dg.AssetCheckEvaluation]:
    """The latest evaluation of each HUB check in the run of ``key``."""
    records = harness.instance.get_records_for_run(
        run_id=harness.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": key}))[
            0
        ].run_id,
        of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    ).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return {e.check_name: e for e in evaluations}


def test_a_refused_object_fails_the_sync_after_the_rest_was_delivered(harness) -> None:
    sandbox = harness.sandbox
    assert harness.sync("full").success
    harness.change_world(seed=5)
    expected = expected_hub_state(sandbox.world).state
    held = sandbox.hub.state_snapshot()
    code, bad = next(
        (c, o) for c, o in sorted(expected["user"].items()) if held["user"].get(c) != o
    )
    sandbox.hub.configure(refuse_objects=[f"user:{bad.get('sis_id') or code}"])

    faulted = harness.sync("full")

    assert not faulted.success
    status, error = harness.sync_status(faulted.key)
    assert status == "failed"
    assert error.startswith("HUB refused 1 object(s)")
    assert f"user {code} (1): HTTP 400: " in error  # type, code and the HUB's answer
    assert "Invalid Request" in error
    assert faulted.errors == [f"sync_summary: {error}"]
    hub = _summary(harness, faulted.key)["hub"]
    assert hub["objects_refused"] == 1 and hub["refused"][0]["keys"] == [code]
    # everything but the refused user (and what needs it) was delivered
    state = sandbox.hub.state_snapshot()
    assert {k: v for k, v in state["user"].items() if k != code} == {
        k: v for k, v in expected["user"].items() if k != code
    }
    assert state["section"] == expected["section"]

    sandbox.hub.configure(refuse_objects=[])
    recovery = harness.sync("incremental")
    assert recovery.success, recovery.errors
    assert converged(sandbox)
    assert sandbox.hub.duplicate_inserts(links=False) == 0


def test_item_errors_are_listed_by_type_and_warned_about(harness) -> None:
    sandbox = harness.sandbox
    sandbox.hub.configure(item_error_rate=0.1, item_error_seed=3)
    outcome = harness.sync("full")
    sandbox.hub.configure(item_error_rate=0.0)
    assert outcome.success  # item errors keep today's behaviour: sent again, not a failure
    failed = _summary(harness, outcome.key)["hub"]["items_failed"]
    # by object type, with the HUB's message (the injected error, and what it caused)
    assert any("Erro interno ao processar o item" in messages for messages in failed.values())
    assert set(failed) <= {"term", "subject", "user", "section", "sectionstudent",
                           "sectionteacher"}  # fmt: skip
    check = _checks(harness, outcome.key)["hub_items_refused"]
    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    # that the next sync sends them again: fault matrix, "HUB accepts, then items fail"


def test_a_stuck_message_warns_then_one_sync_gives_it_up_loudly(harness) -> None:
    sandbox = harness.sandbox
    sandbox.hub.configure(stall_messages=1)  # the first message stays at status 1 for ever
    first = harness.sync("full")
    assert first.success  # it waited HUB_ACK_TIMEOUT and left the message for later
    check = _checks(harness, first.key)["hub_messages_finish_in_time"]
    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    assert not converged(sandbox)

    time.sleep(MAX_AGE_S)
    gave_up = harness.sync("full")
    assert not gave_up.success
    status, error = harness.sync_status(gave_up.key)
    assert status == "failed" and "HUB_MESSAGE_MAX_AGE" in error
    assert _summary(harness, gave_up.key)["hub"]["messages_given_up"] == 1
    assert converged(sandbox)  # its objects were sent again in the same sync

    after = harness.sync("full")  # fails once: the next sync is green
    assert after.success, after.errors
    assert converged(sandbox)
    assert sandbox.hub.duplicate_inserts(links=False) == 0


def test_messages_the_hub_forgot_do_not_stop_delivery(harness) -> None:
    sandbox = harness.sandbox
    sandbox.hub.configure(stall_messages=1)  # delivery waits for it, then stops
    assert harness.sync("full").success
    assert sandbox.hub.forget_messages() >= 1  # restored from a backup: getLog answers 404
    time.sleep(ACK_TIMEOUT_S)
    outcome = harness.sync("full")
    assert outcome.success, outcome.errors  # an unknown outcome, not a failure
    assert converged(sandbox)
    assert sandbox.hub.duplicate_inserts(links=False) == 0


def test_the_cli_summary_lists_what_the_hub_refused() -> None:
    report = SyncReport("full-20261123T100000Z", "full", "r-1", success=False, error="HUB …")
    report.hub_notes = ["refused by the HUB, not delivered, sent again next sync: user 1"]
    text = render_summary(report)
    assert "FAILED" in text and "  HUB:\n    refused by the HUB" in text
