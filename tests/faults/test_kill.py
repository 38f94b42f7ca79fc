"""Kill test: ``hubsync sync`` killed with SIGKILL at seeded points, then restarted, converges.

The sync runs in a forked child process (``cli.main.main(["sync", "--full"])``: the real command,
its persistent Dagster instance in DAGSTER_HOME and its DuckDB warehouse), against a sandbox in
this process. Kill points, drawn from a seeded RNG:

* fetch: before the n-th request to CAMPUSonline, Stud.IP or the LMS;
* landing: inside the n-th warehouse transaction, its writes done and not yet committed;
* delivery: at the n-th POST to the HUB, either dropped unhandled (it never arrived) or handled
  (the HUB has the batch, the client never hears of it);
* acknowledgement: after the n-th getLog was answered, before the client applies it.

Each chain kills several syncs in a row (the world changing before each, so that every sync
has something to deliver), then restarts the sync undisturbed: the HUB must then hold exactly the
world's expected state, and no object may have been inserted twice. (A link whose batch's fate
the killed sync never learnt is sent again as an insert, by design: links have no update. The
HUB refuses it as "already exists" and the sync reconciles it; those are counted, not failed.)
A killed run leaves its Dagster run STARTED holding the duckdb pool slot, its sync_runs row
``running``, batches ``posting`` and an unclean DuckDB file behind; the restart copes with all
of them. Set ``HUBSYNC_KILL_REPORT=path`` for a summary.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sandbox.http import Request
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.faults.support import converged, describe_differences, hub_differences

PHASES = ("fetch", "landing", "delivery", "acknowledgement")
CHAINS = 2  # seeds (each chain is about 8 syncs: the suite's longest test)
KILLS_PER_CHAIN = 6
MIN_KILLS = 10
WORLD_SEED = 43
SYNC_TIMEOUT_S = 180
ASSET_MODULES = (
    "assets.campusonline",
    "assets.lms",
    "assets.studip",
    "assets.hub",
    "assets.hub.acknowledgement",
    "assets.hub.delivery",
    "assets.hub.payload",
    "assets.sync",
)


@dataclass(frozen=True)
class KillPoint:
    phase: str
    server: str  # the server whose request triggers it ("" for landing)
    n: int  # the n-th matching request (or transaction) of this sync
    drop: bool = False  # delivery: the POST never reaches the HUB

    def __str__(self) -> str:
        where = self.server or "warehouse"
        return f"{self.phase}@{where}#{self.n}{' (dropped)' if self.drop else ''}"


def kill_points(seed: int) -> list[KillPoint]:
    rng = random.Random(seed)
    points = []
    for i in range(KILLS_PER_CHAIN):
        phase = PHASES[(seed + i) % len(PHASES)]
        if phase == "fetch":
            points.append(KillPoint(phase, rng.choice(["co", "studip", "lms"]), rng.randint(2, 10)))
        elif phase == "landing":
            points.append(KillPoint(phase, "", rng.randint(1, 4)))
        elif phase == "delivery":
            points.append(KillPoint(phase, "hub", rng.randint(1, 3), drop=rng.random() < 0.5))
        else:
            points.append(KillPoint(phase, "hub", rng.randint(1, 3)))
    return points


# -- the child ---------------------------------------------------------------------------------


def _die_in_transaction(n: int) -> None:
    """Patch the assets' ``transaction`` so that the n-th one kills this process before commit."""
    import contextlib
    import importlib

    from resources import warehouse

    original = warehouse.transaction
    count = {"entered": 0}

    @contextlib.contextmanager
    def dying(conn: Any) -> Iterator[Any]:
        with original(conn) as inner:
            yield inner
            count["entered"] += 1
            if count["entered"] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    for name in ASSET_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "transaction"):
            module.transaction = dying


def _child(env: dict[str, str], die_in_transaction: int | None) -> None:
    os.environ.update(env)
    if die_in_transaction is not None:
        _die_in_transaction(die_in_transaction)
    from cli.main import main

    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        code = main(["sync", "--full"])
    sys.stdout.flush()
    os._exit(code)


# -- the parent --------------------------------------------------------------------------------


def _arm(sandbox: Sandbox, point: KillPoint, pid: Callable[[], int | None]) -> None:
    """Install the sandbox hook that kills the child at ``point``."""
    if point.phase == "landing":
        return
    server = sandbox.servers[point.server]
    matches = {"n": 0}
    wanted = "/getLog/" if point.phase == "acknowledgement" else "/sync/v1"

    def hook(request: Request, number: int) -> str | None:
        if point.phase != "fetch" and wanted not in request.path:
            return None
        if point.phase == "fetch" and request.method != "GET":
            return None
        matches["n"] += 1
        if matches["n"] != point.n or (target := pid()) is None:
            return None
        os.kill(target, signal.SIGKILL)
        return "drop" if point.drop else None

    after = point.phase == "acknowledgement" or (point.phase == "delivery" and not point.drop)
    server.add_request_hook(hook, after=after)


