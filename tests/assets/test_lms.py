"""LMS assets against the sandbox LMS over real HTTP: raw landing, the fromDate watermark and the
current state (lms_registrations, lms_courses, lms_learners)."""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
import requests

from assets.lms import (
    STATE_TABLES,
    land_registrations,
    lms_current_state,
    lms_registration_pages,
    update_current_state,
)
from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import build_sync_summary, open_sync_run, sync_run
from pipelines.definitions import build_definitions
from resources.lms import LmsClient, LmsResource
from resources.settings import load_settings
from resources.warehouse import WarehouseResource
from sandbox.http import FaultConfig
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance

sync_summary = build_sync_summary([lms_registration_pages, lms_current_state])
FULL = "full-20261123T020000Z"
INCR = "incr-20261123T021500Z"
INCR2 = "incr-20261123T023000Z"
FULL2 = "full-20261124T020000Z"
KEYS = [FULL, INCR, INCR2, FULL2]
RAW_ASSETS = ("raw_lms_active_registrations", "raw_lms_completed_registrations")
LMS_ASSETS = [sync_run, lms_registration_pages, lms_current_state, sync_summary]
# Most tests run the assets' functions directly (`Syncer.direct`): a Dagster run costs seconds.


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=11, students=120, today=date(2026, 11, 23))
    with running_sandbox(port_base=0, world=world) as sb:
        yield sb


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with ephemeral_instance() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, KEYS)
        yield instance


def lms_for(sb: Sandbox, **options: Any) -> LmsResource:
    settings = load_settings(sb.env).lms
    options = {"page_size": 25, "retry_attempts": 2, "retry_backoff_s": 0.0, **options}
    return LmsResource(
        api_url=settings.api_url,
        username=settings.username,
        password=settings.password.get_secret_value(),
        org_path=settings.org_path,
        **options,
    )


@dataclass
class Syncer:
    instance: dg.DagsterInstance
    warehouse: WarehouseResource
    sb: Sandbox
    options: dict[str, Any]

    def __call__(self, key: str, **options: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            LMS_ASSETS,
            partition_key=key,
            instance=self.instance,
            resources={
                "lms": lms_for(self.sb, **{**self.options, **options}),
                "warehouse": self.warehouse,
            },
            raise_on_error=False,
        )

    def direct(self, key: str, **options: Any) -> dict[str, Any]:
        """The same sync without Dagster (fast): what the two assets run, in order; returns
        the numbers the assets report (per endpoint, and the current state's)."""
        sync = parse_sync_key(key)
        resource = lms_for(self.sb, **{**self.options, **options})
        with self.warehouse.connection() as conn, resource.client() as client:
            open_sync_run(conn, key, sync.mode, datetime.now(UTC))
            landings = land_registrations(conn, client, key)
            _, numbers = update_current_state(conn, key)
        return {**{landing.endpoint: landing for landing in landings}, "state": numbers}

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.warehouse.connection() as conn:
            return conn.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        return self.query(sql, params)[0][0]


@pytest.fixture
def sync(instance: dg.DagsterInstance, warehouse: WarehouseResource, sandbox: Sandbox) -> Syncer:
    return Syncer(instance, warehouse, sandbox, {})


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for node in ("lms_registration_pages", "lms_current_state"):
        for event in result.asset_materializations_for_node(node):
            if event.asset_key == dg.AssetKey(asset):
                return {k: v.value for k, v in event.metadata.items()}
    raise AssertionError(f"no materialization of {asset}")


def world_registrations(sb: Sandbox) -> dict[str, int]:
    with sb.world.lock:
        return {r.registration_id: r.status for r in sb.world.lms_registrations.values()}


def state(sync: Syncer) -> dict[str, tuple[str, str]]:
    rows = sync.query(
        "SELECT RegistrationId, RegistrationStatusName, changed_in_sync FROM lms_registrations"
    )
    return {rid: (status, changed) for rid, status, changed in rows}


