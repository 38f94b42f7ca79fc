"""Running a sync job in this process: live progress lines and a one-screen summary.

The run executes against the persistent instance in DAGSTER_HOME, so it shows up in the UI.
Dagster's console logger prints every framework event at DEBUG; it is silenced and progress is
printed from the run's event stream instead (step start/finish, INFO-level log messages).
"""

import fcntl
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import dagster as dg
import sqlalchemy.exc
from dagster._utils.error import SerializableErrorInfo  # the error in failure events

from assets.partitions import SyncMode, sync_runs_partitions
from assets.sync import SYNC_MODE_TAG
from pipelines.sensors import HOST_TAG, PID_TAG, reap_dead_runs

QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # prints its own
_STEP_WRAPPER = dg.DagsterExecutionStepExecutionError.__name__
_CHECK_FAILED = "DagsterAssetCheckFailedError"  # a blocking check of the step did not pass
_NOT_EXECUTING = "Dependencies for step "
UNSENDABLE_REASONS = "unsendable_by_reason"  # hub_desired's metadata: persons per reason


@dataclass
class StepReport:
    status: str = "not run"  # running | success | failed | skipped | not run
    started: float | None = None
    finished: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)  # numeric materialization metadata
    reasons: dict[str, int] = field(default_factory=dict)  # unsendable persons per reason

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
    hub_notes: list[str] = field(default_factory=list)  # what went wrong at the HUB
    checks_not_passed: list[str] = field(default_factory=list)  # "NAME (SEVERITY): why"


def error_text(error: SerializableErrorInfo) -> str:
    """``ExceptionName: message`` of the exception an asset raised (Dagster wraps it in a step
    error); just the message for a ``dagster.Failure``."""
    if error.cls_name == _STEP_WRAPPER and error.cause is not None:
        error = error.cause
    message = error.message.strip()
    if error.cls_name == _CHECK_FAILED:  # "...: N blocking asset checks failed ...:\nasset: name"
        lines = message.splitlines()[1:]
        failed = [name for line in lines for name in line.partition(": ")[2].split(",")]
        which = "a blocking check" if len(failed) == 1 else "blocking checks"
        return f"{which} failed: {', '.join(failed)}"
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

    def _check(self, evaluation: dg.AssetCheckEvaluation) -> None:
        """A check that did not pass: a progress line and a line of the summary (the checks run
        inside their asset's step, so no step line names them)."""
        if evaluation.passed:
            return
        severity = evaluation.severity.value
        why = f": {evaluation.description}" if evaluation.description else ""
        line = f"{evaluation.check_name} ({severity}){why}"
        self.report.checks_not_passed.append(line)
        self._say(f"    check {line}")

    def __call__(self, entry: dg.EventLogEntry) -> None:
        event = entry.dagster_event
        step = entry.step_key
        if event is None:
            # Dagster says of every step after a failure that it is not executing; the summary
            # lists those steps once.
            if entry.level >= logging.INFO and not entry.user_message.startswith(_NOT_EXECUTING):
                self._say(f"    {step or 'run'}: {entry.user_message}")
            return
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.event_specific_data
            error = getattr(data, "error", None)
            if self.report.error is None:
                self.report.error = error_text(error) if error else event.message
            return
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            self._check(event.event_specific_data)
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
            reasons = materialization.metadata.get(UNSENDABLE_REASONS)
            if isinstance(reasons, dg.JsonMetadataValue) and isinstance(reasons.value, dict):
                step_report.reasons = {str(k): int(v) for k, v in reasons.value.items()}
            notes = materialization.metadata.get(HUB_NOTES_METADATA)
            if isinstance(notes, dg.JsonMetadataValue) and isinstance(notes.value, list):
                self.report.hub_notes.extend(str(note) for note in notes.value)


class SyncKeyTaken(RuntimeError):
    """Another sync already took the key: both started in the same second."""


def claim_sync_key(instance: dg.DagsterInstance, key: str) -> None:
    """Add ``key`` to the sync_runs partitions for this sync alone.

    Two syncs started in the same second make the same key; the second must not run it too.
    Dagster checks for a key and then inserts it, which is not atomic: two at once both passed
    the check and the loser's insert failed on the unique index (a raw IntegrityError). The
    check and the insert are therefore made under a lock file in the instance folder (the
    syncs of one warehouse run on one host); a key added by anything else is still refused.
    """
    taken = SyncKeyTaken(
        f"another sync took the key {key} (started in the same second); "
        "this one did nothing: start it again"
    )
    lock_path = Path(instance.root_directory) / ".sync-key.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if instance.has_dynamic_partition(sync_runs_partitions.name, key):
            raise taken
        try:
            instance.add_dynamic_partitions(sync_runs_partitions.name, [key])
        except sqlalchemy.exc.IntegrityError:  # added at this moment by a daemon, not a sync
            raise taken from None


