"""Stud.IP's listing mode (the JSON:API) against the sandbox: the same studip_* tables as the
crawl, the fallback to the crawl, nothing landed by an interrupted listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.studip import STATE_TABLES
from pipelines.partitions import sync_runs_partitions
from resources.warehouse import WarehouseResource
from sandbox.http import FaultConfig
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.assets.test_studip import (
    FULL,
    FULL2,
    INCR,
    TODAY,
    materialize,
    metadata,
    query,
    studip_for,
)

# every table studip_state builds: a table added there is compared here too
STATE_TABLE_NAMES = [table.name for table in STATE_TABLES]


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, [FULL, INCR, FULL2])
        yield instance


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox(port_base=0, world=World(5, 60, today=TODAY)) as sandbox:
        yield sandbox


@pytest.fixture
def sb(sandbox: Sandbox) -> Iterator[Sandbox]:
    sandbox.studip.counts.clear()
    yield sandbox
    sandbox.studip.faults.configure(FaultConfig())


def state(warehouse: WarehouseResource) -> dict[str, list[tuple[Any, ...]]]:
    tables = {}
    for table in STATE_TABLE_NAMES:
        columns = [
            name
            for (name,) in query(
                warehouse,
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                "AND column_name <> 'changed_in_sync' ORDER BY column_index",
                [table],
            )
        ]
        listed = ", ".join(columns)
        tables[table] = query(warehouse, f"SELECT {listed} FROM {table} ORDER BY {listed}")
    return tables


def served(sb: Sandbox, prefix: str) -> int:
    return sb.studip.request_count(f"GET {prefix}")  # type: ignore[attr-defined]


def test_the_listing_builds_the_same_tables_as_the_crawl_with_far_fewer_requests(
    instance: dg.DagsterInstance, sb: Sandbox, tmp_path: Path
) -> None:
    crawled = WarehouseResource(path=str(tmp_path / "crawl.duckdb"))
    listed = WarehouseResource(path=str(tmp_path / "listing.duckdb"))
    crawl = materialize(instance, crawled, studip_for(sb, api_mode="rest"), FULL)
    assert crawl.success
    crawl_requests = metadata(crawl)["requests"]
    sb.studip.counts.clear()

    result = materialize(
        instance, listed, studip_for(sb, api_mode="auto", listing_page_size=20), FULL
    )
    assert result.success
    numbers = metadata(result)
    assert numbers["api_mode"] == "jsonapi" and "root" in numbers["api_mode_reason"]
    assert numbers["crawl"] == "listing-full"
    assert state(listed) == state(crawled)
    assert all(state(listed)[table] for table in STATE_TABLE_NAMES), "nothing empty"

    # the crawl reads courses per user and semester and members per course; the listing not
    assert served(sb, "/api.php/user/:user_id/courses") == 0
    assert served(sb, "/api.php/course/:course_id/members") == 0
    assert numbers["requests"] < crawl_requests * 0.75
    # every page landed raw, one row per page, with its request parameters
    (pages,) = query(
        listed,
        "SELECT count(*) FROM raw_studip_pages WHERE sync_key = ? AND request_key LIKE "
        "'/jsonapi.php/v1/users?include=course-memberships'",
        [FULL],
    )
    assert pages[0] == served(sb, "/jsonapi.php/v1/users") - served(sb, "/jsonapi.php/v1/users/")
    params = query(
        listed,
        "SELECT request_params->>'page[offset]', request_params->>'route' FROM raw_studip_pages "
        "WHERE request_key LIKE '/jsonapi.php/v1/users%' ORDER BY page_nr LIMIT 2",
    )
    assert params == [("0", "jsonapi:/users"), ("18", "jsonapi:/users")]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_jsonapi_falls_back_to_the_crawl_with_a_log_line(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox, status: int
) -> None:
    sb.studip.jsonapi_refusal = status  # type: ignore[attr-defined]
    try:
        result = materialize(instance, warehouse, studip_for(sb, api_mode="auto"), FULL)
    finally:
        sb.studip.jsonapi_refusal = None  # type: ignore[attr-defined]
    assert result.success
    numbers = metadata(result)
    assert numbers["api_mode"] == "rest" and f"status {status}" in numbers["api_mode_reason"]
    assert served(sb, "/api.php/course/:course_id/members") > 0, "crawled"
    logs = [
        event.message
        for event in instance.all_logs(result.run_id)
        if "Stud.IP rest mode" in (event.message or "")
    ]
    assert logs and f"status {status}" in logs[0]


def test_a_non_root_account_crawls_in_auto_and_fails_in_jsonapi_mode(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    sb.studip.api_account_is_root = False  # type: ignore[attr-defined]
    try:
        forced = materialize(instance, warehouse, studip_for(sb, api_mode="jsonapi"), FULL)
        auto = materialize(instance, warehouse, studip_for(sb, api_mode="auto"), FULL)
    finally:
        sb.studip.api_account_is_root = True  # type: ignore[attr-defined]
    assert not forced.success
    error = forced.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "needs root" in error.to_string()
    # auto crawls instead, saying why (and the crawl then says the account must be root)
    logs = [e.message or "" for e in instance.all_logs(auto.run_id)]
    assert any("Stud.IP rest mode: the account is 'autor'" in line for line in logs)
    error = auto.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "must be root" in error.to_string()


def test_an_interrupted_listing_lands_nothing(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    studip = studip_for(sb, api_mode="jsonapi", listing_page_size=10, retry_attempts=1)
    assert materialize(instance, warehouse, studip, FULL).success
    before = state(warehouse)
    (pages,) = query(warehouse, "SELECT count(*) FROM raw_studip_pages")
    # /users/me twice, the first listing pages, then errors (no retries): a listing half done
    script = ("ok",) * 5 + ("error",) * 30
    sb.studip.faults.configure(FaultConfig(script=script, path_filter="/jsonapi.php/v1/users"))
    failed = materialize(instance, warehouse, studip, FULL2)
    assert not failed.success
    assert query(warehouse, "SELECT count(*) FROM raw_studip_pages") == [pages]
    assert query(warehouse, "SELECT count(*) FROM raw_studip_pages WHERE sync_key = ?",
                 [FULL2]) == [(0,)]  # fmt: skip
    assert state(warehouse) == before


def test_an_incremental_listing_lands_stud_ip_only_changes_like_a_full_one(
    instance: dg.DagsterInstance, sb: Sandbox, tmp_path: Path
) -> None:
    """A new user in a course, a changed e-mail, a removed membership: the incremental
    listing's tables equal a fresh full listing's, reading only the changed users in full."""
    from sandbox.world import StudipUser

    incremental = WarehouseResource(path=str(tmp_path / "incremental.duckdb"))
    studip = studip_for(sb, api_mode="auto", listing_page_size=25)
    assert materialize(instance, incremental, studip, FULL).success
    world = sb.world
    with world.lock:
        course_id, members = next(
            (c, m) for c, m in sorted(world.memberships.items()) if len(m) >= 3
        )
        leaving, changed = sorted(members)[:2]
        world.drop(course_id, leaving)
        world.studip_users[changed].email = "changed@tu-sandbox.at"
        template = world.studip_users[sorted(members)[2]]
        new = StudipUser("f" * 32, "newcomer", template.pid, "autor", "new@tu-sandbox.at",
                         {}, list(template.institute_ids))  # fmt: skip
        world.studip_users[new.user_id] = new
        world.enrol(course_id, new.user_id, "autor")
    try:
        sb.studip.counts.clear()
        result = materialize(instance, incremental, studip, INCR)
        assert result.success
        numbers = metadata(result)
        assert numbers["crawl"] == "listing-incremental"
        reads = sb.studip.counts.get("GET /api.php/user/:user_id", 0)  # type: ignore[attr-defined]
        assert reads == 2, "only the new user and the one with the changed e-mail"
        fresh = WarehouseResource(path=str(tmp_path / "fresh.duckdb"))
        assert materialize(instance, fresh, studip, FULL2).success
        assert state(incremental) == state(fresh)
        emails = dict(query(incremental, "SELECT user_id, email FROM studip_users"))
        assert emails[changed] == "changed@tu-sandbox.at" and emails[new.user_id]
        assert (course_id, leaving) not in {
            row for row in query(incremental, "SELECT course_id, user_id FROM studip_memberships")
        }
    finally:
        with world.lock:
            world.drop(course_id, new.user_id)
            del world.studip_users[new.user_id]