def landed_ids(sync: Syncer, key: str, endpoint: str) -> list[str]:
    rows = sync.query(
        f"""
        SELECT unnest(from_json(body->'Items', '[{{"RegistrationId": "VARCHAR"}}]')).RegistrationId
        FROM raw_lms_{endpoint}_registrations WHERE sync_key = ?
        """,
        [key],
    )
    return [rid for (rid,) in rows]


def set_watermarks(sync: Syncer, next_from_date: datetime) -> None:
    with sync.warehouse.connection() as conn:
        conn.execute("UPDATE lms_watermarks SET next_from_date = ?", [next_from_date])


STATUS_NAMES = {0: "Pending", 1: "Active", 2: "Completed"}


# -- full sync -------------------------------------------------------------------------------


def test_a_full_sync_lands_every_registration_from_the_beginning_of_time(sync: Syncer) -> None:
    before = datetime.now(UTC)
    result = sync(FULL)
    assert result.success

    world = world_registrations(sync.sb)
    assert {rid: status for rid, (status, _) in state(sync).items()} == {
        rid: STATUS_NAMES[s] for rid, s in world.items()
    }
    assert {changed for _, changed in state(sync).values()} == {FULL}
    rows = sync.query("SELECT endpoint, from_date, next_from_date FROM lms_watermarks")
    assert sorted(r[0] for r in rows) == ["active", "completed"]
    assert all(r[1] is None and before <= r[2] <= datetime.now(UTC) for r in rows)
    params = sync.query("SELECT DISTINCT request_params FROM raw_lms_active_registrations")
    assert all("fromDate" not in json.loads(p) for (p,) in params)
    recorded = json.loads(sync.scalar("SELECT watermarks FROM sync_runs WHERE key = ?", [FULL]))
    assert recorded["lms"]["active"] == {
        "fromDate": None,
        "nextFromDate": next(r[2] for r in rows if r[0] == "active").isoformat(),
    }

    raw = metadata(result, "raw_lms_completed_registrations")
    assert raw["records"] == sum(1 for s in world.values() if s == 2) + raw["pages"] - 1
    assert raw["duplicates_dropped"] == raw["pages"] - 1  # the one-item page overlap
    assert raw["from_date"] == "beginning of time"
    assert metadata(result, "raw_lms_active_registrations")["logins"] == 1
    assert metadata(result, "lms_registrations")["dagster/row_count"] == len(world)

    summary = json.loads(sync.scalar("SELECT summary FROM sync_runs WHERE key = ?", [FULL]))
    assert summary["raw"]["raw_lms_active_registrations"]["pages"] > 1

    # ids and counts only: no names or e-mails in what Dagster stores
    with sync.sb.world.lock:
        emails = [learner.email for learner in sync.sb.world.lms_learners.values()]
    shown = json.dumps(
        {
            asset: {k: str(v) for k, v in metadata(result, asset).items()}
            for asset in (*RAW_ASSETS, "lms_registrations", "lms_courses", "lms_learners")
        }
    )
    assert "@" not in shown and not any(email in shown for email in emails)


def test_learners_and_courses_follow_the_registrations(sync: Syncer) -> None:
    sync.direct(FULL)
    world = sync.sb.world
    with world.lock:
        logins = {r.login for r in world.lms_registrations.values()}
        courses = {r.course_id for r in world.lms_registrations.values()}
        learners = {login: world.lms_learners[login] for login in logins}
    rows = sync.query(
        "SELECT OrganizationLoginId, EmailAddress, StudentId, OrgProfileFieldValues, "
        "changed_in_sync FROM lms_learners"
    )
    assert {r[0] for r in rows} == logins
    for login, email, student_id, profile, changed in rows:
        learner = learners[login]
        assert email == learner.email
        assert student_id == (learner.profile.get("StudentId") or None)
        assert profile == learner.profile
        assert changed == FULL
    assert {c for (c,) in sync.query("SELECT CourseId FROM lms_courses")} == courses
    with world.lock:
        expected = {
            c.course_id: (c.code, [c.offering_short_id])
            for c in world.lms_courses.values()
            if c.course_id in courses
        }
    got = sync.query("SELECT CourseId, CourseCode, OfferingShortIds FROM lms_courses")
    assert {cid: (code, offerings) for cid, code, offerings in got} == expected