def run_sync(
    defs: dg.Definitions,
    mode: SyncMode,
    key: str,
    *,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    out: TextIO | None = None,
) -> SyncReport:
    """Add ``key`` (of ``mode``) to the sync_runs partitions and run the sync job for it here,
    printing progress to ``out`` (default: stdout)."""
    out = out or sys.stdout
    report = SyncReport(key=key, mode=mode, run_id=str(uuid.uuid4()))
    job = defs.resolve_job_def("sync_job")
    with dg.DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"hubsync: run {run_id} had died unfinished; marked failed", file=out)
        claim_sync_key(instance, key)
        # Called synchronously for every event of the run (the in-process executor runs here).
        instance.add_event_listener(report.run_id, _Progress(report, out))
        print(f"hubsync: {mode} sync {key} (run {report.run_id})", file=out, flush=True)
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            run_id=report.run_id,
            run_config=QUIET_CONSOLE,
            tags={
                PID_TAG: str(os.getpid()),
                HOST_TAG: socket.gethostname(),
                SYNC_MODE_TAG: mode,
            },
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
        "identity_conflicts",
        "blocked_persons",
        "events",
        "batches_posted",
        "items_applied",
        "items_reconciled",
        "items_failed",
        "objects_refused",
        "messages_lost",
        "messages_given_up",
        "messages_processing_past_ack_timeout",
    }
)
# hub_delivery's lines about what the HUB refused or left unanswered (assets/hub/)
HUB_NOTES_METADATA = "hub_notes"


def _headline(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in HEADLINE_NUMBERS


def _run_order(report: SyncReport) -> list[str]:
    """Steps in the order they started; those that never started (skipped, not run) last."""
    steps = list(report.steps)
    return sorted(steps, key=lambda s: (report.steps[s].started is None, report.steps[s].started))


def _unsendable(report: SyncReport) -> list[str]:
    reasons: dict[str, int] = {}
    for step_report in report.steps.values():
        for reason, count in step_report.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    total = sum(reasons.values())
    if not total:
        return []
    why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return [
        f"  unsendable_persons: {total} persons are not sent to the HUB, which would refuse them:",
        f"    {why}",
        "    they stay in the graph; list them: hubsync export unsendable_persons",
    ]


def _wrapped(first: str, names: list[str], width: int = 100) -> list[str]:
    """``first`` and the comma-separated ``names``, broken between names."""
    lines, line = [], first
    for nr, name in enumerate(names):
        item = name + ("," if nr < len(names) - 1 else "")
        if len(line) + len(item) > width and line.strip():
            lines.append(line.rstrip())
            line = "    "
        line += item + " "
    return [*lines, line.rstrip()]


def render_summary(report: SyncReport, warehouse: Path | None = None) -> str:
    """One screen: key, mode, outcome, the warehouse, then a line per step in run order with
    duration and numbers, and what the numbers that need it mean."""
    outcome = "succeeded" if report.success else "FAILED"
    lines = [
        "",
        f"Sync {report.key} ({report.mode}) {outcome} in {report.duration_s:.1f} s",
        f"  run id: {report.run_id}",
    ]
    if warehouse is not None:
        lines.append(f"  warehouse: {warehouse}")
    if report.error:
        lines.append(f"  error: {report.error}")
    order = _run_order(report)
    not_run = [step for step in order if report.steps[step].status == "not run"]
    if report.steps and len(not_run) == len(order):
        not_run = []  # nothing ran: the table says so
    order = [step for step in order if step not in not_run]
    width = max((len(step) for step in order), default=4)
    lines.append(f"  {'step':<{width}}  {'status':<8}  {'time':>7}  numbers")
    for step in order:
        step_report = report.steps[step]
        duration = step_report.duration_s
        shown = f"{duration:.1f} s" if duration is not None else "-"
        numbers = " ".join(
            f"{k}={_format_number(v)}" for k, v in step_report.numbers.items() if _headline(k)
        )
        lines.append(f"  {step:<{width}}  {step_report.status:<8}  {shown:>7}  {numbers}".rstrip())
    if not_run:
        after = ", after the failure" if not report.success else ""
        lines += _wrapped(f"  not run{after}: ", not_run)
    if report.checks_not_passed:
        lines.append("  checks not passed:")
        lines += [f"    {check}" for check in report.checks_not_passed]
    if report.hub_notes:
        lines.append("  HUB:")
        lines += [f"    {note}" for note in report.hub_notes]
    lines += _unsendable(report)
    return "\n".join(lines)
