"""A small fifth source system, registered only by tests (``FAKE``): one route, one raw table,
one current-state table. It is what "Adding a source system" in the README asks of a new source,
in one file: if the core named its sources anywhere, this source would be missing there."""

import json
import os
from types import SimpleNamespace
from typing import Any

import dagster as dg
import requests

from assets.partitions import sync_runs_partitions
from assets.sync import sync_run
from resources.migrations import Migration, raw_page_table_ddl
from resources.sources import SourceSystem
from resources.warehouse import WarehouseResource, transaction
from sandbox.http import FaultConfig, Request, Response, SandboxServer
from sandbox.world import World

URL_VARIABLE = "FAKE_API_URL"
THINGS = [{"id": "t1", "name": "first"}, {"id": "t2", "name": "second"}]


# -- what the source's sandbox module would hold (sandbox/fake.py) -----------------------------


class FakeServer(SandboxServer):
    name = "fake"

    def __init__(
        self, world: World, *, host: str = "127.0.0.1", port: int = 0, faults: FaultConfig | None
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.router.add("GET", "/things", self._things)

    def _things(self, request: Request) -> Response:
        return Response.json(THINGS)


# -- resources/fake/ ------------------------------------------------------------------------------


class FakeResource(dg.ConfigurableResource):
    api_url: str

    def things(self) -> str:
        response = requests.get(f"{self.api_url}/things", timeout=10, allow_redirects=False)
        response.raise_for_status()
        return response.text


def fake_resource(settings: Any) -> FakeResource:
    return FakeResource(api_url=settings.api_url)


MIGRATIONS = [
    Migration(
        "fake: raw pages and things",
        raw_page_table_ddl("raw_fake_things")
        + """
        CREATE TABLE fake_things (
            thing_id VARCHAR NOT NULL, name VARCHAR, changed_in_sync VARCHAR NOT NULL
        );
        """,
    )
]


# -- assets/fake/ ---------------------------------------------------------------------------------


@dg.asset(partitions_def=sync_runs_partitions, group_name="fake", pool="duckdb", deps=[sync_run])
def raw_fake_things(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, fake: FakeResource
) -> dg.MaterializeResult:
    body = fake.things()
    records = len(json.loads(body))
    with warehouse.page_writer("raw_fake_things", context.partition_key) as pages:
        pages.add(request_key="things", page_nr=1, request_params={}, body=body,
                  record_count=records)  # fmt: skip
    return dg.MaterializeResult(metadata={"pages": 1, "records": records, "requests": 1})


@dg.asset(
    partitions_def=sync_runs_partitions, group_name="fake", pool="duckdb", deps=[raw_fake_things]
)
def fake_things(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> None:
    with warehouse.connection() as conn, transaction(conn):
        conn.execute("DELETE FROM fake_things")
        conn.execute(
            """
            INSERT INTO fake_things
            SELECT t->>'id', t->>'name', ? FROM raw_fake_things,
                 unnest(from_json(body, '["JSON"]')) AS u(t)
            WHERE sync_key = ?
            """,
            [context.partition_key, context.partition_key],
        )


FAKE_ASSETS = [raw_fake_things, fake_things]


# -- its one line in resources/sources.py -------------------------------------------------------

FAKE = SourceSystem(
    "fake", "fake", "Fake", URL_VARIABLE,
    # a real source has its settings in resources/settings.py; this one reads its URL directly
    lambda settings: SimpleNamespace(api_url=settings_url()),
    sandbox="tests.fake_source:FakeServer",
    resource="tests.fake_source:fake_resource",
    schema="tests.fake_source:MIGRATIONS",
    assets="tests.fake_source:FAKE_ASSETS",
)  # fmt: skip


def settings_url() -> str:
    return os.environ.get(URL_VARIABLE, "http://127.0.0.1:8799")
