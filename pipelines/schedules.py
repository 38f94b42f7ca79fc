"""Schedules: the nightly full sync and the daily pruning of old sync keys.

Both run in the CAMPUSonline time zone (CO_TIMEZONE), so "02:00" means the university's 02:00
across daylight-saving changes.
"""

from datetime import UTC, datetime

import dagster as dg

from assets.partitions import new_sync_key, parse_sync_key, sync_runs_partitions
from assets.sync import SYNC_MODE_TAG, SYNC_TAG
from pipelines.jobs import prune_sync_runs_job, sync_job
from pipelines.sensors import active_runs, describe_run

PRUNE_CRON = "30 4 * * *"  # after the nightly full sync, before the working day


def _default_status(running: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def plan_full_sync(
    instance: dg.DagsterInstance, scheduled_at: datetime
) -> dg.RunRequest | dg.SkipReason:
    """The tick's decision: a new ``full-…`` key (added to the instance) and a run for it, or
    why not. Other syncs do not stop it: it queues behind them (one sync at a time)."""
    queued = [run for run in active_runs(instance, tags={SYNC_TAG: "true"}) if _is_full(run)]
    if queued:
        return dg.SkipReason(f"{describe_run(queued[0])}; one full sync at a time")
    key = new_sync_key("full", scheduled_at)
    # Schedules cannot return dynamic partition requests (dagster#14921): add the key here.
    instance.add_dynamic_partitions(sync_runs_partitions.name, [key])
    return dg.RunRequest(partition_key=key, run_key=key, tags={SYNC_MODE_TAG: "full"})


def _is_full(run: dg.DagsterRun) -> bool:
    """A run of a full sync: its mode tag says so, or (launched from the UI, not started yet)
    its key does."""
    if SYNC_MODE_TAG in run.tags:
        return run.tags[SYNC_MODE_TAG] == "full"
    try:
        return parse_sync_key(run.tags.get("dagster/partition", "")).mode == "full"
    except ValueError:
        return False


def build_nightly_full_sync_schedule(
    cron: str, timezone: str, running: bool
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_full_sync_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=sync_job,
        default_status=_default_status(running),
        description=f"At '{cron}' ({timezone}; HUBSYNC_FULL_SYNC_CRON) adds a full-… key and "
        "requests sync_job for it.",
    )
    def nightly_full_sync_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        return plan_full_sync(context.instance, context.scheduled_execution_time or _now())

    return nightly_full_sync_schedule


def build_prune_schedule(timezone: str, running: bool) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_prune_schedule",
        cron_schedule=PRUNE_CRON,
        execution_timezone=timezone,
        job=prune_sync_runs_job,
        default_status=_default_status(running),
        description="Daily: removes sync keys older than HUBSYNC_KEEP_DAYS (prune_sync_runs_job).",
    )
    def daily_prune_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        scheduled_at = context.scheduled_execution_time or _now()
        return dg.RunRequest(run_key=f"prune-{scheduled_at.astimezone(UTC):%Y%m%d}")

    return daily_prune_schedule


def build_schedules(*, full_sync_cron: str, timezone: str, automation: bool) -> list:
    return [
        build_nightly_full_sync_schedule(full_sync_cron, timezone, automation),
        build_prune_schedule(timezone, automation),
    ]


def _now() -> datetime:
    return datetime.now(UTC)
