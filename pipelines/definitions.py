"""The hubsync code location: the one ``dagster.Definitions``.

Settings are read at import, so an invalid environment fails the code location load with the
``ConfigError`` naming each bad variable. Nothing here opens the warehouse.
"""

import dagster as dg

from assets.campusonline import CAMPUSONLINE_ASSETS
from assets.graph import GRAPH_ASSETS, GRAPH_CHECKS, GraphSettings
from assets.hub import HUB_ASSETS, HUB_CHECKS
from assets.lms import LMS_ASSETS
from assets.maintenance import RetentionSettings, sync_retention
from assets.studip import STUDIP_ASSETS
from assets.sync import sync_run, sync_summary
from pipelines.jobs import (
    hub_acknowledgement_job,
    prune_sync_runs_job,
    record_sync_failure_job,
    sync_job,
)
from pipelines.schedules import build_schedules
from pipelines.sensors import build_sensors
from resources.campusonline import campusonline_resource
from resources.hub import hub_resource
from resources.lms import lms_resource
from resources.settings import Settings, load_settings
from resources.studip import studip_resource
from resources.table_schemas import migrated_table_columns
from resources.warehouse import WarehouseResource

# The warehouse table each asset writes, where it is not the asset's own name; the UI shows its
# columns (dagster/column_schema, from the migrations' DDL).
ASSET_TABLES = {
    "sync_run": "sync_runs",
    "sync_summary": "sync_runs",
    "sync_retention": "sync_runs",
    "studip_raw_pages": "raw_studip_pages",
    "hub_payload": "hub_events",
    "hub_delivery": "hub_batches",
    "hub_acknowledgement": "hub_state",
}
COLUMN_SCHEMA = "dagster/column_schema"


def with_table_schema(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The spec with the column schema of the table it writes, unless it declares its own."""
    table = ASSET_TABLES.get(spec.key.to_user_string(), spec.key.to_user_string())
    columns = migrated_table_columns().get(table)
    if COLUMN_SCHEMA in spec.metadata or columns is None:
        return spec
    return spec.merge_attributes(
        metadata={COLUMN_SCHEMA: dg.TableSchema(columns=columns), "dagster/table_name": table}
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    assets = [
        sync_run,
        sync_summary,
        *STUDIP_ASSETS,
        *CAMPUSONLINE_ASSETS,
        *LMS_ASSETS,
        *GRAPH_ASSETS,
        *HUB_ASSETS,
        sync_retention,
    ]
    return dg.Definitions(
        assets=dg.map_asset_specs(with_table_schema, assets),
        asset_checks=[*GRAPH_CHECKS, *HUB_CHECKS],
        # Every step opens DuckDB and is in pool "duckdb" (limit 1), so steps run one at a time
        # anyway: a process per step (the multiprocess default) would only add its start-up
        # (seconds per step on a busy host). Runs from the daemon and the UI then execute like
        # the CLI's, in the run worker's process; pools still apply.
        executor=dg.in_process_executor,
        jobs=[
            sync_job,
            hub_acknowledgement_job,
            prune_sync_runs_job,
            record_sync_failure_job,
        ],
        sensors=build_sensors(
            incremental_interval_s=settings.incremental_interval_s,
            automation=settings.automation,
        ),
        schedules=build_schedules(
            full_sync_cron=settings.full_sync_cron,
            timezone=settings.co.timezone.key,
            automation=settings.automation,
        ),
        resources={
            "warehouse": WarehouseResource.of(settings),
            "studip": studip_resource(settings.studip),
            "campusonline": campusonline_resource(settings.co),
            "lms": lms_resource(settings.lms),
            "hub": hub_resource(settings.hub),
            "graph_settings": GraphSettings(
                timezone=settings.co.timezone.key,
                match_rules=list(settings.match_rules),
                studip_student_id_field=settings.studip.student_id_field,
            ),
            "retention": RetentionSettings(keep_days=settings.keep_days),
        },
    )


defs = build_definitions(load_settings())
