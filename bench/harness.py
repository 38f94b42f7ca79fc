"""What the university-scale benchmarks share: a sandbox in its own process, a sync run here,
its stages, and the result file.

The sandbox runs as a subprocess (``python -m sandbox.server``), so this process's peak RSS is
the sync's own; the sandbox's is read from ``/proc`` before it stops.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
# The smoke tests point this elsewhere, so they never overwrite real figures.
RESULTS = Path(os.environ.get("HUBSYNC_BENCH_RESULTS") or ROOT / "bench" / "results")
SOURCES = ("co", "studip", "lms")
SHARED_MACHINE_NOTE = (
    "2-core machine shared with other engineers' test runs: timings are upper bounds"
)

# Which Dagster steps make up which stage of a sync (steps not named here are listed as "other").
FETCH_AND_LAND = {
    "co": "co_raw_pages",
    "studip": "studip_raw_pages",
    "lms": "lms_registration_pages",
}
CURRENT_STATE = {
    "co": "co_current_state",
    "studip": "studip_current_state",
    "lms": "lms_current_state",
}
GRAPH = ("persons", "hub_desired")
PAYLOAD = "hub_payload"
DELIVERY = ("hub_delivery", "hub_acknowledgement")
BOOKKEEPING = ("sync_run", "sync_summary")


def peak_rss_mb() -> float:
    """This process's peak resident set so far.

    ``VmHWM`` rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` over fork and exec, so a
    benchmark started from a big process (pytest) would report that process's peak."""
    own = process_peak_rss_mb(os.getpid())
    return (
        own
        if own is not None
        else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    )


def process_peak_rss_mb(pid: int) -> float | None:
    """Another process's peak resident set (``VmHWM``), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Print the result as one JSON line and write it to bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return path


# -- the sandbox -------------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    process: subprocess.Popen[str]
    env: dict[str, str]  # CO_API_URL, STUDIP_API_URL, LMS_API_URL, HUB_API_URL
    origins: dict[str, str]  # system -> http://host:port (where /_sandbox/... lives)
    ready_s: float

    def admin(self, system: str, method: str, route: str, body: Any = None) -> Any:
        response = requests.request(
            method, f"{self.origins[system]}/_sandbox/{route}", json=body, timeout=600
        )
        response.raise_for_status()
        return response.json()

    def peak_rss_mb(self) -> float | None:
        return process_peak_rss_mb(self.process.pid)

    def cpu_s(self) -> float:
        """CPU time (user + system) the sandbox process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def route_counts(self, system: str) -> dict[str, int]:
        """API requests ``system`` served per route pattern (admin routes excluded)."""
        counts = self.admin(system, "GET", "requests")["counts"]
        return {route: n for route, n in sorted(counts.items()) if " /_sandbox/" not in route}

    def request_counts(self) -> dict[str, int]:
        """API requests served per system (admin routes excluded)."""
        return {system: sum(self.route_counts(system).values()) for system in self.origins}


_ENV_SYSTEMS = {"CO_API_URL": "co", "STUDIP_API_URL": "studip", "LMS_API_URL": "lms",
                "HUB_API_URL": "hub"}  # fmt: skip


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


@contextmanager
def sandbox_process(
    students: int, *, seed: int = 42, latency_ms: int = 0, timeout_s: float = 900
) -> Iterator[SandboxProcess]:
    """``hubsync sandbox`` on free ports in a child process, faults off, until the block ends."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.server", "--students", str(students), "--seed",
         str(seed), "--port-base", "0", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        env = _read_urls(process, started + timeout_s)
        sandbox = SandboxProcess(
            process,
            env,
            {_ENV_SYSTEMS[name]: _origin(url) for name, url in env.items()},
            round(time.perf_counter() - started, 2),
        )
        if latency_ms:
            for system in sandbox.origins:
                sandbox.admin(system, "POST", "faults", {"latency_floor_ms": latency_ms})
        yield sandbox
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_urls(process: subprocess.Popen[str], deadline: float) -> dict[str, str]:
    assert process.stdout is not None
    env: dict[str, str] = {}
    for line in process.stdout:  # the CLI prints NAME=URL lines, then "sandbox ready"
        name, separator, url = line.strip().partition("=")
        if separator and name in _ENV_SYSTEMS:
            env[name] = url
        if line.startswith("sandbox ready"):
            return env
        if time.perf_counter() > deadline:
            break
    raise RuntimeError(f"the sandbox did not start (exit code {process.poll()})")


# -- a sync run --------------------------------------------------------------------------------


@dataclass
class SyncMeasurement:
    success: bool
    error: str | None
    wall_s: float
    steps: dict[str, float]  # step -> seconds
    numbers: dict[str, dict[str, float]]  # step -> numeric materialization metadata
    peak_rss_mb: float  # this process's peak right after the run
    other: dict[str, Any] = field(default_factory=dict)

    def step_s(self, step: str) -> float:
        return round(self.steps.get(step, 0.0), 3)

    def number(self, step: str, name: str, default: float = 0) -> float:
        return self.numbers.get(step, {}).get(name, default)


# Settings a benchmark takes from the environment (e.g. STUDIP_CONCURRENCY=16); all others are
# the sandbox defaults, whatever .env says.
TUNING_VARIABLES = (
    "CO_PAGE_SIZE",
    "CO_INCREMENTAL_THRESHOLD",
    "STUDIP_CONCURRENCY",
    "STUDIP_API_MODE",
    "STUDIP_PAGE_SIZE",
    "STUDIP_DETAILS_REFRESH_DAYS",
    "STUDIP_RELIST_EVERY",
    "LMS_PAGE_SIZE",
    "HUB_BATCH_SIZE",
    "HUB_POLL_INTERVAL",
    "HUB_ACK_TIMEOUT",
    "HUBSYNC_WAREHOUSE_MEMORY_MB",
)


def settings_env(sandbox: SandboxProcess, warehouse: Path) -> dict[str, str]:
    tuning = {name: os.environ[name] for name in TUNING_VARIABLES if os.environ.get(name)}
    return {**tuning, **sandbox.env, "HUBSYNC_WAREHOUSE": str(warehouse)}


def tuning(env: dict[str, str]) -> dict[str, Any]:
    """The settings that shape a sync's speed, as the benchmark ran it."""
    from resources.settings import load_settings

    settings = load_settings(env)
    return {
        "co_page_size": settings.co.page_size,
        "studip_concurrency": settings.studip.concurrency,
        "studip_api_mode": settings.studip.api_mode,
        "studip_page_size": settings.studip.listing_page_size,
        "studip_relist_every": settings.studip.relist_every,
        "lms_page_size": settings.lms.page_size,
        "hub_batch_size": settings.hub.batch_size,
        "hub_poll_interval_s": settings.hub.poll_interval_s,
        "warehouse_memory_mb": settings.warehouse_memory_mb,
    }


def run_sync_here(env: dict[str, str], mode: str, key: str, log: io.TextIOBase) -> SyncMeasurement:
    """One sync job in this process on the Dagster instance in DAGSTER_HOME, as ``hubsync sync``
    runs it; step durations come from the run's step events."""
    from cli.runs import run_sync
    from pipelines.definitions import build_definitions
    from resources.settings import load_settings

    defs = build_definitions(load_settings(env))
    started = time.perf_counter()
    with RssSampler() as sampler:
        report = run_sync(defs, mode, key, out=log)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    step_rss = {
        step: sampler.peak_between(r.started, r.finished)
        for step, r in report.steps.items()
        if r.started is not None and r.finished is not None
    }
    return SyncMeasurement(
        success=report.success,
        error=report.error,
        wall_s=round(wall, 2),
        steps={
            step: round(r.duration_s, 3)
            for step, r in report.steps.items()
            if r.duration_s is not None
        },
        numbers={step: dict(r.numbers) for step, r in report.steps.items()},
        peak_rss_mb=peak_rss_mb(),
        other={"peak_rss_mb_by_step": {k: v for k, v in step_rss.items() if v is not None}},
    )


class RssSampler:
    """Samples this process's resident set every ``interval_s`` in a thread, so the peak can be
    pinned to the step that caused it."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (time.time(), MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        status = Path("/proc/self/status")
        while not self._stop.wait(self.interval_s):
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.time(), int(line.split()[1]) / 1024))

    def peak_between(self, start: float, end: float) -> float | None:
        inside = [mb for at, mb in self.samples if start <= at <= end]
        return round(max(inside), 1) if inside else None


def stages(sync: SyncMeasurement) -> dict[str, Any]:
    """Wall time per stage of a sync, from its step durations."""
    named = {
        *FETCH_AND_LAND.values(),
        *CURRENT_STATE.values(),
        *GRAPH,
        PAYLOAD,
        *DELIVERY,
        *BOOKKEEPING,
    }
    payload_s = sync.step_s(PAYLOAD)
    diff_s = round(sync.number(PAYLOAD, "diff_s"), 3)
    return {
        "fetch_and_land_s": {s: sync.step_s(step) for s, step in FETCH_AND_LAND.items()},
        "current_state_s": {s: sync.step_s(step) for s, step in CURRENT_STATE.items()},
        "graph_s": {step: sync.step_s(step) for step in GRAPH},
        "diff_s": diff_s,
        "payload_s": round(payload_s - diff_s, 3),  # the hub_payload step without the diff
        "delivery_s": {step: sync.step_s(step) for step in DELIVERY},
        "bookkeeping_s": {step: sync.step_s(step) for step in BOOKKEEPING},
        "checks_and_other_s": {
            step: seconds for step, seconds in sorted(sync.steps.items()) if step not in named
        },
    }


def total_fetch_and_land_s(sync: SyncMeasurement) -> float:
    return round(sum(sync.step_s(step) for step in FETCH_AND_LAND.values()), 3)


def file_size_mb(path: Path) -> float:
    """A DuckDB file's size with its write-ahead log."""
    files = [path, path.with_name(path.name + ".wal")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / 2**20, 1)


def use_temporary_dagster_home(folder: Path) -> None:
    """A fresh Dagster instance for this benchmark (never the developer's data/dagster_home)."""
    home = folder / "dagster_home"
    home.mkdir(exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)


@dataclass
class StudipSync:
    """One full Stud.IP sync (raw landing plus current state) in this process."""

    metadata: dict[str, Any]  # studip_raw_pages' metadata
    wall_s: float
    rows: dict[str, int]  # per studip_* table asked for
    requests_served: int
    baseline_rss_mb: float  # held with the world built, before the sync


def run_studip_sync(
    *,
    api_mode: str,
    students: int,
    seed: int,
    latency_ms: int,
    concurrency: int,
    tables: tuple[str, ...] = (),
) -> StudipSync:
    """A full Stud.IP sync against an in-process sandbox of ``students`` (every request at
    least ``latency_ms``), with ``STUDIP_API_MODE=api_mode`` and ``concurrency`` requests."""
    import tempfile
    from datetime import UTC, date, datetime

    import dagster as dg

    from assets.partitions import new_sync_key
    from assets.studip import studip_current_state, studip_raw_pages
    from assets.sync import sync_run
    from resources.settings import load_settings
    from resources.studip import StudIPResource, studip_resource
    from resources.warehouse import WarehouseResource
    from sandbox.http import FaultConfig
    from sandbox.server import running_sandbox
    from sandbox.world import World

    world = World(seed, students, today=date(2026, 11, 23))
    key = new_sync_key("full", datetime(2026, 11, 23, 10, tzinfo=UTC))
    with (
        running_sandbox(port_base=0, world=world) as sandbox,
        tempfile.TemporaryDirectory() as folder,
        dg.instance_for_test() as instance,
    ):
        sandbox.studip.faults.configure(FaultConfig(latency_floor_ms=latency_ms))
        instance.add_dynamic_partitions("sync_runs", [key])
        base = studip_resource(load_settings(sandbox.env).studip)
        fields = {name: getattr(base, name) for name in StudIPResource.model_fields}
        studip = StudIPResource(**{**fields, "concurrency": concurrency, "api_mode": api_mode})
        warehouse = WarehouseResource(path=str(Path(folder) / "bench.duckdb"))
        baseline = peak_rss_mb()
        started = time.perf_counter()
        result = dg.materialize(
            [sync_run, studip_raw_pages, studip_current_state],
            partition_key=key,
            instance=instance,
            resources={"warehouse": warehouse, "studip": studip},
        )
        wall = time.perf_counter() - started
        node = result.asset_materializations_for_node("studip_raw_pages")[0]
        with warehouse.connection() as conn:
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        return StudipSync(
            {k: v.value for k, v in node.metadata.items()},
            round(wall, 2),
            rows,
            sandbox.studip.request_count(),
            baseline,
        )