def test_the_student_id_profile_field_is_configurable(sync: Syncer) -> None:
    sync.direct(FULL)
    with sync.warehouse.connection() as conn:
        update_current_state(conn, FULL, student_id_field="UniqueLoginId_is_not_a_field")
        assert conn.execute("SELECT count(StudentId) FROM lms_learners").fetchall()[0][0] == 0
        update_current_state(conn, FULL, student_id_field="StudentId")
        assert conn.execute("SELECT count(StudentId) FROM lms_learners").fetchall()[0][0] > 0


# -- incremental syncs and the watermark -----------------------------------------------------


def test_an_incremental_sync_sends_the_stored_next_from_date(sync: Syncer) -> None:
    sync.direct(FULL)
    stored = dict(sync.query("SELECT endpoint, next_from_date FROM lms_watermarks"))
    sync.direct(INCR)
    used = dict(
        sync.query("SELECT endpoint, from_date FROM lms_watermarks WHERE sync_key = ?", [INCR])
    )
    assert used == stored
    for endpoint in ("active", "completed"):
        (params,) = sync.query(
            f"SELECT request_params FROM raw_lms_{endpoint}_registrations "
            "WHERE sync_key = ? AND page_nr = 0",
            [INCR],
        )[0]
        sent = stored[endpoint].astimezone(UTC)
        assert json.loads(params)["fromDate"] == sent.strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{sent.microsecond // 1000:03d}Z"
        )


def test_late_vessel_completions_are_caught_by_the_next_sync(sync: Syncer) -> None:
    sync.direct(FULL)
    step = sync.sb.world.step(seed=5)
    late = step.changes["late_vessel_completion"]
    assert late
    sync.direct(INCR)

    current = state(sync)
    for rid in late:
        assert current[rid] == ("Completed", INCR)
    completion = dict(
        sync.query(
            "SELECT RegistrationId, CompletionDate FROM lms_registrations "
            f"WHERE RegistrationId IN ({', '.join('?' * len(late))})",
            late,
        )
    )
    # completed days ago on board, synced now: older than the fromDate that found them
    (from_date,) = sync.query(
        "SELECT from_date FROM lms_watermarks WHERE sync_key = ? AND endpoint = 'completed'", [INCR]
    )[0]
    assert all(completion[rid] < from_date - timedelta(days=1) for rid in late)
    for rid in step.changes["retake"]:
        assert current[rid] == ("Active", INCR)
    assert {rid: s for rid, (s, _) in current.items()} == {
        rid: STATUS_NAMES[s] for rid, s in world_registrations(sync.sb).items()
    }


def _current_tables(sync: Syncer) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sync.query(f"SELECT * FROM {table} ORDER BY ALL") for table in STATE_TABLES}


def test_an_incremental_sync_overlays_its_items_and_equals_a_rebuild(sync: Syncer) -> None:
    """The O(changes) path: after each incremental sync the tables equal what rebuilding from
    the full sync gives, changed_in_sync included; a re-run, and a sync whose item moves a
    registration to another learner, rebuild."""
    assert sync.direct(FULL)["state"]["build"] == "rebuild"
    keys = [f"incr-20261123T02{minute}00Z" for minute in (15, 30, 45)]
    for seed, key in enumerate(keys, start=1):
        sync.sb.world.step(seed=seed)
        assert sync.direct(key)["state"]["build"] == "overlay"
        overlaid = _current_tables(sync)
        with sync.warehouse.connection() as conn:
            conn.execute("DELETE FROM lms_current_built")
            _, numbers = update_current_state(conn, key)
        assert numbers["build"] == "rebuild"
        assert _current_tables(sync) == overlaid
    with sync.warehouse.connection() as conn:
        _, numbers = update_current_state(conn, keys[-1])  # a re-run
    assert numbers["build"] == "rebuild"
    assert _current_tables(sync) == overlaid

    # a course gets a second offering: one of its registrations comes back under it, the
    # others keep the first (the course lists both, as a rebuild finds them in its items)
    world = sync.sb.world
    with world.lock:
        registration = sorted(world.lms_registrations.values(), key=lambda r: r.registration_id)[0]
        world.lms_courses[registration.course_id].offering_short_id = "second-offering"
        registration.modified_at = world.clock.now()
    assert sync.direct("incr-20261123T030000Z")["state"]["build"] == "overlay"
    [(offerings,)] = sync.query(
        "SELECT OfferingShortIds FROM lms_courses WHERE CourseId = ?", [registration.course_id]
    )
    assert "second-offering" in offerings and len(offerings) > 1
    overlaid = _current_tables(sync)
    with sync.warehouse.connection() as conn:
        conn.execute("DELETE FROM lms_current_built")
        update_current_state(conn, "incr-20261123T030000Z")
    assert _current_tables(sync) == overlaid

    with world.lock:
        other = next(login for login in sorted(world.lms_learners) if login != registration.login)
        registration.login = other
        registration.modified_at = world.clock.now()
    assert sync.direct("incr-20261123T031500Z")["state"]["build"] == "rebuild"


