"""hubsync beside dlt: each tool lands a full snapshot of one source, as whole processes.

    python3 -m venv .peer-venv && .peer-venv/bin/pip install -q "dlt[duckdb,parquet]"
    .venv/bin/python bench/peer.py --students 30000 --sources co,lms --runs 3

One sandbox (its own process) serves both tools. Per source and run, in a fresh folder:

* hubsync: ``hubsync sync --full --source <code>`` (``python -m cli``): its raw pages, staging,
  current state and bookkeeping, on a fresh warehouse and DAGSTER_HOME;
* dlt: ``../shared/bench/dlt_peer.py --sources <code> --file-format parquet`` from its own
  virtualenv (``--peer-python``, default ``.peer-venv/bin/python`` or ``$HUBSYNC_PEER_PYTHON``).

Runs are interleaved (hubsync, dlt, then dlt, hubsync, ...). Each process is measured by
``wait4``: wall time from spawn to exit, CPU (user + system) and peak RSS. Linux carries a
process's peak RSS over fork and exec, so this process stays small (no Dagster, no DuckDB): what
hubsync landed is read afterwards by a child of its own (``--report-hubsync``). Both tools must land
the same rows (hubsync: the sync's staged records; dlt: its top-level tables). For hubsync the
figures split the time into seconds before the first request (imports, Dagster, settings),
waiting for the network, parsing JSON, writing DuckDB and the rest of each step.

Then a no-op ``hubsync sync --source lms`` (nothing changed since the full sync) runs
``--runs`` times: its wall time and its time before the first request.

Prints one JSON object and writes bench/results/peer-<students>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    ROOT,
    SHARED_MACHINE_NOTE,
    SandboxProcess,
    sandbox_process,
    settings_env,
    write_result,
)

DLT_PEER = ROOT.parent / "shared" / "bench" / "dlt_peer.py"
DEFAULT_PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
# The rows each tool lands per source: hubsync's staged records (the LMS's items without the
# repeats of overlapping pages), dlt's top-level tables.
HUBSYNC_ROWS = {
    "co": [f"SELECT count(*) FROM {table}"
           for table in ("stg_co_students", "stg_co_studies", "stg_co_applications")],
    "lms": ["SELECT count(*) FROM (SELECT DISTINCT endpoint, RegistrationId"
            " FROM stg_lms_registrations)"],
}  # fmt: skip
DLT_ROWS = {
    "co": ["co_students", "co_studies", "co_applications"],
    "lms": ["lms_active_registrations", "lms_completed_registrations"],
}
# Per source, the assets whose metadata split the landing's time: the fetch (one asset per step:
# CO's three raw tables share one step's numbers) and the current state.
FETCH_ASSETS = {
    "co": ["raw_co_students"],
    "lms": ["raw_lms_active_registrations", "raw_lms_completed_registrations"],
}
STATE_ASSET = {"co": "co_students", "lms": "lms_registrations"}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def measured(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``command`` to its end: wall seconds, CPU seconds and peak RSS (MB) of the process."""
    started_at = time.time()
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({code}); see {log}")
    return {
        "started_at": started_at,
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def hubsync_env(sandbox: SandboxProcess, folder: Path) -> dict[str, str]:
    home = folder / "dagster_home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        **settings_env(sandbox, folder / "warehouse.duckdb"),
        "DAGSTER_HOME": str(home),
    }


def first_request_after(sandbox: SandboxProcess, system: str, started_at: float) -> float | None:
    first = sandbox.admin(system, "GET", "requests")["first_request_at"]
    return None if first is None else round(first - started_at, 3)


