"""The two sync jobs, and the small housekeeping jobs the sensors and schedules start.

Both select the same assets; a run is one sync, i.e. one ``sync_runs`` partition (Dagster infers
the partitioning from the selected assets). What a run does, full or incremental, comes from its
partition key (``full-…`` or ``incr-…``), not from the job. There are two jobs so that schedules,
sensors and the UI's run list keep the modes apart; ``sync_run`` refuses a key of the other mode.
"""

from typing import TYPE_CHECKING

import dagster as dg

from assets.hub import hub_acknowledgement
from assets.maintenance import record_sync_failure, sync_retention
from assets.sync import SYNC_MODE_TAG, SYNC_TAG, mark_sync_failed, sync_summary
from pipelines.partitions import SyncMode

if TYPE_CHECKING:  # what define_asset_job returns; dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

# A sync is sync_summary and everything upstream of it. Later issues add their raw, graph and HUB
# assets as dependencies of sync_summary, which puts them in both jobs without touching this
# selection, while assets outside the sync (maintenance, reports) stay out. Asset checks on the
# selected assets come along, so blocking checks gate delivery within the run.
SYNC_SELECTION = dg.AssetSelection.assets(sync_summary).upstream()


def _sync_job(mode: SyncMode, description: str) -> "UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        f"{mode}_sync_job",
        selection=SYNC_SELECTION,
        description=description,
        # dagster.yaml limits runs tagged hubsync/sync to one at a time: syncs queue, never overlap.
        tags={SYNC_TAG: "true", SYNC_MODE_TAG: mode},
        hooks={mark_sync_failed},
    )


full_sync_job = _sync_job(
    "full", "Full sync of all sources into the HUB. Run it for a full-YYYYMMDDTHHMMSSZ key."
)
incremental_sync_job = _sync_job(
    "incremental",
    "Incremental sync of what changed since the last sync. Run it for an incr-… key.",
)


# -- housekeeping jobs, started by the sensors and schedules in pipelines/ -------------------------

hub_acknowledgement_job = dg.define_asset_job(
    "hub_acknowledgement_job",
    selection=dg.AssetSelection.assets(hub_acknowledgement),
    description="Applies the getLog results of HUB batches that finished after their sync "
    "stopped waiting. Started by hub_log_sensor.",
)

prune_sync_runs_job = dg.define_asset_job(
    "prune_sync_runs_job",
    selection=dg.AssetSelection.assets(sync_retention),
    description="Removes sync keys older than HUBSYNC_KEEP_DAYS with their warehouse rows, "
    "keeping the latest full sync and what the current state builds on. Daily schedule.",
)


@dg.job(
    description="Marks a sync failed in sync_runs when its run failed or was canceled outside a "
    "step (the failure hook records step failures). Started by the sync run-status sensors."
)
def record_sync_failure_job() -> None:
    record_sync_failure()
