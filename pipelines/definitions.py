"""The hubsync code location: the one ``dagster.Definitions``.

Settings are read at import, so an invalid environment fails the code location load with the
``ConfigError`` naming each bad variable. Nothing here opens the warehouse.
"""

import dagster as dg

from assets.sync import sync_run, sync_summary
from pipelines.jobs import full_sync_job, incremental_sync_job
from resources.settings import Settings, load_settings
from resources.warehouse import WarehouseResource


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[sync_run, sync_summary],
        jobs=[full_sync_job, incremental_sync_job],
        resources={"warehouse": WarehouseResource(path=str(settings.warehouse_path))},
    )


defs = build_definitions(load_settings())
