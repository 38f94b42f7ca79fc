"""Running real syncs against a sandbox with faults, and judging the outcome.

A :class:`SyncHarness` runs the sync jobs in this process against one sandbox, one warehouse and
one Dagster instance, the way ``tests/test_end_to_end.py`` does, and can tell whether the sandbox
HUB holds exactly the world's expected state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from cli.runs import error_text
from pipelines.definitions import build_definitions
from resources.http import HttpClient, RetryPolicy
from resources.settings import load_settings
from sandbox.expected import expected_hub_state
from sandbox.http import Request, Response
from sandbox.server import Sandbox

# Short waits keep fault tests fast: a read times out after READ_TIMEOUT_S, and retries back off
# for milliseconds (a server's Retry-After is still obeyed).
READ_TIMEOUT_S = 1.5
FAST_BACKOFF = {"backoff_s": 0.01, "max_backoff_s": 0.05}


@contextmanager
def fast_http_clients() -> Iterator[None]:
    """Every HttpClient created inside gets a short read timeout and fast retry backoff."""
    original = HttpClient.__init__

    def patched(self: HttpClient, system: str, base_url: str, **kwargs: Any) -> None:
        policy = kwargs.pop("retry_policy", None) or RetryPolicy()
        kwargs["retry_policy"] = dataclasses.replace(policy, **FAST_BACKOFF)
        kwargs["timeout"] = (2.0, READ_TIMEOUT_S)
        original(self, system, base_url, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HttpClient, "__init__", patched)
        yield


@dataclass
class SyncOutcome:
    key: str
    success: bool
    errors: list[str] = field(default_factory=list)  # "step: Exception: message" per failed step


def hub_differences(sandbox: Sandbox) -> tuple[int, int]:
    """(objects missing from or wrong in the HUB, objects the HUB holds but should not)."""
    expected = expected_hub_state(sandbox.world).state
    actual = sandbox.hub.state_snapshot()
    wrong = extra = 0
    for kind in set(expected) | set(actual):
        want, have = expected.get(kind, {}), actual.get(kind, {})
        wrong += sum(1 for key, obj in want.items() if have.get(key) != obj)
        extra += sum(1 for key in have if key not in want)
    return wrong, extra


def converged(sandbox: Sandbox) -> bool:
    assert sandbox.hub.wait_idle(30)
    return sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state


class SyncHarness:
    """Sync keys are made from a world-clock-like counter so that every run gets a new key."""

    def __init__(
        self, sandbox: Sandbox, warehouse: Path, instance: dg.DagsterInstance, **env: str
    ) -> None:
        self.sandbox = sandbox
        self.warehouse = warehouse
        self.instance = instance
        settings = load_settings(
            {
                **sandbox.env,
                "HUBSYNC_WAREHOUSE": str(warehouse),
                "HUB_POLL_INTERVAL": "0.02",
                "HUB_ACK_TIMEOUT": "10",
                **env,
            }
        )
        self.defs = build_definitions(settings)
        self._next_start = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

    def new_key(self, mode: str) -> str:
        self._next_start += timedelta(minutes=15)
        prefix = "full" if mode == "full" else "incr"
        return f"{prefix}-{self._next_start:%Y%m%dT%H%M%SZ}"

    def sync(self, mode: str = "incremental") -> SyncOutcome:
        key = self.new_key(mode)
        self.instance.add_dynamic_partitions("sync_runs", [key])
        job = self.defs.resolve_job_def("sync_job")
        result = job.execute_in_process(
            instance=self.instance, partition_key=key, raise_on_error=False
        )
        errors = [
            f"{event.step_key}: {error_text(event.step_failure_data.error)}"
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_FAILURE
            and event.step_failure_data.error is not None
        ]
        return SyncOutcome(key, result.success, errors)

    def sync_status(self, key: str) -> tuple[str, str | None]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            rows = conn.execute(
                "SELECT status, error FROM sync_runs WHERE key = ?", [key]
            ).fetchall()
        assert rows, f"no sync_runs row for {key}"
        return rows[0]

    def change_world(self, seed: int, *, scale: float = 1.0) -> None:
        world = self.sandbox.world
        world.clock.advance(900)
        world.step(seed=seed, scale=scale)
        world.clock.advance(900)  # past CO's next view refresh


def describe_differences(sandbox: Sandbox, limit: int = 10) -> str:
    """The first objects in which the HUB and the world's expected state differ."""
    expected = expected_hub_state(sandbox.world).state
    actual = sandbox.hub.state_snapshot()
    lines = []
    for kind in sorted(set(expected) | set(actual)):
        want, have = expected.get(kind, {}), actual.get(kind, {})
        for key in sorted(set(want) | set(have)):
            if want.get(key) != have.get(key):
                lines.append(f"{kind} {key}: expected {want.get(key)}, HUB has {have.get(key)}")
    return "\n".join(lines[:limit])


def without_records(path: str) -> Callable[[Request, Response], Response]:
    """A response filter: answers whose path contains ``path`` come back with no records."""

    def rewrite(request: Request, response: Response) -> Response:
        if response.status != 200 or path not in request.path.lower():
            return response
        payload = json.loads(response.body)
        if isinstance(payload, dict) and isinstance(payload.get("resource"), list):
            payload["resource"] = []  # CAMPUSonline
        elif isinstance(payload, dict) and isinstance(payload.get("Items"), list):
            payload["Items"], payload["TotalItems"] = [], 0  # the LMS
        return Response.json(payload)

    return rewrite