def _run_child(
    sandbox: Sandbox, env: dict[str, str], point: KillPoint | None
) -> tuple[bool, int | None]:
    """One sync in a child process: (killed?, exit code)."""
    context = multiprocessing.get_context("fork")
    target_pid: dict[str, int | None] = {"pid": None}
    if point is not None:
        _arm(sandbox, point, lambda: target_pid["pid"])
    landing = point.n if point is not None and point.phase == "landing" else None
    process = context.Process(target=_child, args=(env, landing))
    process.start()
    target_pid["pid"] = process.pid
    process.join(SYNC_TIMEOUT_S)
    for server in sandbox.servers.values():
        server.clear_request_hooks()
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"sync at {point} hung for {SYNC_TIMEOUT_S} s")
    killed = process.exitcode == -signal.SIGKILL
    return killed, process.exitcode


@pytest.fixture
def kill_env(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, str]]]:
    world = World(seed=WORLD_SEED, students=30, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 0}}
    ) as sandbox:
        env = {
            **sandbox.env,
            "HUBSYNC_WAREHOUSE": str(tmp_path / "w.duckdb"),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "HUB_POLL_INTERVAL": "0.02",
            "HUB_ACK_TIMEOUT": "20",
            "HUB_MAX_DELETE_SHARE": "1",  # a chain piles up deletes; the guard is not under test
        }
        yield sandbox, env


def _change(sandbox: Sandbox, seed: int) -> None:
    sandbox.world.clock.advance(900)
    sandbox.world.step(seed=seed)


def test_killed_syncs_converge_after_restart(kill_env: tuple[Sandbox, dict[str, str]]) -> None:
    sandbox, env = kill_env
    kills: list[tuple[int, KillPoint, bool]] = []
    restarts: list[int] = []
    diverged: list[str] = []
    for seed in range(CHAINS):
        for i, point in enumerate(kill_points(seed)):
            _change(sandbox, seed * 100 + i)
            killed, code = _run_child(sandbox, env, point)
            assert killed or code in (0, 1), f"{point}: exit code {code}"
            kills.append((seed, point, killed))

        for restart in (1, 2):  # the first may have to acknowledge what the HUB finished late
            killed, code = _run_child(sandbox, env, None)
            assert not killed and code == 0, f"chain {seed}: restart {restart} exit code {code}"
            if converged(sandbox):
                break
        restarts.append(restart)
        # Delivery converged: the HUB holds exactly what the warehouse wants it to hold ...
        assert _non_empty(sandbox.hub.state_snapshot()) == _desired(env), f"chain {seed}"
        assert sandbox.hub.duplicate_inserts(links=False) == 0, f"chain {seed}"
        # ... and that is the world's expected state.
        if hub_differences(sandbox) != (0, 0):
            diverged.append(_trace(sandbox, env))
        assert not diverged, diverged[-1]

    _report(kills, restarts, sandbox, diverged)
    reached = [point for _, point, killed in kills if killed]
    assert len(reached) >= MIN_KILLS, [str(p) for p in reached]
    assert {point.phase for point in reached} == set(PHASES)


def _non_empty(state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {kind: objects for kind, objects in state.items() if objects}


def _desired(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    import json

    import duckdb

    with duckdb.connect(env["HUBSYNC_WAREHOUSE"], read_only=True) as conn:
        rows = conn.execute("SELECT object_type, key, payload::VARCHAR FROM hub_desired").fetchall()
    desired: dict[str, dict[str, Any]] = {}
    for kind, key, payload in rows:
        desired.setdefault(kind, {})[key] = json.loads(payload)
    return _non_empty(desired)


def _trace(sandbox: Sandbox, env: dict[str, str]) -> str:
    """The differences and, per differing key, what the warehouse sent and holds."""
    import duckdb

    text = describe_differences(sandbox, limit=3)
    keys = [line.split(":")[0].split(" ", 1)[1] for line in text.splitlines()]
    with duckdb.connect(env["HUBSYNC_WAREHOUSE"], read_only=True) as conn:
        for key in keys:
            rows = conn.execute(
                "SELECT e.sync_key, e.batch_no, e.action, b.status, b.phase, l.outcome, l.message "
                "FROM hub_events e JOIN hub_batches b USING (sync_key, batch_no) "
                "LEFT JOIN hub_log l ON l.sync_key = e.sync_key AND l.seq = e.seq "
                "WHERE e.key = ? ORDER BY e.sync_key, e.seq",
                [key],
            ).fetchall()
            state = conn.execute("SELECT certain FROM hub_state WHERE key = ?", [key]).fetchall()
            desired = conn.execute(
                "SELECT count(*) FROM hub_desired WHERE key = ?", [key]
            ).fetchall()
            text += f"\n{key}: state {state}, desired {desired}\n  " + "\n  ".join(map(str, rows))
    return text


def _report(
    kills: list[tuple[int, KillPoint, bool]],
    restarts: list[int],
    sandbox: Sandbox,
    diverged: list[str],
) -> None:
    target = os.environ.get("HUBSYNC_KILL_REPORT")
    if not target:
        return
    lines = [
        f"chain {seed}: {point} {'killed' if killed else 'not reached'}"
        for seed, point, killed in kills
    ]
    by_phase = {p: sum(1 for _, point, k in kills if k and point.phase == p) for p in PHASES}
    lines.append(f"kills by phase: {by_phase}")
    lines.append(f"restarts needed per chain: {restarts}")
    lines.append(f"re-sent uncertain links refused as existing: {sandbox.hub.duplicate_inserts()}")
    lines += [f"diverged from the world: {text}" for text in diverged]
    Path(target).write_text("\n".join(lines) + "\n")
