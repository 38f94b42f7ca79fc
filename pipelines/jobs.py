"""The sync job, and the small housekeeping jobs the sensors and schedules start.

A run of ``sync_job`` is one sync, i.e. one ``sync_runs`` partition (Dagster infers the
partitioning from the selected assets). What it does, full or incremental, comes from its
partition key alone (``full-…`` or ``incr-…``): the UI's partition picker lists the keys of both
modes, so there is one job and no key that could be the wrong one for it. ``sync_run`` tags the
run with its mode (``hubsync/mode``); the schedule, the sensor and the CLI set that tag up front.
"""

import os

import dagster as dg

from assets.hub import hub_acknowledgement
from assets.maintenance import record_sync_failure, sync_retention
from assets.sync import SYNC_TAG, mark_sync_failed

# A sync is sync_summary and everything upstream of it. Later issues add their raw, graph and HUB
# assets as dependencies of sync_summary, which puts them in the job without touching this
# selection, while assets outside the sync (maintenance, reports) stay out. Asset checks on the
# selected assets come along, so blocking checks gate delivery within the run.
SYNC_SELECTION = dg.AssetSelection.assets("sync_summary").upstream()


# Runs launched by the daemon or the UI print to the terminal of `hubsync ui` (dagster dev).
# Without logger config a run logs every framework event there at DEBUG (hundreds of lines per
# sync); this default config says INFO: the assets' own messages, warnings and errors. The UI's
# run log keeps every event and message either way. `hubsync ui --verbose` sets DEBUG.
CONSOLE_LOG_LEVEL_ENV = "HUBSYNC_CONSOLE_LOG_LEVEL"
CONSOLE_LOG_LEVEL = os.environ.get(CONSOLE_LOG_LEVEL_ENV, "").strip().upper() or "INFO"
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": CONSOLE_LOG_LEVEL}}}}

sync_job = dg.define_asset_job(
    "sync_job",
    selection=SYNC_SELECTION,
    description="One sync of all sources into the HUB: full for a full-YYYYMMDDTHHMMSSZ key, "
    "incremental for an incr-YYYYMMDDTHHMMSSZ key (UTC start).",
    # dagster.yaml limits runs tagged hubsync/sync to one at a time: syncs queue, never overlap.
    tags={SYNC_TAG: "true"},
    hooks={mark_sync_failed},
    config=RUN_CONFIG,
)


# -- housekeeping jobs, started by the sensors and schedules in pipelines/ -------------------------

hub_acknowledgement_job = dg.define_asset_job(
    "hub_acknowledgement_job",
    selection=dg.AssetSelection.assets(hub_acknowledgement),
    description="Applies the getLog results of HUB batches that finished after their sync "
    "stopped waiting. Started by hub_log_sensor.",
    config=RUN_CONFIG,
)

prune_sync_runs_job = dg.define_asset_job(
    "prune_sync_runs_job",
    selection=dg.AssetSelection.assets(sync_retention),
    description="Removes sync keys older than HUBSYNC_KEEP_DAYS with their warehouse rows, "
    "keeping the latest full sync and what the current state builds on. Daily schedule.",
    config=RUN_CONFIG,
)


@dg.job(
    description="Marks a sync failed in sync_runs when its run failed or was canceled outside a "
    "step (the failure hook records step failures). Started by the sync run-status sensors."
)
def record_sync_failure_job() -> None:
    record_sync_failure()
