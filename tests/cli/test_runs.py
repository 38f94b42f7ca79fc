"""The end-of-sync summary stays on one screen: headline numbers only; a sync key is one
sync's alone."""

import threading
from pathlib import Path

import dagster as dg

from cli.runs import StepReport, SyncKeyTaken, SyncReport, claim_sync_key, render_summary


def test_summary_shows_headline_numbers_only() -> None:
    report = SyncReport("full-20261123T020000Z", "full", "run-1", success=True, duration_s=3.2)
    report.steps["co_raw_pages"] = StepReport(
        "success",
        1.0,
        2.5,
        {
            "raw_co_students.pages": 2,
            "raw_co_students.records": 500,
            "raw_co_students.http_seconds": 0.12,
            "raw_co_students.bytes": 906476,
        },
    )
    report.steps["hub_delivery"] = StepReport(
        "success",
        2.5,
        3.0,
        {"batches_posted": 9, "items_applied": 2058, "items_failed": 0, "retries": 0},
    )
    text = render_summary(report)
    assert "Sync full-20261123T020000Z (full) succeeded in 3.2 s" in text
    assert "raw_co_students.pages=2 raw_co_students.records=500" in text
    assert "batches_posted=9 items_applied=2058 items_failed=0" in text
    for noise in ("http_seconds", "bytes", "retries"):
        assert noise not in text


def _race_for(key: str, instances: list[dg.DagsterInstance]) -> list[str]:
    """Every instance claims ``key`` at the same moment; what each one got."""
    barrier = threading.Barrier(len(instances))
    outcomes: list[str] = []

    def claim(instance: dg.DagsterInstance) -> None:
        barrier.wait()
        try:
            claim_sync_key(instance, key)
            outcomes.append("claimed")
        except SyncKeyTaken as exc:
            assert key in str(exc) and "same second" in str(exc)
            outcomes.append("taken")
        except Exception as exc:  # noqa: BLE001 - what the race raised is the point
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=claim, args=(instance,)) for instance in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return sorted(outcomes)


def test_two_syncs_claiming_one_key_at_once_leave_it_to_one(module_dagster_home: Path) -> None:
    """Two syncs started in the same second make the same key. Dagster checks for a key and
    then inserts it, so racing claims failed with a raw IntegrityError (unique index); now one
    sync gets the key and every other one SyncKeyTaken."""
    racers = 4
    instances = [dg.DagsterInstance.from_config(str(module_dagster_home)) for _ in range(racers)]
    try:
        for n in range(5):
            outcomes = _race_for(f"full-20261203T2300{n:02d}Z", instances)
            assert outcomes == ["claimed"] + ["taken"] * (racers - 1), outcomes
    finally:
        for instance in instances:
            instance.dispose()
