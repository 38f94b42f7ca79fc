"""Sensors: what makes hubsync run itself between the nightly full syncs.

* ``incremental_sync_sensor`` adds an ``incr-…`` key every HUBSYNC_INCREMENTAL_INTERVAL seconds
  and requests ``sync_job`` for it, unless a sync is queued or running, or no full
  sync has succeeded yet (an incremental sync overlays the latest full one).
* ``hub_log_sensor`` polls getLog for the HUB batches the last sync left unfinished and requests
  ``hub_acknowledgement_job`` when one finished. Between syncs only: a sync's own
  acknowledgement step picks up everything in flight.
* ``sync_failure_sensor`` / ``sync_canceled_sensor`` request ``record_sync_failure_job`` for a
  sync run that failed or was canceled, so its sync_runs row says why even when no step hook ran.

Sensors never open the warehouse (DuckDB allows one writer, and a sensor tick must not wait for
a sync): they read the Dagster instance and, for the HUB log, make HTTP calls only.

A run whose worker process died (killed, out of memory, the machine rebooted) stays STARTED for
ever: Dagster's default run launcher cannot check its worker, so run monitoring (dagster.yaml)
only catches it after ``max_runtime_seconds``. Before deciding whether a sync is running, the
sensors and the nightly schedule look for such runs on this host and mark them failed
(``reap_dead_runs``), which also frees their pool slot and lets ``sync_failure_sensor`` record
them in ``sync_runs``.
"""

import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import requests

from assets.hub import PENDING_MESSAGES_METADATA, hub_acknowledgement, hub_delivery
from assets.partitions import new_sync_key, sync_runs_partitions
from assets.sync import SYNC_MODE_TAG, SYNC_TAG
from pipelines.jobs import hub_acknowledgement_job, record_sync_failure_job, sync_job
from resources.http import ApiError
from resources.hub import FINISHED_STATUSES, HubResource

# Runs that hold or will take the sync lane.
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
HUB_LOG_INTERVAL_S = 30
_PARTITION_TAG = "dagster/partition"
_MAX_ERROR_CHARS = 2000


def _default_status(running: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


# Which process runs a ``hubsync sync`` (in-process) run, so that a later look can tell it died.
PID_TAG = "hubsync/pid"
HOST_TAG = "hubsync/host"
_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
_FIRST_ENGINE_EVENTS = 20
_START_SLACK_S = 2.0  # /proc start times are in clock ticks from a boot time in whole seconds


def _process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds); None when it does not exist or is a zombie.
    Linux only (``/proc``); elsewhere :func:`worker_alive` falls back to a signal-0 probe."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: killed, not yet reaped by its parent
        return None
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int, seen_at: float | None = None) -> bool:
    """Whether ``pid`` still runs and (when known) had started by ``seen_at``, when the run's
    worker was known to have that pid: a process started later is another one that got the
    dead worker's pid."""
    try:
        started = _process_started_at(pid)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, IndexError, StopIteration):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: alive
            return True
        return True
    if started is None:
        return False
    return seen_at is None or started <= seen_at + _START_SLACK_S