def test_duplicates_across_syncs_leave_one_unchanged_row(sync: Syncer) -> None:
    sync.direct(FULL)
    step = sync.sb.world.step(seed=6)
    sync.direct(INCR)
    result = sync(INCR2)  # within 5 minutes: the server's overlap sends INCR's changes again
    assert result.success

    completed = step.changes["completion"] + step.changes["late_vessel_completion"]
    again = set(landed_ids(sync, INCR2, "completed"))
    assert set(completed) <= again
    rows = sync.query(
        "SELECT RegistrationId, count(*) OVER (PARTITION BY RegistrationId), changed_in_sync "
        "FROM lms_registrations"
    )
    assert all(count == 1 for _, count, _ in rows)
    changed = {rid: key for rid, _, key in rows}
    assert all(changed[rid] == INCR for rid in completed)  # re-sent unchanged: not a change
    assert metadata(result, "lms_registrations")["resent_unchanged"] >= len(completed)
    assert metadata(result, "lms_registrations")["updated"] == 0


def test_the_seed_fence_post_example(sync: Syncer) -> None:
    """DateModified 2022-07-14 22:58:21.073: fromDate 23:03:30 (minus 5 min = 22:58:30) leaves
    it out, fromDate 23:03:10 (22:58:10) takes it in."""
    sync.direct(FULL)
    world = sync.sb.world
    with world.lock:
        for registration in world.lms_registrations.values():
            registration.modified_at = datetime(2022, 7, 14, 0, 0, tzinfo=UTC)
        probe = sorted(world.lms_registrations)[0]
        world.lms_registrations[probe].modified_at = datetime(
            2022, 7, 14, 22, 58, 21, 73000, tzinfo=UTC
        )
    endpoint = "completed" if world.lms_registrations[probe].status == 2 else "active"

    set_watermarks(sync, datetime(2022, 7, 14, 23, 3, 30, tzinfo=UTC))
    sync.direct(INCR)
    assert landed_ids(sync, INCR, endpoint) == []

    set_watermarks(sync, datetime(2022, 7, 14, 23, 3, 10, tzinfo=UTC))
    sync.direct(INCR2)
    assert landed_ids(sync, INCR2, endpoint) == [probe]


def test_a_failed_sync_leaves_the_watermark_untouched(sync: Syncer) -> None:
    sync.direct(FULL)
    before = sync.query("SELECT * FROM lms_watermarks ORDER BY endpoint")
    current = state(sync)
    sync.sb.world.step(seed=7)
    # the second data request fails for good (2 attempts), after a page has landed
    sync.sb.lms.faults.configure(
        FaultConfig(script=["ok", "error", "error"], path_filter="RegistrationData")
    )
    result = sync(INCR, page_size=20)
    assert not result.success

    assert sync.query("SELECT * FROM lms_watermarks ORDER BY endpoint") == before
    for table in ("raw_lms_active_registrations", "raw_lms_completed_registrations"):
        assert sync.scalar(f"SELECT count(*) FROM {table} WHERE sync_key = ?", [INCR]) == 0
    assert sync.scalar("SELECT count(*) FROM stg_lms_registrations WHERE sync_key = ?", [INCR]) == 0
    assert state(sync) == current
    row = sync.query("SELECT status, watermarks FROM sync_runs WHERE key = ?", [INCR])
    assert row == [("running", None)]  # no job hook here; the run row never got LMS watermarks

    sync.sb.lms.faults.configure(FaultConfig())
    assert sync(INCR).success  # the re-run asks from the same place and loses nothing
    used = dict(
        sync.query("SELECT endpoint, from_date FROM lms_watermarks WHERE sync_key = ?", [INCR])
    )
    assert used == {endpoint: next_from for _, endpoint, _, _, _, next_from, _ in before}
    assert {rid: s for rid, (s, _) in state(sync).items()} == {
        rid: STATUS_NAMES[s] for rid, s in world_registrations(sync.sb).items()
    }


