"""CAMPUSonline raw landing, sync logic and current state against the sandbox (real HTTP)."""

import json
from collections.abc import Iterator
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from assets.campusonline import (
    co_current_state,
    co_raw_pages,
    model_columns,
    rebuild_current_state,
    stage_sync,
)
from assets.partitions import sync_runs_partitions
from assets.sync import build_sync_summary, sync_run
from resources.campusonline import SERVICES, CampusOnlineResource
from resources.warehouse import WarehouseResource, raw_page_bodies, transaction
from sandbox.http import FaultConfig
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance

sync_summary = build_sync_summary([co_raw_pages, co_current_state])
FULL = "full-20261123T020000Z"
INCR = "incr-20261123T021500Z"
INCR2 = "incr-20261123T023000Z"
INCR3 = "incr-20261123T024500Z"
FULL2 = "full-20261124T020000Z"
KEYS = [FULL, INCR, INCR2, INCR3, FULL2, "full-20261123T030000Z", "incr-20261123T031500Z"]
CO_ASSETS = [sync_run, co_raw_pages, co_current_state, sync_summary]
VIEW_PERIOD_S = 900


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with ephemeral_instance() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, KEYS)
        yield instance


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox(port_base=0, world=World(11, 80, today=date(2026, 11, 23))) as sb:
        yield sb


def co_resource(sb: Sandbox, **overrides: Any) -> CampusOnlineResource:
    config: dict[str, Any] = {
        "api_url": sb.env["CO_API_URL"],
        "client_id": "hubsync",
        "client_secret": "sandbox-co-secret",
        **overrides,
    }
    return CampusOnlineResource(**config)


def sync(
    instance: dg.DagsterInstance,
    warehouse: WarehouseResource,
    resource: CampusOnlineResource,
    key: str,
    assets: list[Any] = CO_ASSETS,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        partition_key=key,
        instance=instance,
        resources={"warehouse": warehouse, "campusonline": resource},
        raise_on_error=False,
    )


def query(warehouse: WarehouseResource, sql: str, params: list[Any] | None = None) -> list[Any]:
    with warehouse.connection() as conn:
        return conn.execute(sql, params or []).fetchall()


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, dict[str, Any]]:
    return {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node(node)
    }


def world_matches_current_state(sb: Sandbox, warehouse: WarehouseResource) -> None:
    world = sb.world
    with world.lock:
        students = {
            nr: (world.persons[s.pid].family, s.email_tu, s.exmat_date)
            for nr, s in world.co_students.items()
        }
        studies = {nr: (s.status_key, s.exmat_date) for nr, s in world.co_studies.items()}
        applications = set(world.co_applications)
    current = query(
        warehouse,
        "SELECT STPERSONNR, FAMILYNAME, EMAILADDRESSTU, EXMATRICULATIONDATE FROM co_students",
    )
    assert {row[0]: tuple(row[1:]) for row in current} == students
    current = query(
        warehouse, "SELECT STSTUDIUMNR, STUDYSTATUSKEY, STUDYEXMATRICULATIONDATE FROM co_studies"
    )
    assert {row[0]: tuple(row[1:]) for row in current} == studies
    assert {r[0] for r in query(warehouse, "SELECT BEWERBUNGNR FROM co_applications")} == (
        applications
    )


def next_view_refresh(sb: Sandbox) -> None:
    """Move the world clock just past the next 15-minute view refresh."""
    now = sb.world.clock.now().timestamp()
    sb.world.clock.advance(VIEW_PERIOD_S - now % VIEW_PERIOD_S + 1)


