"""The fault matrix: each fault of each server during a real sync, then recovery.

For every case a sync runs while the sandbox injects the fault. It either succeeds, or fails
cleanly: the failing step names the system and the reason (an ``ApiError``, never a stray Python
error), its ``sync_runs`` row says ``failed``, and a source whose step failed landed no page and
no cursor for that key. Then the faults stop and, if the faulted sync did not already bring the
HUB to the world's expected state, the next sync does: nothing missing, nothing extra, no insert
sent twice (the sandbox HUB refuses a second insert of an existing object and counts it).

The cases share one sandbox, warehouse and Dagster instance (runs dominate the time), each
starting from a converged HUB after a batch of world changes. Syncs are full: the recovery
check compares with the whole expected state (see ``test_cursor_stays_put...`` for the
incremental cursors). Set ``HUBSYNC_FAULT_REPORT=path`` to get the matrix as a Markdown table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pytest

from sandbox.expected import expected_hub_state
from sandbox.http import FaultConfig, Request, Response
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.faults import hostile
from tests.faults.support import (
    SyncHarness,
    SyncOutcome,
    converged,
    fast_http_clients,
    hub_differences,
)
from tests.instances import ephemeral_instance

SOURCES = ("co", "studip", "lms")
SERVERS = (*SOURCES, "hub")
SOURCE_STEPS = {"co": "co_raw_pages", "studip": "studip_raw_pages", "lms": "lms_registration_pages"}
SOURCE_TABLES = {
    "co": ("raw_co_students", "raw_co_studies", "raw_co_applications", "co_sync_cursor"),
    "studip": ("raw_studip_pages",),
    "lms": (
        "raw_lms_active_registrations",
        "raw_lms_completed_registrations",
        "lms_watermarks",
    ),
}
SYSTEM_NAMES = {"co": "CAMPUSonline", "studip": "Stud.IP", "lms": "LMS", "hub": "HUB"}
# What a clean failure may raise: the clients' errors and Dagster failures, nothing accidental.
CLEAN_ERRORS = (
    "ApiError",
    "RedirectRefused",
    "Failure",
    "StudipError",
    "StudipAuthError",
    "StudipNotFound",
)


def _script(kind: str, *, skip: int = 1, times: int = 2) -> list[str]:
    """``skip`` good requests, then ``times`` faults: the fault lands inside the sync."""
    return ["ok"] * skip + [kind] * times


# Per server, the FaultConfig of each transport fault. Sources get the fault on a data request;
# the HUB on a POST (the dangerous one: the batch may have arrived) or on getLog.
TRANSPORT = {
    "5xx burst": {"script": _script("error", times=3)},
    "429 Retry-After": {"script": _script("rate_limit"), "retry_after": 1},
    "latency > timeout": {"script": _script("slow", times=1), "slow_ms": 2500},
    "dropped connection": {"script": _script("drop")},
    "truncated JSON": {"script": _script("truncate", times=1)},
}
HUB_POST = {"path_filter": "/sync/v1"}
ELSEWHERE = "http://127.0.0.1:9"  # where the redirects point; never contacted
HUB_LOG = {"path_filter": "/getLog/"}
TRUNCATE = TRANSPORT["truncated JSON"]


@dataclass
class Case:
    name: str
    fault: str
    faults: dict[str, dict] = field(default_factory=dict)  # server -> FaultConfig fields
    hooks: dict[str, Callable[[Sandbox], Callable[[Request, int], None]]] = field(
        default_factory=dict
    )
    item_error_rate: float = 0.0
    # HUB behaviour set through sandbox.hub.configure for the faulted sync (see sandbox/hub.py)
    hub_options: Callable[[Sandbox], dict] | None = None
    # server -> a fresh response filter making its answers hostile (tests/faults/hostile.py)
    filters: dict[str, Callable[[], hostile.ResponseFilter]] = field(default_factory=dict)


def _expire_co_tokens(sandbox: Sandbox) -> Callable[[Request, int], None]:
    def hook(request: Request, number: int) -> None:
        if number in (3, 6):  # mid-sync, twice
            sandbox.co._tokens.clear()  # like the admin route /_sandbox/co/tokens/revoke

    return hook


def _expire_lms_tokens(sandbox: Sandbox) -> Callable[[Request, int], None]:
    def hook(request: Request, number: int) -> None:
        if number == 2:
            sandbox.lms.tokens.expire()  # access token: the client refreshes
        if number == 4:
            sandbox.lms.tokens.expire(refresh=True)  # both: the client logs in again

    return hook


def _refuse_a_changed_user(sandbox: Sandbox) -> dict:
    """The HUB refuses (400) every envelope carrying one user this sync has to send."""
    expected = expected_hub_state(sandbox.world).state["user"]
    held = sandbox.hub.state_snapshot()["user"]
    changed = next(obj for code, obj in sorted(expected.items()) if held.get(code) != obj)
    return {"refuse_objects": [f"user:{changed.get('sis_id') or changed['code']}"]}


CASES = [
    *(
        Case(
            f"{fault} (all servers)",
            fault,
            {**{s: config for s in SOURCES}, "hub": {**config, **HUB_POST}},
        )
        for fault, config in TRANSPORT.items()
        if fault != "truncated JSON"
    ),
    # CO and LMS in one run; Stud.IP in its own, as its crawl needs their state first.
    Case("truncated JSON (CO, LMS)", "truncated JSON", {s: TRUNCATE for s in ("co", "lms")}),
    Case("truncated JSON (Stud.IP)", "truncated JSON", {"studip": TRUNCATE}),
    Case("truncated JSON (HUB POST)", "truncated JSON", {"hub": {**TRUNCATE, **HUB_POST}}),
    Case("truncated JSON (HUB getLog)", "truncated JSON", {"hub": {**TRUNCATE, **HUB_LOG}}),
    Case("5xx burst (HUB getLog)", "5xx burst", {"hub": {**TRANSPORT["5xx burst"], **HUB_LOG}}),
    Case(
        "expired tokens (CO, LMS)",
        "expired token",
        hooks={"co": _expire_co_tokens, "lms": _expire_lms_tokens},
    ),
    Case("HUB accepts, then items fail", "item errors", item_error_rate=0.2),
    Case("HUB refuses one object (400)", "400 refusal", hub_options=_refuse_a_changed_user),
    Case("HUB answers messageId null", "null messageId",
         hub_options=lambda sandbox: {"null_message_ids": 1}),
    # Hostile or broken upstreams (issue 18): each must fail the sync cleanly, naming the system.
    Case("redirect to another host (CO, LMS)", "redirect", filters={
        "co": lambda: hostile.redirect("/pl/rest/", to=ELSEWHERE),
        "lms": lambda: hostile.redirect("/oauth2/token", to=ELSEWHERE),
    }),
    Case("redirect to another host (HUB POST)", "redirect", filters={
        "hub": lambda: hostile.redirect("/sync/v1", to=ELSEWHERE),
    }),
    Case("endless paging (CO, LMS)", "endless paging", filters={
        "co": lambda: hostile.repeat_first_page("dmsstudents"),
        "lms": lambda: hostile.both(
            hostile.repeat_first_page("getactive"), hostile.growing_lms_total("getactive")
        ),
    }),
    # Stud.IP in its own run: a failed CO step skips it. The sandbox answers the JSON:API as
    # root, so the sync lists (STUDIP_API_MODE=auto); the crawl's case is in test_hostile_upstreams.
    Case("endless paging (Stud.IP JSON:API)", "endless paging", filters={
        "studip": lambda: hostile.growing_jsonapi_total("/jsonapi.php/v1/users"),
    }),
    Case("gzip bomb (CO), JSON nested too deeply (LMS)", "hostile body", filters={
        "co": lambda: hostile.body(
            "dmsstudies", hostile.gzip_of_zeros(64), {"Content-Encoding": "gzip"}
        ),
        "lms": lambda: hostile.body("getcompleted", hostile.DEEP_JSON),
    }),
]  # fmt: skip


@dataclass
class Row:
    case: str
    server: str
    outcome: str
    lost: int
    extra: int
    duplicates: int


REPORT: list[Row] = []
HUB_OPTIONS = {"hub": {"processing_delay_ms": 0}}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncHarness]:
    world = World(seed=31, students=30, today=date(2026, 11, 23))
    folder = tmp_path_factory.mktemp("faults")
    with (
        fast_http_clients(),
        running_sandbox(port_base=0, world=world, options=HUB_OPTIONS) as sandbox,
        ephemeral_instance() as instance,
    ):
        # Small CO pages and response limit, so that endless paging and bombs show in 30 students.
        # In so small a world one step's dropped enrolments can pass the 10 % mass-delete guard
        # (tests/faults/test_hub_safety.py tests it): here it would block the recovery syncs.
        yield SyncHarness(
            sandbox,
            folder / "w.duckdb",
            instance,
            CO_PAGE_SIZE="10",
            HUBSYNC_MAX_RESPONSE_MB="16",
            HUB_MAX_DELETE_SHARE="0.5",
        )
    _write_report()


def _write_report() -> None:
    target = os.environ.get("HUBSYNC_FAULT_REPORT")
    if not target or not REPORT:
        return
    lines = [
        "| fault | server | outcome of the faulted sync | records lost | extra | duplicates |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.case} | {r.server} | {r.outcome} | {r.lost} | {r.extra} | {r.duplicates} |"
            for r in REPORT
        ),
    ]
    Path(target).write_text("\n".join(lines) + "\n")


def _landed(harness: SyncHarness, key: str, source: str) -> dict[str, int]:
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        sql = "SELECT count(*) FROM {} WHERE sync_key = ?"
        return {
            table: conn.execute(sql.format(table), [key]).fetchall()[0][0]
            for table in SOURCE_TABLES[source]
        }


def _assert_clean_failure(harness: SyncHarness, outcome: SyncOutcome) -> list[str]:
    """The failed sync says what failed; a failed source landed nothing. Returns failed steps."""
    assert outcome.errors, f"{outcome.key} failed without a step failure"
    for error in outcome.errors:
        step, _, message = error.partition(": ")
        system_first = message.startswith(tuple(f"{n} " for n in SYSTEM_NAMES.values()))
        assert message.split(":", 1)[0] in CLEAN_ERRORS or "Failure" in error or system_first, error
        assert any(name in message for name in SYSTEM_NAMES.values()), error
    status, stored_error = harness.sync_status(outcome.key)
    assert status == "failed" and stored_error
    failed_steps = [error.partition(": ")[0] for error in outcome.errors]
    for source, step in SOURCE_STEPS.items():
        if step in failed_steps:
            landed = _landed(harness, outcome.key, source)
            assert not any(landed.values()), f"{source} failed but landed {landed}"
    return failed_steps


def _configure(sandbox: Sandbox, case: Case) -> None:
    for server, config in case.faults.items():
        sandbox.servers[server].faults.configure(FaultConfig(**config))
    for server, make_hook in case.hooks.items():
        sandbox.servers[server].add_request_hook(make_hook(sandbox))
    FILTERED.clear()
    for server, make_filter in case.filters.items():
        sandbox.servers[server].add_response_filter(_noting(server, make_filter()))
    sandbox.hub.configure(item_error_rate=case.item_error_rate, item_error_seed=7)
    if case.hub_options:
        sandbox.hub.configure(**case.hub_options(sandbox))


def _clear(sandbox: Sandbox) -> None:
    for server in sandbox.servers.values():
        server.faults.configure(FaultConfig())
        server.clear_request_hooks()
    sandbox.hub.configure(
        item_error_rate=0.0, refuse_objects=[], null_message_ids=0, stall_messages=0
    )


FILTERED: set[str] = set()  # servers whose filter changed an answer in the current case


def _noting(server: str, rewrite: hostile.ResponseFilter) -> hostile.ResponseFilter:
    def noted(request: Request, response: Response) -> Response:
        changed = rewrite(request, response)
        if changed is not response:
            FILTERED.add(server)
        return changed

    return noted


def _faulted_servers(sandbox: Sandbox, case: Case, before: dict[str, int]) -> list[str]:
    hit = [s for s in SERVERS if sum(sandbox.servers[s].injected.values()) > before[s]]
    hit += [s for s in SERVERS if s in FILTERED and s not in hit]
    return hit + [s for s in case.hooks if s not in hit]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_sync_under_fault_fails_cleanly_or_succeeds_and_the_next_sync_converges(
    harness: SyncHarness, case: Case
) -> None:
    sandbox = harness.sandbox
    if not converged(sandbox):  # an earlier case failed; do not blame this one for it
        harness.sync("full")
    harness.change_world(seed=len(REPORT) + 100)
    duplicates_before = sandbox.hub.duplicate_inserts()
    injected_before = {s: sum(sandbox.servers[s].injected.values()) for s in SERVERS}

    _configure(sandbox, case)
    try:
        faulted = harness.sync("full")
    finally:
        _clear(sandbox)
    hit = _faulted_servers(sandbox, case, injected_before)
    if case.item_error_rate or case.hub_options:
        hit = ["hub"]
    assert hit, "the fault was never injected: the case tests nothing"

    if faulted.success:
        outcome = "succeeded"
    else:
        failed_steps = _assert_clean_failure(harness, faulted)
        outcome = "failed cleanly in " + ", ".join(failed_steps)
    if not (faulted.success and converged(sandbox)):
        recovery = harness.sync("full")
        assert recovery.success, recovery.errors
        if faulted.success:
            outcome += "; HUB caught up on the next sync"

    lost, extra = hub_differences(sandbox)
    duplicates = sandbox.hub.duplicate_inserts() - duplicates_before
    for server in hit:
        REPORT.append(Row(case.name, server, outcome, lost, extra, duplicates))
    assert (lost, extra, duplicates) == (0, 0, 0), case.name
    assert converged(sandbox)