def worker_pid(
    instance: dg.DagsterInstance, record: dg.RunRecord
) -> tuple[int, float] | tuple[None, None]:
    """The pid of the process executing the run on this host and a time it was known to run
    (a later process with that pid is another one); ``(None, None)`` when unknown or elsewhere.

    ``hubsync sync`` runs carry the pid in their tags (with the host), from before the run was
    created. A run launched through the instance's run launcher (from a sensor, a schedule or
    the UI) runs in a worker process that the code location started by this host's daemon
    spawned; its engine events name the pid. A run executed in some other process
    (``execute_in_process`` without the tags) is not judged here: run monitoring's
    ``max_runtime_seconds`` is its backstop."""
    run = record.dagster_run
    if PID_TAG in run.tags:
        pid = int(run.tags[PID_TAG] or 0)
        if run.tags.get(HOST_TAG) != socket.gethostname() or not pid:
            return None, None
        return pid, record.create_timestamp.timestamp()
    if run.remote_job_origin is None:
        return None, None
    # The worker names its pid in its first engine events; a long run has many more events.
    events = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=_FIRST_ENGINE_EVENTS
    ).records
    for event in events:
        entry = event.event_log_entry
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid")
        if pid is not None:
            return int(pid.value), entry.timestamp
    return None, None


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs that are STARTING/STARTED although their worker process on this host
    is gone, and free their ``duckdb`` pool slot. Left alone, such a run counts as a running
    sync for ever and holds the pool's one slot, so every later sync would wait for it."""
    dead = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        pid, seen_at = worker_pid(instance, record)
        if pid is None or pid == os.getpid() or worker_alive(pid, seen_at):
            continue
        instance.report_run_failed(
            record.dagster_run, message=f"the process {pid} running this run died before it ended"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
        dead.append(record.dagster_run.run_id)
    return dead


def active_runs(
    instance: dg.DagsterInstance, *, tags: dict[str, str] | None = None, job_name: str | None = None
) -> Sequence[dg.DagsterRun]:
    """Runs queued or running, after marking failed those whose process died."""
    reap_dead_runs(instance)
    return instance.get_runs(
        filters=dg.RunsFilter(tags=tags, job_name=job_name, statuses=ACTIVE_STATUSES), limit=5
    )


def active_sync(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """A sync run that is queued or running, if any."""
    runs = active_runs(instance, tags={SYNC_TAG: "true"})
    return runs[0] if runs else None


def describe_run(run: dg.DagsterRun) -> str:
    key = run.tags.get(_PARTITION_TAG, "without a key")
    return f"{run.job_name} {key} is {run.status.value.lower()}"


def full_sync_run_succeeded(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={SYNC_MODE_TAG: "full"}, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=1,
    )
    return bool(runs)


# -- incremental syncs ----------------------------------------------------------------------------


def plan_incremental_sync(
    instance: dg.DagsterInstance, now: datetime
) -> dg.SensorResult | dg.SkipReason:
    """The tick's decision: a new ``incr-…`` key and a run for it, or why not."""
    running = active_sync(instance)
    if running is not None:
        return dg.SkipReason(f"{describe_run(running)}; the next incremental sync waits for it")
    if not full_sync_run_succeeded(instance):
        return dg.SkipReason(
            "no full sync has succeeded yet; start one (hubsync demo, or sync_job for a full-… "
            "key in the UI)"
        )
    key = new_sync_key("incremental", now)
    if instance.has_dynamic_partition(sync_runs_partitions.name, key):
        return dg.SkipReason(f"{key} exists already")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=key, run_key=key, tags={SYNC_MODE_TAG: "incremental"})
        ],
        dynamic_partitions_requests=[sync_runs_partitions.build_add_request([key])],
    )


def build_incremental_sync_sensor(interval_s: int, running: bool) -> dg.SensorDefinition:
    @dg.sensor(
        name="incremental_sync_sensor",
        job=sync_job,
        minimum_interval_seconds=interval_s,
        default_status=_default_status(running),
        description=f"Every {interval_s} s (HUBSYNC_INCREMENTAL_INTERVAL) adds an incr-… key "
        "and requests sync_job for it; skips while a sync is queued or running and "
        "until a full sync has succeeded.",
    )
    def incremental_sync_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.SensorResult | dg.SkipReason:
        return plan_incremental_sync(context.instance, datetime.now(UTC))

    return incremental_sync_sensor


# -- HUB log --------------------------------------------------------------------------------------


def latest_pending_messages(instance: dg.DagsterInstance) -> tuple[str, list[str]]:
    """The run id of the newest hub_delivery/hub_acknowledgement materialization and the
    messageIds it left processing at the HUB (``("", [])`` before any)."""
    entries = [
        instance.get_latest_materialization_event(asset.key)
        for asset in (hub_delivery, hub_acknowledgement)
    ]
    latest = max((e for e in entries if e is not None), key=lambda e: e.timestamp, default=None)
    if latest is None or latest.asset_materialization is None:
        return "", []
    value = latest.asset_materialization.metadata.get(PENDING_MESSAGES_METADATA)
    pending = value.value if isinstance(value, dg.JsonMetadataValue) else None
    return latest.run_id, [str(m) for m in pending or []]