def test_full_then_incremental_sync_end_to_end(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    resource = co_resource(sandbox)
    next_view_refresh(sandbox)  # the world's records are in the view
    full = sync(instance, warehouse, resource, FULL)
    assert full.success
    world_matches_current_state(sandbox, warehouse)
    raw = metadata(full, "co_raw_pages")
    assert set(raw) == {"raw_co_students", "raw_co_studies", "raw_co_applications"}
    students_meta = raw["raw_co_students"]
    assert students_meta["mode"] == "full"
    assert students_meta["records"] == len(sandbox.world.co_students)
    assert students_meta["pages"] == 2  # active and inactive call, one short page each
    # kept compressed, and as received: the rows of the world
    assert query(
        warehouse,
        "SELECT count(*) FROM raw_co_students WHERE sync_key = ? AND body IS NULL "
        "AND octet_length(body_zlib) * 3 < body_bytes",
        [FULL],
    ) == [(2,)]
    with warehouse.connection() as conn:
        landed = [json.loads(body) for _, _, body in raw_page_bodies(conn, "raw_co_students", FULL)]
    ids = {
        row["content"]["DMSStudents"]["STPERSONNR"] for page in landed for row in page["resource"]
    }
    assert len(ids) == len(sandbox.world.co_students)
    for name in ("requests", "bytes", "duration_s", "changed_students"):
        assert name in students_meta
    assert students_meta["requests"] == sandbox.co.request_count(
        "/pl/rest/"
    ) + sandbox.co.request_count("wbOAuth2.token")
    current = metadata(full, "co_current_state")["co_students"]
    assert current["dagster/row_count"] == len(sandbox.world.co_students)
    assert current["quarantined"] == 0 and current["mode"] == "full"
    assert {c.name for c in current["dagster/column_schema"].columns} >= {
        "STPERSONNR", "IDENTNROBFUSCATED", "STUDID", "EMAILADDRESSTU", "GIVENNAME",
        "FAMILYNAME", "BIRTHDATE", "GENDERKEY", "EXMATRICULATIONDATE", "changed_in_sync",
    }  # fmt: skip
    assert "Mustermann" not in json.dumps(raw, default=str)
    assert query(warehouse, "SELECT DISTINCT changed_in_sync FROM co_students") == [(FULL,)]
    # the view rows' refresh instant is the LastSyncDate, per type
    (cursor,) = query(
        warehouse,
        "SELECT effective_mode, last_sync_students, last_sync_studies, last_sync_applications "
        "FROM co_sync_cursor WHERE sync_key = ?",
        [FULL],
    )
    assert cursor[0] == "full" and cursor[1] is not None and cursor[1] == cursor[2] == cursor[3]

    step = sandbox.world.step(seed=5)
    changed_requests_before = sandbox.co.request_count("/pl/rest/")
    incremental = sync(instance, warehouse, resource, INCR)
    assert incremental.success
    world_matches_current_state(sandbox, warehouse)
    raw = metadata(incremental, "co_raw_pages")["raw_co_students"]
    assert raw["mode"] == "incremental"
    assert 0 < raw["changed_students"] < len(sandbox.world.co_students)
    # three delta calls plus two or three calls per changed student, nothing else
    calls = sandbox.co.request_count("/pl/rest/") - changed_requests_before
    assert 3 + 2 * raw["changed_students"] <= calls <= 3 + 3 * raw["changed_students"]
    (used,) = query(warehouse, "SELECT watermarks FROM sync_runs WHERE key = ?", [INCR])[0]
    assert json.loads(used)["co"]["last_sync_used"]["students"] == cursor[1].isoformat()
    renamed = {int(i) for i in step.changes.get("co_name_change", [])}
    changed = {
        r[0]
        for r in query(
            warehouse, "SELECT STPERSONNR FROM co_students WHERE changed_in_sync = ?", [INCR]
        )
    }
    assert renamed <= changed
    assert 0 < len(changed) <= raw["changed_students"]


def test_records_absent_from_a_full_sync_are_gone(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    resource = co_resource(sandbox)
    assert sync(instance, warehouse, resource, FULL).success
    sandbox.world.step(seed=9, include_deletes=True)
    next_view_refresh(sandbox)
    assert sync(instance, warehouse, resource, FULL2).success
    world_matches_current_state(sandbox, warehouse)


def test_too_many_changed_students_fall_back_to_a_full_sync(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    assert sync(instance, warehouse, co_resource(sandbox), FULL).success
    sandbox.world.step(seed=3)
    result = sync(instance, warehouse, co_resource(sandbox, incremental_threshold=1), INCR)
    assert result.success
    raw = metadata(result, "co_raw_pages")["raw_co_students"]
    assert raw["mode"] == "fallback" and raw["changed_students"] > 1
    assert query(warehouse, "SELECT effective_mode FROM sync_runs WHERE key = ?", [INCR]) == [
        ("fallback",)
    ]
    assert query(
        warehouse, "SELECT effective_mode FROM co_sync_cursor WHERE sync_key = ?", [INCR]
    ) == [("fallback",)]
    request_keys = {
        r[0]
        for r in query(
            warehouse, "SELECT DISTINCT request_key FROM raw_co_students WHERE sync_key = ?", [INCR]
        )
    }
    assert request_keys == {"students:delta", "students:active", "students:inactive"}
    world_matches_current_state(sandbox, warehouse)
    # the state is the fallback's full snapshot, not the previous full one
    assert (
        query(warehouse, "SELECT count(*) FROM co_students WHERE changed_in_sync = ?", [INCR])[0][0]
        > 0
    )


def test_a_view_row_never_overrides_a_newer_live_row_across_three_syncs(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    resource = co_resource(sandbox)
    world = sandbox.world
    next_view_refresh(sandbox)
    assert sync(instance, warehouse, resource, FULL).success
    # an application changes, the view refreshes, and the next sync sees it as a view row:
    # the student is re-read live, which fills the live maps with newer timestamps
    with world.lock:
        application = next(iter(world.co_applications.values()))
        application.start_semester = "27S"
        application.modified_at = world.clock.now()
    person = application.stpersonnr
    next_view_refresh(sandbox)
    assert sync(instance, warehouse, resource, INCR).success
    assert (
        query(
            warehouse,
            "SELECT count(*) FROM raw_co_studies WHERE sync_key = ? AND request_key = ?",
            [INCR, f"studies:person:{person}"],
        )[0][0]
        == 1
    )
    (live,) = query(
        warehouse, "SELECT live_applications FROM co_sync_cursor WHERE sync_key = ?", [INCR]
    )[0]
    assert str(application.bewerbungnr) in json.loads(live)
    # before the next refresh the delta returns the same (older) view row again: suppressed
    sandbox.world.clock.advance(60)
    third = sync(instance, warehouse, resource, INCR2)
    assert third.success
    delta = query(
        warehouse,
        "SELECT record_count FROM raw_co_applications WHERE sync_key = ? AND request_key = ?",
        [INCR2, "applications:delta"],
    )
    assert delta == [(1,)]  # it came back...
    assert metadata(third, "co_raw_pages")["raw_co_students"]["changed_students"] == 0
    person_pages = query(
        warehouse,
        "SELECT count(*) FROM raw_co_studies WHERE sync_key = ? AND request_key LIKE '%:person:%'",
        [INCR2],
    )
    assert person_pages == [(0,)]  # ...but was not processed
    assert query(
        warehouse,
        "SELECT APPLICANTSTARTOFSTUDY, changed_in_sync FROM co_applications WHERE BEWERBUNGNR = ?",
        [application.bewerbungnr],
    ) == [("27S", INCR)]


def test_an_exactly_full_last_page_is_followed_by_an_empty_one(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    applications = len(sandbox.world.co_applications)
    page_size = next(n for n in range(3, applications) if applications % n == 0)
    result = sync(instance, warehouse, co_resource(sandbox, page_size=page_size), FULL)
    assert result.success
    pages = query(
        warehouse,
        "SELECT page_nr, record_count, request_params->>'PageNr' FROM raw_co_applications "
        "WHERE sync_key = ? ORDER BY page_nr",
        [FULL],
    )
    full_pages = applications // page_size
    assert [p[1] for p in pages] == [page_size] * full_pages + [0]
    assert [p[0] for p in pages] == [int(p[2]) for p in pages] == list(range(1, full_pages + 2))
    students = query(
        warehouse,
        "SELECT request_key, count(*) FROM raw_co_students WHERE sync_key = ? GROUP BY ALL",
        [FULL],
    )
    assert all(count > 1 for _, count in students)  # every list call is paged
    world_matches_current_state(sandbox, warehouse)


def test_a_student_deleted_between_delta_and_fetch_is_skipped(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    resource = co_resource(sandbox)
    world = sandbox.world
    assert sync(instance, warehouse, resource, FULL).success
    with world.lock:
        application = next(iter(world.co_applications.values()))
        application.modified_at = world.clock.now()  # in the applications delta...
        del world.co_students[application.stpersonnr]  # ...but the student is gone
    result = sync(instance, warehouse, resource, INCR)
    assert result.success
    raw = metadata(result, "co_raw_pages")["raw_co_students"]
    assert raw["vanished_students"] == 1 and raw["processed_students"] == 0
    # not deleted by an incremental sync; the next full sync removes it
    assert query(
        warehouse, "SELECT count(*) FROM co_students WHERE STPERSONNR = ?", [application.stpersonnr]
    ) == [(1,)]


def test_a_failed_sync_advances_nothing_and_a_rerun_replaces_its_pages(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    resource = co_resource(sandbox, retry_attempts=1)
    assert sync(instance, warehouse, resource, FULL).success
    pages_before = query(
        warehouse, "SELECT count(*) FROM raw_co_students WHERE sync_key = ?", [FULL]
    )
    sandbox.world.step(seed=4)
    # the studies delta fails after the students and applications deltas landed
    sandbox.co.faults.configure(FaultConfig(script=["error"] * 3, path_filter="dmsstudies"))
    failed = sync(instance, warehouse, resource, INCR)
    assert not failed.success
    for table in ("raw_co_students", "raw_co_studies", "raw_co_applications", "stg_co_students"):
        assert query(warehouse, f"SELECT count(*) FROM {table} WHERE sync_key = ?", [INCR]) == [
            (0,)
        ]
    assert query(warehouse, "SELECT count(*) FROM co_sync_cursor WHERE sync_key = ?", [INCR]) == [
        (0,)
    ]
    assert query(warehouse, "SELECT DISTINCT changed_in_sync FROM co_students") == [(FULL,)]
    # the next run retries from the same cursor and succeeds
    sandbox.co.faults.configure(FaultConfig())
    assert sync(instance, warehouse, resource, INCR).success
    world_matches_current_state(sandbox, warehouse)
    # re-running a key replaces its pages instead of adding to them
    assert sync(instance, warehouse, resource, FULL).success
    assert (
        query(warehouse, "SELECT count(*) FROM raw_co_students WHERE sync_key = ?", [FULL])
        == pages_before
    )


def test_transient_http_errors_are_retried_within_the_sync(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    sandbox.co.faults.configure(FaultConfig(script=["error", "ok", "error"]))
    result = sync(instance, warehouse, co_resource(sandbox), FULL)
    assert result.success
    assert metadata(result, "co_raw_pages")["raw_co_students"]["retries"] == 2
    world_matches_current_state(sandbox, warehouse)


def test_an_expired_token_is_refreshed(sandbox: Sandbox) -> None:
    with co_resource(sandbox).client() as client:
        assert list(client.rows(SERVICES["students"], filter=("StPersonNr", 0))) == []
        sandbox.world.clock.advance(3601)  # tokens live an hour of world time
        assert list(client.rows(SERVICES["applications"], filter=("StPersonNr", 0))) == []
    assert sandbox.co.request_count("wbOAuth2.token") == 2


def test_malformed_rows_are_quarantined_with_their_reason(warehouse: WarehouseResource) -> None:
    good = {
        "SOURCE": "DMSView",
        "TIMESTAMP": "13.06.2024T12:01:15",
        "BEWERBUNGNR": 1,
        "STPERSONNR": 7,
        "STSTUDIUMNR": None,
        "APPLICANTSTARTOFSTUDY": "21W",
        "APPLICANTSTUDYTYPE": "Bachelorstudium",
        "APPLICANTSTUDYNAME": "Bachelorstudium; Physik",
        "APPLICANTSTUDYKEY": "UF 033 678",
        "APPLICANTQUALIFICATIONTYPE": "25 - ausländische Reifeprüfung",
        "APPLICANTQUALIFICATIONDATE": {"value": None},
        "APPLICANTQUALIFICATIONSTATENR": None,
        "APPLICANTQUALIFICATIONSTATE": None,
    }
    rows = [
        good,
        {**good, "BEWERBUNGNR": 2, "STPERSONNR": "7"},
        {**good, "BEWERBUNGNR": 3, "TIMESTAMP": "31.02.2024T12:00:00"},
    ]
    body = {
        "type": "resources",
        "resource": [{"content": {"type": "x", "DMSApplicants": row}} for row in rows],
    }
    with warehouse.connection() as conn:
        conn.execute(
            "INSERT INTO raw_co_applications (sync_key, request_key, page_nr, request_params, "
            "fetched_at, record_count, body) VALUES (?, 'applications', 1, '{}', now(), 3, ?)",
            [FULL, json.dumps(body)],
        )
        counts = stage_sync(conn, FULL, ZoneInfo("Europe/Vienna"))
        quarantined = conn.execute(
            "SELECT record_type, record_key, reason FROM quarantine WHERE sync_key = ? "
            "ORDER BY record_key",
            [FULL],
        ).fetchall()
        staged = conn.execute('SELECT BEWERBUNGNR, "TIMESTAMP" FROM stg_co_applications').fetchall()
    assert counts["applications"].rows == 1 and counts["applications"].quarantined == 2
    assert [(t, k) for t, k, _ in quarantined] == [("application", "2"), ("application", "3")]
    assert "STPERSONNR" in quarantined[0][2]
    assert "timestamp" in quarantined[1][2].lower()
    assert staged[0][0] == 1 and staged[0][1].isoformat() == "2024-06-13T10:01:15+00:00"


def test_table_columns_match_the_row_models(warehouse: WarehouseResource) -> None:
    with warehouse.connection() as conn:
        for code, service in SERVICES.items():
            columns = [
                name
                for (name,) in conn.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                    "ORDER BY column_index",
                    [f"co_{code}"],
                ).fetchall()
            ]
            assert columns == [*model_columns(service), "row_hash", "changed_in_sync"]


def _current_tables(warehouse: WarehouseResource) -> dict[str, list[Any]]:
    return {
        table: query(warehouse, f"SELECT * FROM {table} ORDER BY ALL")
        for table in ("co_students", "co_studies", "co_applications")
    }


def test_an_incremental_sync_overlays_its_rows_and_equals_a_rebuild(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    """The O(changes) path: after each incremental sync the tables equal what rebuilding the
    chain from the full sync gives, changed_in_sync included; a re-run rebuilds."""
    resource = co_resource(sandbox, incremental_threshold=1000)
    next_view_refresh(sandbox)
    first = sync(instance, warehouse, resource, FULL)
    assert metadata(first, "co_current_state")["co_students"]["build"] == "rebuild"
    noted = query(warehouse, "SELECT kind, id FROM graph_changes WHERE kind = 'rebuild'")
    assert ("rebuild", f"a full CAMPUSonline sync ({FULL})") in noted
    query(warehouse, "DELETE FROM graph_changes RETURNING kind")  # as hub_desired consumes it
    for key in (INCR, INCR2, INCR3):
        sandbox.world.step(scale=3.0)
        next_view_refresh(sandbox)
        result = sync(instance, warehouse, resource, key)
        current = metadata(result, "co_current_state")
        assert current["co_students"]["build"] == "overlay"
        assert current["co_students"]["changed_rows"] > 0
        changed = query(
            warehouse,
            "SELECT 'co_student', STPERSONNR::VARCHAR FROM co_students WHERE changed_in_sync = ?",
            [key],
        )
        noted = query(warehouse, "DELETE FROM graph_changes RETURNING kind, id")
        assert set(changed) == set(noted), "noted for the next hub_desired build"
        overlaid = _current_tables(warehouse)
        with warehouse.connection() as conn, transaction(conn):
            conn.execute("DELETE FROM co_current_built")
            build, _ = rebuild_current_state(conn, key)
            conn.execute("DELETE FROM graph_changes")  # what this rebuild noted again
        assert build == "rebuild"
        assert _current_tables(warehouse) == overlaid
    world_matches_current_state(sandbox, warehouse)
    rerun = sync(instance, warehouse, resource, INCR3, assets=[co_current_state])
    assert metadata(rerun, "co_current_state")["co_students"]["build"] == "rebuild"
    assert _current_tables(warehouse) == overlaid


def test_a_full_sync_that_failed_after_its_state_was_built_is_rebuilt_over(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox
) -> None:
    """The tables held the failed full sync's snapshot (its own base); the incremental sync
    after it is built on the last successful full sync, so it rebuilds."""
    resource = co_resource(sandbox, incremental_threshold=1000)
    assert sync(instance, warehouse, resource, FULL).success
    assert sync(instance, warehouse, resource, FULL2.replace("20261124T02", "20261123T03")).success
    with warehouse.connection() as conn:
        conn.execute("UPDATE sync_runs SET status = 'failed' WHERE key LIKE 'full-20261123T03%'")
    sandbox.world.step()
    next_view_refresh(sandbox)
    result = sync(instance, warehouse, resource, "incr-20261123T031500Z")
    assert metadata(result, "co_current_state")["co_students"]["build"] == "rebuild"
