"""Running a sync job in this process: live progress lines and a one-screen summary.

The run executes against the persistent instance in DAGSTER_HOME, so it shows up in the UI.
Dagster's console logger prints every framework event at DEBUG; it is silenced and progress is
printed from the run's event stream instead (step start/finish, INFO-level log messages).
"""

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import dagster as dg
from dagster._utils.error import SerializableErrorInfo  # the error in failure events

from pipelines.partitions import SyncMode, sync_runs_partitions
from pipelines.sensors import HOST_TAG, PID_TAG, reap_dead_runs

_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
_STEP_WRAPPER = dg.DagsterExecutionStepExecutionError.__name__


@dataclass
class StepReport:
    status: str = "not run"  # running | success | failed | skipped | not run
    started: float | None = None
    finished: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)  # numeric materialization metadata

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass
class SyncReport:
    key: str
    mode: SyncMode
    run_id: str
    steps: dict[str, StepReport] = field(default_factory=dict)
    success: bool = False
    duration_s: float = 0.0
    error: str | None = None


def error_text(error: SerializableErrorInfo) -> str:
    """``ExceptionName: message`` of the exception an asset raised (Dagster wraps it in a step
    error); just the message for a ``dagster.Failure``."""
    if error.cls_name == _STEP_WRAPPER and error.cause is not None:
        error = error.cause
    message = error.message.strip()
    qualified_name, separator, text = message.partition(": ")
    if not separator or qualified_name.rsplit(".", 1)[-1] != error.cls_name:
        return message
    return text if error.cls_name == "Failure" else f"{error.cls_name}: {text}"


def _numbers(metadata: dict[str, dg.MetadataValue]) -> dict[str, float]:
    return {
        name: value.value
        for name, value in metadata.items()
        if isinstance(value, dg.IntMetadataValue | dg.FloatMetadataValue)
        and value.value is not None
    }


class _Progress:
    """Event listener: records each step in ``report`` and prints a line per step event."""

    def __init__(self, report: SyncReport, out: TextIO) -> None:
        self.report = report
        self.out = out

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def __call__(self, entry: dg.EventLogEntry) -> None:
        event = entry.dagster_event
        step = entry.step_key
        if event is None:
            if entry.level >= logging.INFO:
                self._say(f"    {step or 'run'}: {entry.user_message}")
            return
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.event_specific_data
            error = getattr(data, "error", None)
            if self.report.error is None:
                self.report.error = error_text(error) if error else event.message
            return
        if step is None:
            return
        step_report = self.report.steps.setdefault(step, StepReport())
        if event.event_type == dg.DagsterEventType.STEP_START:
            step_report.status, step_report.started = "running", entry.timestamp
            self._say(f"  {step}: started")
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            step_report.status, step_report.finished = "success", entry.timestamp
            self._say(f"  {step}: done in {step_report.duration_s or 0:.1f} s")
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            step_report.status, step_report.finished = "failed", entry.timestamp
            error = event.step_failure_data.error
            message = error_text(error) if error else "failed"
            self.report.error = self.report.error or f"{step}: {message}"
            self._say(f"  {step}: FAILED: {message}")
        elif event.event_type == dg.DagsterEventType.STEP_SKIPPED:
            step_report.status = "skipped"
            self._say(f"  {step}: skipped")
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            asset = materialization.asset_key.to_user_string()
            for name, value in _numbers(materialization.metadata).items():
                step_report.numbers[name if asset == step else f"{asset}.{name}"] = value


def run_sync(
    defs: dg.Definitions,
    mode: SyncMode,
    key: str,
    *,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    out: TextIO | None = None,
) -> SyncReport:
    """Add ``key`` to the sync_runs partitions and run the ``mode`` sync job for it here,
    printing progress to ``out`` (default: stdout)."""
    out = out or sys.stdout
    report = SyncReport(key=key, mode=mode, run_id=str(uuid.uuid4()))
    job = defs.resolve_job_def(f"{mode}_sync_job")
    with dg.DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"hubsync: run {run_id} had died unfinished; marked failed", file=out)
        instance.add_dynamic_partitions(sync_runs_partitions.name, [key])
        # Called synchronously for every event of the run (the in-process executor runs here).
        instance.add_event_listener(report.run_id, _Progress(report, out))
        print(f"hubsync: {mode} sync {key} (run {report.run_id})", file=out, flush=True)
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            run_id=report.run_id,
            run_config=_QUIET_CONSOLE,
            tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()},
            asset_selection=asset_selection,
            raise_on_error=False,
        )
        report.duration_s = time.monotonic() - started
    report.success = result.success
    for node in result.job_def.graph.nodes:
        report.steps.setdefault(node.name, StepReport())
    if not report.success and report.error is None:
        report.error = "the run failed; see the run's logs in the Dagster UI"
    return report


def _format_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The numbers the summary shows (all of them are in the UI): what came in, what went out, what
# went wrong. Multi-assets prefix them with the table, e.g. "raw_co_students.pages".
HEADLINE_NUMBERS = frozenset(
    {
        "pages",
        "records",
        "items",
        "requests",
        "quarantined",
        "persons",
        "unsendable_persons",
        "events",
        "batches_posted",
        "items_applied",
        "items_reconciled",
        "items_failed",
    }
)


def _headline(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in HEADLINE_NUMBERS


def render_summary(report: SyncReport) -> str:
    """One screen: key, mode, outcome, then a line per step with duration and numbers."""
    outcome = "succeeded" if report.success else "FAILED"
    lines = [
        "",
        f"Sync {report.key} ({report.mode}) {outcome} in {report.duration_s:.1f} s",
        f"  run id: {report.run_id}",
    ]
    if report.error:
        lines.append(f"  error: {report.error}")
    width = max((len(step) for step in report.steps), default=4)
    lines.append(f"  {'step':<{width}}  {'status':<8}  {'time':>7}  numbers")
    for step, step_report in report.steps.items():
        duration = step_report.duration_s
        shown = f"{duration:.1f} s" if duration is not None else "-"
        numbers = " ".join(
            f"{k}={_format_number(v)}" for k, v in step_report.numbers.items() if _headline(k)
        )
        lines.append(f"  {step:<{width}}  {step_report.status:<8}  {shown:>7}  {numbers}".rstrip())
    return "\n".join(lines)