def plan_acknowledgement(
    instance: dg.DagsterInstance, hub: HubResource
) -> dg.RunRequest | dg.SkipReason:
    running = active_sync(instance) or next(
        iter(active_runs(instance, job_name=hub_acknowledgement_job.name)), None
    )
    if running is not None:
        return dg.SkipReason(f"{describe_run(running)}; it acknowledges what finished")
    run_id, pending = latest_pending_messages(instance)
    if not pending:
        return dg.SkipReason("no HUB batches are pending")
    client = hub.client()
    try:
        finished = [m for m in pending if client.status(m) in FINISHED_STATUSES]
    except (ApiError, requests.RequestException) as exc:
        return dg.SkipReason(f"getLog failed, trying again next tick: {exc}")
    finally:
        client.close()
    if not finished:
        return dg.SkipReason(f"{len(pending)} HUB batches are still processing")
    # One acknowledgement per state seen: a new materialization or more finished batches make a
    # new key; a failed acknowledgement run is retried then, or by the next sync.
    return dg.RunRequest(
        run_key=f"hub-ack-{run_id}-{len(finished)}",
        tags={"hubsync/finished-batches": str(len(finished))},
    )


def build_hub_log_sensor(running: bool) -> dg.SensorDefinition:
    @dg.sensor(
        name="hub_log_sensor",
        job=hub_acknowledgement_job,
        minimum_interval_seconds=HUB_LOG_INTERVAL_S,
        default_status=_default_status(running),
        description="While HUB batches are pending (listed by the latest hub_delivery or "
        "hub_acknowledgement), polls their getLog status and requests hub_acknowledgement_job "
        "when one finished. Not while a sync runs: its own acknowledgement step does it.",
    )
    def hub_log_sensor(
        context: dg.SensorEvaluationContext, hub: HubResource
    ) -> dg.RunRequest | dg.SkipReason:
        return plan_acknowledgement(context.instance, hub)

    return hub_log_sensor


# -- failed syncs ---------------------------------------------------------------------------------


def record_failure_request(run: dg.DagsterRun, error: str) -> dg.RunRequest | dg.SkipReason:
    key = run.tags.get(_PARTITION_TAG)
    if key is None:
        return dg.SkipReason(f"run {run.run_id} has no sync key")
    return dg.RunRequest(
        run_key=f"record-failure-{run.run_id}",
        run_config={
            "ops": {
                "record_sync_failure": {
                    "config": {"sync_key": key, "error": error[:_MAX_ERROR_CHARS]}
                }
            }
        },
        tags={"hubsync/failed-run": run.run_id},
    )


def failure_text(context: dg.RunFailureSensorContext) -> str:
    """The first failed step and its error, else the run's failure message."""
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            cause = error.cause or error
            return f"{event.step_key}: {cause.message.strip()}"
    return context.failure_event.message or f"run {context.dagster_run.run_id} failed"


def build_sync_failure_sensors() -> list[dg.SensorDefinition]:
    sync_jobs = [sync_job]

    @dg.run_failure_sensor(
        name="sync_failure_sensor",
        monitored_jobs=sync_jobs,
        request_job=record_sync_failure_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a failed sync run's error in sync_runs (also failures outside a "
        "step, which the jobs' failure hook cannot see).",
    )
    def sync_failure_sensor(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
        return record_failure_request(context.dagster_run, failure_text(context))

    @dg.run_status_sensor(
        name="sync_canceled_sensor",
        run_status=dg.DagsterRunStatus.CANCELED,
        monitored_jobs=sync_jobs,
        request_job=record_sync_failure_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a canceled sync run as failed in sync_runs.",
    )
    def sync_canceled_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        return record_failure_request(
            context.dagster_run, f"run {context.dagster_run.run_id} was canceled"
        )

    return [sync_failure_sensor, sync_canceled_sensor]


def build_sensors(*, incremental_interval_s: int, automation: bool) -> list[dg.SensorDefinition]:
    """All sensors; ``automation`` (HUBSYNC_AUTOMATION) decides whether the ones that start
    syncs and acknowledgements run by default. The failure recorders always do."""
    return [
        build_incremental_sync_sensor(incremental_interval_s, automation),
        build_hub_log_sensor(automation),
        *build_sync_failure_sensors(),
    ]
