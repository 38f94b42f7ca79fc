"""The university-scale benchmarks still run, at a tiny size, and say sensible things.

The incremental benchmark runs three syncs (about 20 s of CPU), so it only runs with
HUBSYNC_BENCH_SMOKE=1; the others are part of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
slow = pytest.mark.skipif(
    not os.environ.get("HUBSYNC_BENCH_SMOKE"), reason="three syncs; HUBSYNC_BENCH_SMOKE=1 runs it"
)


def run_bench(script: str, *args: str, results: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--note", "smoke test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HUBSYNC_BENCH_RESULTS": str(results)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    written = list(results.glob(f"{script.removesuffix('.py')}-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == printed
    return printed


def test_full_sync_reports_stages_and_a_floor_of_the_same_requests(tmp_path: Path) -> None:
    result = run_bench("full_sync.py", "--students", "40", results=tmp_path)
    assert result["success"] and result["hub"]["events"] > 0
    for source, numbers in result["sources"].items():
        # the floor replayed exactly what the sandbox served the sync, all successfully
        assert numbers["floor"]["requests"] == numbers["requests_served"], source
        assert set(numbers["floor"]["statuses"]) == {"200"}, source
        assert numbers["pages"] > 0 and numbers["records"] > 0, source
    assert result["sources"]["studip"]["floor"]["concurrency"] == 8
    assert result["ratio"] == pytest.approx(
        result["full_sync_fetch_and_land_s"] / result["floor_s"], abs=0.01
    )
    assert all(result["stages"]["fetch_and_land_s"].values())
    assert result["stages"]["graph_s"]["persons"] > 0
    assert result["peak_rss_mb"] > result["baseline_rss_mb"] > 0
    assert result["warehouse_mb"] > 0


@slow
def test_incremental_sends_only_the_changes(tmp_path: Path) -> None:
    result = run_bench(
        "incremental.py", "--students", "40", "--changes", "10", "--runs", "2", "--floor",
        results=tmp_path,
    )  # fmt: skip
    assert result["success"] and result["effective_mode"] == "incremental"
    assert result["runs_effective_mode"] == ["incremental", "incremental"]
    assert result["end_to_end_s"] in result["runs_end_to_end_s"]
    assert result["cpu_s"]["hubsync_cpu_s"] > 0 and result["cpu_s"]["sandbox_cpu_s"] > 0
    assert 0 < result["events"] < result["full_sync_before"]["events"]
    assert result["changes"] >= 5
    assert 0 < result["requests_served"]["studip"]
    for source, floor in result["request_floor"].items():
        # the floor replayed exactly what the sandbox served the median sync, all successfully
        assert floor["requests"] == result["requests_served"][source], source
        assert set(floor["statuses"]) <= {"200"}, source
    assert result["request_floor_s"] > 0


def test_the_dagster_floor_runs_the_sync_jobs_shape_doing_nothing(tmp_path: Path) -> None:
    result = run_bench("dagster_floor.py", "--runs", "1", results=tmp_path)
    from pipelines.definitions import defs

    job = defs.resolve_job_def("sync_job")
    assert result["steps"] == len(job.graph.nodes)
    assert result["assets"] == len(job.asset_layer.executable_asset_keys)
    events = result["events_per_run"]
    assert events["ASSET_MATERIALIZATION"] == result["assets"]
    assert events["STEP_SUCCESS"] == result["steps"] == events["HOOK_SKIPPED"]
    checks = job.asset_layer.asset_graph.asset_check_keys
    assert events["ASSET_CHECK_EVALUATION"] == len(checks)
    assert result["median_wall_s"] == result["runs_wall_s"][0] > 0
    assert 0 < result["before_first_request_s"]["import_dagster"]


def test_diff_finds_exactly_the_changes_built(tmp_path: Path) -> None:
    result = run_bench("diff.py", "--users", "3000", results=tmp_path)
    assert result["correct"]
    assert result["changes"] == {"delete": 3, "insert": 3, "update": 29}


def test_scaling_growth_exponents() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from scaling import growth_exponents
    finally:
        sys.path.remove(str(BENCH))
    runs = [
        {"students": 10, "rss": 100.0},
        {"students": 100, "rss": 1000.0},
        {"students": 1000, "rss": None},
    ]
    assert growth_exponents(runs, "rss") == [{"from": 10, "to": 100, "exponent": 1.0}]


def test_the_listing_client_benchmark_hands_over_every_user_once(tmp_path: Path) -> None:
    result = run_bench("studip_listing_client.py", "--students", "40", results=tmp_path)
    assert result["pages"] >= 1 and result["megabytes"] > 0
    assert result["users"] > 40 and result["memberships"] > result["users"]


def test_the_course_pages_benchmark_reads_every_member_each_way(tmp_path: Path) -> None:
    result = run_bench(
        "studip_course_pages.py", "--students", "40", "--rounds", "1", results=tmp_path
    )
    assert result["course_members"] > 1
    assert set(result["wall_s"]) == {
        f"{how}_{size}" for how in ("one_after_another", "read_ahead") for size in (100, 500, 2000)
    }
    assert all(len(times) == 1 and times[0] > 0 for times in result["wall_s"].values())


def test_peer_compares_both_tools_runs_and_a_no_op_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer here is a stand-in claiming one LMS registration; hubsync lands the world's.
    fake = Path(__file__).with_name("fake_dlt_peer.py")
    monkeypatch.setenv("FAKE_DLT_TABLES", json.dumps({"lms_active_registrations": 1, "other": 5}))
    result = run_bench("peer.py", "--students", "40", "--sources", "lms", "--runs", "1",
                       "--peer-python", sys.executable, "--peer-script", str(fake),
                       results=tmp_path)  # fmt: skip
    lms = result["lms"]
    assert lms["dlt"]["rows"] == [1] and lms["hubsync"]["rows"][0] > 1
    assert lms["same_rows"] is False
    for name in ("wall_s", "cpu_s", "peak_rss_mb"):
        assert lms["ratio_hubsync_to_dlt"][name] == round(
            lms["hubsync"][name] / lms["dlt"][name], 2
        )
    split = lms["hubsync"]["split_s"]
    assert 0 < split["before_first_request_s"] < lms["hubsync"]["wall_s"]
    assert split["fetch_network_s"] > 0 and split["current_state_s"] > 0
    no_op = result["no_op_lms_sync"]
    assert len(no_op["runs_wall_s"]) == 1
    assert 0 < no_op["before_first_request_s"] < no_op["wall_s"]