def run_hubsync(
    sandbox: SandboxProcess, code: str, folder: Path, *, full: bool = True
) -> dict[str, Any]:
    sandbox.admin(code, "POST", "requests/reset")
    command = [sys.executable, "-m", "cli", "sync", "--source", code, *(["--full"] * full)]
    env = hubsync_env(sandbox, folder)
    result = measured(command, env, folder / f"hubsync-{time.monotonic_ns()}.log")
    result["before_first_request_s"] = first_request_after(sandbox, code, result["started_at"])
    if full:
        report = subprocess.run(
            [sys.executable, __file__, "--report-hubsync", str(folder), "--sources", code],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        landed = json.loads(report.stdout)
        result["rows"] = landed["rows"]
        result["split"] = _hubsync_split(landed["fetches"], landed["state"], result)
    return result


def report_hubsync(folder: Path, code: str) -> dict[str, Any]:
    """Run in a child (DAGSTER_HOME set): what the hubsync sync in ``folder`` landed, and its
    steps' numbers."""
    import dagster as dg
    import duckdb

    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as conn:
        rows = sum(conn.execute(sql).fetchone()[0] for sql in HUBSYNC_ROWS[code])
    with dg.DagsterInstance.get() as instance:
        return {
            "rows": rows,
            "fetches": [latest_numbers(instance, asset) for asset in FETCH_ASSETS[code]],
            "state": latest_numbers(instance, STATE_ASSET[code]),
        }


def _hubsync_split(
    fetches: list[dict[str, float]], state: dict[str, float], result: dict[str, Any]
) -> dict[str, float]:
    """Where the process's time went, from its steps' metadata."""

    def fetch(name: str) -> float:
        return sum(numbers.get(name, 0.0) for numbers in fetches)

    network, parsing, writing = (
        fetch("http_seconds"),
        fetch("parse_seconds"),
        fetch("write_seconds"),
    )
    fetch_s, state_s = fetch("duration_s"), state.get("duration_s", 0.0)
    before = result["before_first_request_s"] or 0.0
    return {
        "before_first_request_s": round(before, 3),
        "fetch_network_s": round(network, 3),
        "fetch_parse_s": round(parsing, 3),
        "fetch_write_duckdb_s": round(writing, 3),
        "fetch_other_s": round(max(fetch_s - network - parsing - writing, 0), 3),
        "current_state_s": round(state_s, 3),
        "rest_s": round(max(result["wall_s"] - before - fetch_s - state_s, 0), 3),
    }


def latest_numbers(instance: Any, asset: str) -> dict[str, float]:
    """The numeric metadata of the asset's latest materialization."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {
        name: float(value.value)
        for name, value in event.asset_materialization.metadata.items()
        if isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
    }


def run_dlt(
    sandbox: SandboxProcess, code: str, folder: Path, peer: Path, script: Path
) -> dict[str, Any]:
    command = [str(peer), str(script), "--sources", code, "--file-format", "parquet",
               "--duckdb", str(folder / "dlt.duckdb"),
               "--pipelines-dir", str(folder / "dlt")]  # fmt: skip
    env = {**os.environ, **sandbox.env, "RUNTIME__DLTHUB_TELEMETRY": "false"}
    log = folder / f"dlt-{time.monotonic_ns()}.log"
    result = measured(command, env, log)
    printed = json.loads(log.read_text().strip().splitlines()[-1])
    result["rows"] = sum(printed["tables"].get(table, 0) for table in DLT_ROWS[code])
    result["steps_s"] = printed["steps_s"]
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: median([run[name] for run in runs]) for name in ("wall_s", "cpu_s", "peak_rss_mb")
    }
    out["rows"] = sorted({run["rows"] for run in runs})
    if "split" in runs[0]:
        out["split_s"] = {
            part: median([run["split"][part] for run in runs]) for part in runs[0]["split"]
        }
    return out


def compare_source(
    sandbox: SandboxProcess, code: str, runs: int, peer: tuple[Path, Path], scratch: Path
) -> tuple[dict[str, Any], Path]:
    """``peer``: the peer's python and script."""
    hubsync, dlt = [], []
    last_hubsync_folder = scratch
    for number in range(runs):
        order = ("hubsync", "dlt") if number % 2 == 0 else ("dlt", "hubsync")
        for tool in order:
            folder = Path(tempfile.mkdtemp(prefix=f"{code}-{tool}-", dir=scratch))
            if tool == "hubsync":
                run = run_hubsync(sandbox, code, folder)
                hubsync.append(run)
                last_hubsync_folder = folder
            else:
                run = run_dlt(sandbox, code, folder, *peer)
                dlt.append(run)
            print(f"peer: {code} {tool} run {number + 1}: {run}", file=sys.stderr, flush=True)
    ours, theirs = summary(hubsync), summary(dlt)
    result = {
        "hubsync": ours,
        "dlt": theirs,
        "ratio_hubsync_to_dlt": {
            name: round(ours[name] / theirs[name], 2) for name in ("wall_s", "cpu_s", "peak_rss_mb")
        },
        "same_rows": ours["rows"] == theirs["rows"],
        "dlt_steps_s": {
            step: median([run["steps_s"][step] for run in dlt]) for step in dlt[0]["steps_s"]
        },
    }
    return result, last_hubsync_folder


def no_op_syncs(sandbox: SandboxProcess, folder: Path, runs: int) -> dict[str, Any]:
    """``hubsync sync --source lms`` after a full sync, nothing changed."""
    results = [run_hubsync(sandbox, "lms", folder, full=False) for _ in range(runs)]
    return {
        "wall_s": median([r["wall_s"] for r in results]),
        "before_first_request_s": median([r["before_first_request_s"] for r in results]),
        "cpu_s": median([r["cpu_s"] for r in results]),
        "runs_wall_s": [r["wall_s"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--students", type=int, default=30000)
    parser.add_argument("--sources", default="co,lms", help="comma-separated: co, lms")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and source (>= 1)")
    parser.add_argument(
        "--peer-python",
        type=Path,
        default=Path(os.environ.get("HUBSYNC_PEER_PYTHON") or DEFAULT_PEER_PYTHON),
        help="the python of a virtualenv with dlt[duckdb,parquet]",
    )
    parser.add_argument("--peer-script", type=Path, default=DLT_PEER, help="the dlt pipeline")
    parser.add_argument("--note", default=SHARED_MACHINE_NOTE)
    parser.add_argument("--report-hubsync", type=Path, help=argparse.SUPPRESS)  # see run_hubsync
    args = parser.parse_args()
    if args.report_hubsync:
        print(json.dumps(report_hubsync(args.report_hubsync, args.sources)))
        return
    codes = [code for code in args.sources.split(",") if code]
    if unknown := set(codes) - set(HUBSYNC_ROWS):
        parser.error(f"--sources: unknown {sorted(unknown)}; choose from co, lms")
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if not args.peer_python.exists():
        parser.error(
            f"--peer-python: {args.peer_python} does not exist; make it with\n"
            '  python3 -m venv .peer-venv && .peer-venv/bin/pip install -q "dlt[duckdb,parquet]"'
        )
    result: dict[str, Any] = {
        "benchmark": "peer",
        "students": args.students,
        "runs": args.runs,
        "note": args.note,
    }
    peer = (args.peer_python, args.peer_script)
    with (
        sandbox_process(args.students) as sandbox,
        tempfile.TemporaryDirectory(prefix="hubsync-peer-") as scratch,
    ):
        result["sandbox_ready_s"] = sandbox.ready_s
        lms_folder = None
        for code in codes:
            result[code], folder = compare_source(sandbox, code, args.runs, peer, Path(scratch))
            if code == "lms":
                lms_folder = folder
        if lms_folder is not None:
            result["no_op_lms_sync"] = no_op_syncs(sandbox, lms_folder, args.runs)
    write_result(f"peer-{args.students}", result)


if __name__ == "__main__":
    main()