def test_rerunning_a_key_replaces_its_pages(sync: Syncer) -> None:
    sync.direct(FULL)
    counts = sync.query("SELECT count(*), sum(record_count) FROM raw_lms_active_registrations")
    sync.direct(FULL)
    assert sync.query("SELECT count(*), sum(record_count) FROM raw_lms_active_registrations") == (
        counts
    )
    assert sync.scalar("SELECT count(*) FROM lms_watermarks") == 2


# -- shifting pages and tokens ---------------------------------------------------------------


def test_total_items_changing_while_paging_loses_nothing(sync: Syncer) -> None:
    requests.post(sync.sb.urls["lms"] + "/_sandbox/lms/churn", json={"per_request": 2}, timeout=5)
    before = set(world_registrations(sync.sb))
    numbers = sync.direct(FULL, page_size=10)

    totals = sync.query(
        "SELECT DISTINCT (body->>'TotalItems')::INTEGER FROM raw_lms_active_registrations"
    )
    assert len(totals) > 3  # the active selection shrank page after page
    assert set(state(sync)) == before == set(world_registrations(sync.sb))
    assert numbers["active"].stepped_back_pages > 0
    assert numbers["state"]["duplicates_dropped"] > 0


@pytest.mark.parametrize(("expire_refresh", "logins", "refreshes"), [(False, 1, 1), (True, 2, 0)])
def test_token_expiry_in_the_middle_of_paging(
    sync: Syncer,
    monkeypatch: pytest.MonkeyPatch,
    expire_refresh: bool,
    logins: int,
    refreshes: int,
) -> None:
    page = LmsClient._page
    url = sync.sb.urls["lms"] + "/_sandbox/lms/tokens/expire"

    def expiring_page(self: LmsClient, *args: Any, **kwargs: Any) -> Any:
        answer = page(self, *args, **kwargs)
        if answer[0].endpoint == "active" and answer[0].page_nr == 1:
            requests.post(url, json={"refresh": expire_refresh}, timeout=5)
        return answer

    monkeypatch.setattr(LmsClient, "_page", expiring_page)
    numbers = sync.direct(FULL, page_size=20)["active"].requests
    assert numbers["unauthorized"] == 1
    assert (numbers["logins"], numbers["token_refreshes"]) == (logins, refreshes)
    assert set(state(sync)) == set(world_registrations(sync.sb))


# -- current state ---------------------------------------------------------------------------


def test_a_registration_absent_from_the_latest_full_sync_is_gone(sync: Syncer) -> None:
    sync.direct(FULL)
    with sync.sb.world.lock:
        gone = sorted(sync.sb.world.lms_registrations)[0]
        del sync.sb.world.lms_registrations[gone]
    sync.direct(INCR)
    assert gone in state(sync)  # an incremental sync cannot see deletions
    sync.direct(FULL2)
    assert gone not in state(sync)
    assert set(state(sync)) == set(world_registrations(sync.sb))


