"""Stud.IP's listing mode (the JSON:API) against the sandbox: the same studip_* tables as the
crawl, the fallback to the crawl, nothing landed by an interrupted listing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.studip import STATE_TABLES
from assets.studip.listing import RefreshSlice, listing_pages
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
from tests.instances import ephemeral_instance

EPOCH = date(1970, 1, 1)
INCR_LATER = "incr-20261123T113000Z"  # between INCR and FULL2

# every table studip_current_state builds: a table added there is compared here too
STATE_TABLE_NAMES = [table.name for table in STATE_TABLES]


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with ephemeral_instance() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, [FULL, INCR, INCR_LATER, FULL2])
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
    # every page landed raw, one row per page, with its request parameters, compressed
    (pages,) = query(
        listed,
        "SELECT count(*) FROM raw_studip_listing_pages WHERE sync_key = ? AND request_key LIKE "
        "'/jsonapi.php/v1/users?include=course-memberships'",
        [FULL],
    )
    assert pages[0] == served(sb, "/jsonapi.php/v1/users") - served(sb, "/jsonapi.php/v1/users/")
    assert query(listed, "SELECT count(*) FROM raw_studip_pages WHERE request_key LIKE "
                 "'/jsonapi.php/%'") == [(0,)]  # fmt: skip
    with duckdb.connect(str(Path(listed.path)), read_only=True) as conn:
        bodies = [json.loads(body) for key, _, body in listing_pages(conn, FULL)
                  if key.startswith("/jsonapi.php/v1/users?")]  # fmt: skip
        sizes = conn.execute(
            "SELECT sum(body_bytes), sum(octet_length(body_zlib)) FROM raw_studip_listing_pages"
        ).fetchone()
    listed_ids = {user["id"] for body in bodies for user in body["data"]}
    assert listed_ids == set(sb.world.studip_users), "the bodies as the sandbox sent them"
    assert sizes is not None and sizes[1] * 5 < sizes[0], "stored compressed"
    params = query(
        listed,
        "SELECT request_params->>'page[offset]', request_params->>'route' "
        "FROM raw_studip_listing_pages "
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
    counts = (
        "SELECT (SELECT count(*) FROM raw_studip_pages), count(*) FROM raw_studip_listing_pages"
    )
    (pages,) = query(warehouse, counts)
    assert pages[1] > 0
    # /users/me twice, the first listing pages, then errors (no retries): a listing half done
    script = ("ok",) * 5 + ("error",) * 30
    sb.studip.faults.configure(FaultConfig(script=script, path_filter="/jsonapi.php/v1/users"))
    failed = materialize(instance, warehouse, studip, FULL2)
    assert not failed.success
    assert query(warehouse, counts) == [pages]
    for table in ("raw_studip_pages", "raw_studip_listing_pages"):
        assert query(warehouse, f"SELECT count(*) FROM {table} WHERE sync_key = ?",
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


@pytest.mark.parametrize("refresh_days", [1, 3650])
def test_a_full_listing_reads_in_full_only_changed_users_and_the_days_refresh_slice(
    instance: dg.DagsterInstance, sb: Sandbox, tmp_path: Path, refresh_days: int
) -> None:
    """Stud.IP has no bulk route for datafields and institutes (two requests per user): a full
    listing over stored state reads them for the users whose listed fields changed and for the
    day's share of the others (all of them with STUDIP_DETAILS_REFRESH_DAYS=1)."""
    warehouse = WarehouseResource(path=str(tmp_path / "warm.duckdb"))
    studip = studip_for(sb, api_mode="jsonapi", details_refresh_days=refresh_days)
    assert materialize(instance, warehouse, studip, FULL).success
    kept = sorted(user_id for (user_id,) in query(warehouse, "SELECT user_id FROM studip_users"))
    refresh = RefreshSlice(refresh_days, (parse_sync_key(FULL2).started_at.date() - EPOCH).days)
    covered = [u for u in kept if refresh.covers(u)]
    others = [u for u in kept if not refresh.covers(u) and u in sb.world.studip_users]
    assert others or refresh_days == 1
    # a datafield-only change (nothing the listing shows) and a changed e-mail (it shows)
    quiet, loud = (others or kept)[0], kept[-1]
    world = sb.world
    with world.lock:
        saved = (dict(world.studip_users[quiet].datafields), world.studip_users[loud].email)
        world.studip_users[quiet].datafields["Matrikelnummer"] = "99999999"
        world.studip_users[loud].email = "loud@tu-sandbox.at"
    try:
        sb.studip.counts.clear()
        result = materialize(instance, warehouse, studip, FULL2)
        assert result.success
        assert metadata(result)["crawl"] == "listing-full"
        counts = sb.studip.counts  # type: ignore[attr-defined]
        users_read = counts.get("GET /api.php/user/:user_id", 0) + counts.get(
            "GET /api.php/user", 0
        )
        assert users_read == len(set(covered) | {loud})
        assert counts.get("GET /api.php/user/:user_id/institutes", 0) == users_read
        stored = dict(
            query(warehouse, "SELECT user_id, datafields['Matrikelnummer'] FROM studip_users")
        )
        assert (stored[quiet] == "99999999") is (refresh_days == 1)
        assert dict(query(warehouse, "SELECT user_id, email FROM studip_users"))[loud] == (
            "loud@tu-sandbox.at"
        )
    finally:
        with world.lock:
            world.studip_users[quiet].datafields.clear()
            world.studip_users[quiet].datafields.update(saved[0])
            world.studip_users[loud].email = saved[1]


def test_with_studip_relist_every_incremental_syncs_list_every_nth_time_and_crawl_between(
    instance: dg.DagsterInstance, sb: Sandbox, tmp_path: Path
) -> None:
    """STUDIP_RELIST_EVERY=2: the first incremental sync after the full listing crawls the
    users CO or the LMS changed (no JSON:API request, a Stud.IP-only change waits), the next
    one lists and sees it."""
    warehouse = WarehouseResource(path=str(tmp_path / "relist.duckdb"))
    studip = studip_for(sb, api_mode="auto", listing_page_size=25, relist_every=2)
    assert metadata(materialize(instance, warehouse, studip, FULL))["crawl"] == "listing-full"
    world = sb.world
    with world.lock:
        user_id = sorted(u for u in world.studip_users if world.studip_users[u].email)[0]
        before = world.studip_users[user_id].email
        world.studip_users[user_id].email = "relisted@tu-sandbox.at"
    try:
        sb.studip.counts.clear()
        crawled = materialize(instance, warehouse, studip, INCR)
        assert crawled.success
        numbers = metadata(crawled)
        assert numbers["crawl"] == "incremental" and numbers["jsonapi_requests"] == 1  # /users/me
        assert "STUDIP_RELIST_EVERY" in numbers["listing"]
        emails = dict(query(warehouse, "SELECT user_id, email FROM studip_users"))
        assert emails[user_id] == before, "a Stud.IP-only change waits for the next listing"
        listed = materialize(instance, warehouse, studip, INCR_LATER)
        assert listed.success
        assert metadata(listed)["crawl"] == "listing-incremental"
        emails = dict(query(warehouse, "SELECT user_id, email FROM studip_users"))
        assert emails[user_id] == "relisted@tu-sandbox.at"
    finally:
        with world.lock:
            world.studip_users[user_id].email = before
