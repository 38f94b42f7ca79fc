"""The end-of-sync summary stays on one screen: headline numbers only, steps in run order,
readable check names, the warehouse it wrote and what unsendable_persons means; a sync key is
one sync's alone."""

import threading
from pathlib import Path

import dagster as dg
from dagster._utils.error import SerializableErrorInfo

from cli.runs import (
    StepReport,
    SyncKeyTaken,
    SyncReport,
    claim_sync_key,
    error_text,
    render_summary,
)


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


def test_summary_lists_steps_in_run_order_and_names_the_warehouse() -> None:
    # the run's events reach the summary in plan order (alphabetical), not in run order
    report = SyncReport("full-20261123T020000Z", "full", "run-1", success=True, duration_s=9.0)
    report.steps["co_raw_pages"] = StepReport("success", 2.0, 3.0)
    report.steps["hub_delivery"] = StepReport("success", 5.0, 6.0)
    report.steps["sync_run"] = StepReport("success", 1.0, 2.0)
    report.steps["sync_summary"] = StepReport("not run")
    report.steps["hub_payload"] = StepReport("success", 4.0, 5.0)

    text = render_summary(report, warehouse=Path("/srv/hubsync/warehouse.duckdb"))

    lines = text.splitlines()
    assert "  warehouse: /srv/hubsync/warehouse.duckdb" in lines
    header = next(i for i, line in enumerate(lines) if "status" in line)
    steps = [line.split("  ")[1] for line in lines[header + 1 :]]
    assert steps == [
        "sync_run",
        "co_raw_pages",
        "hub_payload",
        "hub_delivery",
        "not run: sync_summary",
    ]


def test_steps_that_never_ran_after_a_failure_share_one_line() -> None:
    report = SyncReport("full-20261123T020000Z", "full", "run-1", success=False)
    report.steps["sync_run"] = StepReport("success", 1.0, 2.0)
    report.steps["co_raw_pages"] = StepReport("failed", 2.0, 3.0)
    for step in ("co_current_state", "persons", "hub_payload"):
        report.steps[step] = StepReport("not run")

    lines = render_summary(report).splitlines()

    assert lines[-3:] == [
        "  sync_run      success     1.0 s",
        "  co_raw_pages  failed      1.0 s",
        "  not run, after the failure: co_current_state, persons, hub_payload",
    ]


def test_summary_explains_unsendable_persons() -> None:
    report = SyncReport("full-20261123T020000Z", "full", "run-1", success=True)
    report.steps["hub_desired"] = StepReport(
        "success", 1.0, 2.0, {"unsendable_persons": 48},
        reasons={"no date of birth": 31, "no code: a CO student without STUDID": 17},
    )  # fmt: skip

    text = render_summary(report)

    assert text.splitlines()[-3:] == [
        "  unsendable_persons: 48 persons are not sent to the HUB, which would refuse them:",
        "    17 no code: a CO student without STUDID, 31 no date of birth",
        "    they stay in the graph; list them: hubsync export unsendable_persons",
    ]


def test_a_failed_blocking_check_reads_as_one_line_naming_the_checks() -> None:
    def failed(message: str) -> SerializableErrorInfo:
        return SerializableErrorInfo(message, [], "DagsterAssetCheckFailedError")

    one = failed(
        "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed "
        "with ERROR severity:\nhub_payload: hub_deletes_within_limit"
    )
    two = failed(
        "dagster._core.errors.DagsterAssetCheckFailedError: 2 blocking asset checks failed "
        "with ERROR severity:\nhub_payload: hub_desired_codes_unique,"
        "hub_links_reference_known_objects"
    )
    assert error_text(one) == "a blocking check failed: hub_deletes_within_limit"
    assert error_text(two) == (
        "blocking checks failed: hub_desired_codes_unique, hub_links_reference_known_objects"
    )


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