def test_changed_in_sync_names_the_sync_that_changed_a_learner(sync: Syncer) -> None:
    sync.direct(FULL)
    assert ("rebuild", f"a full LMS sync ({FULL})") in set(
        sync.query("SELECT kind, id FROM graph_changes")
    )
    sync.query("DELETE FROM graph_changes RETURNING kind")  # as a hub_desired build consumes
    world = sync.sb.world
    with world.lock:
        registration = sorted(world.lms_registrations.values(), key=lambda r: r.registration_id)[0]
        learner = world.lms_learners[registration.login]
        learner.profile["StudentId"] = "09999999"
        registration.modified_at = world.clock.now()
    sync.direct(INCR)

    rows = dict(sync.query("SELECT OrganizationLoginId, changed_in_sync FROM lms_learners"))
    assert rows[learner.login] == INCR
    assert set(rows.values()) == {FULL, INCR}
    assert list(rows.values()).count(INCR) == 1
    # noted for the next hub_desired build: the learner's user and links
    noted = set(sync.query("SELECT kind, id FROM graph_changes"))
    assert noted == {("lms_learner", learner.login)}
    assert sync.query(
        "SELECT StudentId, OrgProfileFieldValues['StudentId'] FROM lms_learners "
        "WHERE OrganizationLoginId = ?",
        [learner.login],
    ) == [("09999999", "09999999")]


def test_a_changed_registration_notes_its_learner_for_the_next_hub_desired_build(
    sync: Syncer,
) -> None:
    """A registration completed: its learner's record is the same, but the person's LMS links
    change, so the learner is noted."""
    sync.direct(FULL)
    sync.query("DELETE FROM graph_changes RETURNING kind")  # as a hub_desired build consumes
    world = sync.sb.world
    with world.lock:
        registration = next(
            r
            for r in sorted(world.lms_registrations.values(), key=lambda r: r.registration_id)
            if r.status == 1
        )
        registration.status, registration.completion_date = 2, world.clock.now()
        registration.modified_at = world.clock.now()
    sync.direct(INCR)
    assert state(sync)[registration.registration_id] == ("Completed", INCR)
    [(learner_changed_in,)] = sync.query(
        "SELECT changed_in_sync FROM lms_learners WHERE OrganizationLoginId = ?",
        [registration.login],
    )
    assert learner_changed_in == FULL
    noted = set(sync.query("SELECT kind, id FROM graph_changes"))
    assert ("lms_learner", registration.login) in noted


def test_a_malformed_record_is_quarantined_and_the_rest_lands(sync: Syncer) -> None:
    world = sync.sb.world
    with world.lock:
        registration = sorted(world.lms_registrations.values(), key=lambda r: r.registration_id)[0]
        world.lms_learners[registration.login].login = ""
        affected = {
            r.registration_id
            for r in world.lms_registrations.values()
            if r.login == registration.login
        }
    numbers = sync.direct(FULL)

    rows = sync.query("SELECT source, record_key, reason, sync_key FROM quarantine")
    assert {r[1] for r in rows} == affected
    assert all(r[0] == "lms" and r[3] == FULL and "OrganizationLoginId" in r[2] for r in rows)
    assert set(state(sync)) == set(world_registrations(sync.sb)) - affected
    assert numbers["active"].quarantined + numbers["completed"].quarantined == len(affected)


# -- the real job ----------------------------------------------------------------------------


def test_the_full_sync_job_runs_the_lms_assets(
    sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:

    defs = build_definitions(load_settings({**os.environ, **sandbox.env}))
    job = defs.resolve_job_def("sync_job")
    graph = defs.resolve_asset_graph()
    selection = dg.AssetSelection.groups("sync", "lms").resolve(graph)
    key = "full-20261125T020000Z"
    instance.add_dynamic_partitions(sync_runs_partitions.name, [key])

    result = job.execute_in_process(
        instance=instance, partition_key=key, asset_selection=list(selection)
    )
    assert result.success
    warehouse = WarehouseResource(path=os.environ["HUBSYNC_WAREHOUSE"])
    with warehouse.connection() as conn:
        (rows,) = conn.execute("SELECT count(*) FROM lms_registrations").fetchone() or (0,)
        (status,) = conn.execute(
            "SELECT status FROM sync_runs WHERE key = ?", [key]
        ).fetchone() or (None,)
    assert rows == len(world_registrations(sandbox))
    assert status == "success"
    assert {k.to_user_string() for k in selection} >= {
        "raw_lms_active_registrations",
        "raw_lms_completed_registrations",
        "lms_registrations",
        "lms_courses",
        "lms_learners",
    }
