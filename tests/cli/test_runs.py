"""The end-of-sync summary stays on one screen: headline numbers only."""

from cli.runs import StepReport, SyncReport, render_summary


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
