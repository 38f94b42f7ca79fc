"""The hubsync code location: the one ``dagster.Definitions``.

Settings are read at import, so an invalid environment fails the code location load with the
``ConfigError`` naming each bad variable. Nothing here opens the warehouse.
"""

import dagster as dg

from assets.graph import GRAPH_ASSETS, GraphSettings
from assets.hub import HUB_ASSETS
from assets.hub.checks import DELIVERY_CHECKS
from assets.maintenance import RetentionSettings, sync_retention
from assets.sync import build_sync_summary, sync_run
from pipelines.jobs import (
    hub_acknowledgement_job,
    prune_sync_runs_job,
    record_sync_failure_job,
    sync_job,
)
from pipelines.schedules import build_schedules
from pipelines.sensors import build_sensors
from resources import sources
from resources.hub import hub_resource
from resources.settings import Settings, load_settings
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
    """Every source system of the registry (its assets and resource), the graph, the HUB,
    and the sync bookkeeping that opens and closes each sync around them."""
    source_assets = [a for s in sources.SOURCE_SYSTEMS for a in s.asset_definitions()]
    assets = [
        sync_run,
        build_sync_summary(source_assets),
        *source_assets,
        *GRAPH_ASSETS,
        *HUB_ASSETS,
        sync_retention,
    ]
    return dg.Definitions(
        assets=dg.map_asset_specs(with_table_schema, assets),
        # Every step opens DuckDB and is in pool "duckdb" (WAREHOUSE_POOL, limit 1), so steps
        # run one at a time anyway: a process per step (the multiprocess default) would only
        # add its start-up (seconds per step on a busy host) and close the warehouse a run
        # holds open (RunHold). Runs from the daemon and the UI then execute like the CLI's,
        # in the run worker's process; pools still apply.
        executor=dg.in_process_executor,
        asset_checks=DELIVERY_CHECKS,
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
            **{s.name: s.make_resource(settings) for s in sources.SOURCE_SYSTEMS},
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
