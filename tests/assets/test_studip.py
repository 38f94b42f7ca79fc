"""Stud.IP raw landing and current state, materialised against the sandbox over real HTTP."""

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

import assets.studip as studip_assets
from assets.partitions import sync_runs_partitions
from assets.studip import changed_studip_user_ids, studip_current_state, studip_raw_pages
from assets.sync import sync_run
from cli.home import prepare_dagster_home
from cli.runs import run_sync
from pipelines.definitions import build_definitions
from resources.settings import load_settings
from resources.studip import StudIPResource, studip_resource
from resources.warehouse import WarehouseResource, all_migrations, ensure_schema
from sandbox.expected import crawl_studip, default_seed_ids, default_semester_ids
from sandbox.http import FaultConfig
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import SEM_TYPES, STUDENT_ID_FIELD, StudipUser, World
from tests.instances import ephemeral_instance

TODAY = date(2026, 11, 23)
FULL = "full-20261123T100000Z"
INCR = "incr-20261123T110000Z"
FULL2 = "full-20261123T120000Z"
ASSETS = [sync_run, studip_raw_pages, studip_current_state]


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with ephemeral_instance() as instance:
        instance.add_dynamic_partitions(sync_runs_partitions.name, [FULL, INCR, FULL2])
        yield instance


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox(port_base=0, world=World(5, 60, today=TODAY)) as sandbox:
        yield sandbox


@pytest.fixture
def sb(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox with fresh request counters, no faults and every route active."""
    sandbox.studip.counts.clear()
    yield sandbox
    sandbox.studip.faults.configure(FaultConfig())
    sandbox.studip.set_disabled_routes([])  # type: ignore[attr-defined]


def studip_for(sb: Sandbox, **overrides: Any) -> StudIPResource:
    """The sandbox's resource; the crawl (STUDIP_API_MODE=rest) unless ``api_mode`` is given:
    these tests are the crawl's (tests/assets/test_studip_listing.py has the listing's)."""
    resource = studip_resource(load_settings(sb.env).studip)
    # A new resource, not model_copy: Dagster rebuilds resources from their original config.
    fields = {name: getattr(resource, name) for name in StudIPResource.model_fields}
    return StudIPResource(**{**fields, "api_mode": "rest", **overrides})


def materialize(
    instance: dg.DagsterInstance,
    warehouse: WarehouseResource,
    studip: StudIPResource,
    key: str,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        partition_key=key,
        instance=instance,
        resources={"warehouse": warehouse, "studip": studip},
        raise_on_error=False,
    )


def query(warehouse: WarehouseResource, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with warehouse.connection() as conn:
        return conn.execute(sql, params).fetchall()


def ids(warehouse: WarehouseResource, sql: str) -> set[Any]:
    return {row[0] if len(row) == 1 else row for row in query(warehouse, sql)}


def served(sb: Sandbox, route: str) -> int:
    return sb.studip.counts.get(f"GET /api.php{route}", 0)  # type: ignore[attr-defined]


def metadata(result: dg.ExecuteInProcessResult, node: str = "studip_raw_pages") -> dict[str, Any]:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def expected_crawl(world: World) -> tuple[set[str], set[str]]:
    return crawl_studip(world, default_semester_ids(world), default_seed_ids(world))


def test_a_full_sync_crawls_to_closure_and_builds_the_current_state(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    world = sb.world
    result = materialize(instance, warehouse, studip_for(sb), FULL)
    assert result.success

    users, courses = expected_crawl(world)
    assert ids(warehouse, "SELECT user_id FROM studip_users") == users
    assert ids(warehouse, "SELECT course_id FROM studip_courses") == courses
    assert ids(warehouse, "SELECT course_id, user_id, status FROM studip_memberships") == {
        (c, u, status) for c in courses for u, status in world.memberships[c].items()
    }
    assert ids(warehouse, "SELECT semester_id FROM studip_semesters") == set(world.studip_semesters)
    assert ids(warehouse, "SELECT course_id, type, type_name FROM studip_courses") == {
        (c, world.studip_courses[c].sem_type, SEM_TYPES[world.studip_courses[c].sem_type][0])
        for c in courses
    }
    assert ids(warehouse, "SELECT user_id, institute_id FROM studip_user_institutes") == {
        (u, i) for u in users for i in world.studip_users[u].institute_ids
    }
    datafields = dict(query(warehouse, "SELECT user_id, datafields FROM studip_users"))
    assert all(datafields[u] == world.studip_users[u].datafields for u in users)
    assert any(STUDENT_ID_FIELD in fields for fields in datafields.values())
    assert ids(warehouse, "SELECT DISTINCT changed_in_sync FROM studip_users") == {FULL}

    # Every request landed as one page, and nothing was requested twice.
    (pages,) = query(warehouse, "SELECT count(*) FROM raw_studip_pages WHERE sync_key = ?", [FULL])
    assert sb.studip.request_count() == pages[0] + 1, "all pages but /discovery are landed"
    assert served(sb, "/user/:user_id") == len(users) - 1, "/user read the API account"
    assert served(sb, "/users") == 1, "the seed user's username is looked up once"
    member_keys = ids(
        warehouse,
        "SELECT DISTINCT request_key FROM raw_studip_pages WHERE request_key LIKE '/course/%'",
    )
    assert len(member_keys) == len(courses)

    numbers = metadata(result)
    assert (numbers["users"], numbers["courses"]) == (len(users), len(courses))
    assert numbers["memberships"] == sum(len(world.memberships[c]) for c in courses)
    assert numbers["requests"] == sb.studip.request_count() and numbers["pages"] == pages[0]
    assert numbers["requests_per_s"] > 0 and numbers["quarantined"] == 0
    state = metadata(result, "studip_current_state")
    assert state["dagster/row_count"] == len(users) and state["inserted"] == len(users)


def test_a_rerun_replaces_its_pages_and_a_failed_one_lands_nothing(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    studip = studip_for(sb, retry_attempts=2, retry_backoff_s=0.0)
    assert materialize(instance, warehouse, studip, FULL).success
    before = query(warehouse, "SELECT count(*) FROM raw_studip_pages")
    users = query(warehouse, "SELECT * FROM studip_users ORDER BY user_id")

    result = materialize(instance, warehouse, studip, FULL)
    assert result.success
    assert query(warehouse, "SELECT count(*) FROM raw_studip_pages") == before
    assert query(warehouse, "SELECT * FROM studip_users ORDER BY user_id") == users
    changes = [m.metadata for m in result.asset_materializations_for_node("studip_current_state")]
    assert all(
        m["inserted"].value == m["updated"].value == m["deleted"].value == 0 for m in changes
    )

    sb.studip.faults.configure(FaultConfig(error_rate=1.0, path_filter="/members"))
    for key in (FULL, FULL2):
        failed = materialize(instance, warehouse, studip, key)
        assert not failed.success
        error = failed.get_step_failure_events()[0].step_failure_data.error
        assert error is not None and "/course/:course_id/members" in error.to_string()
    assert query(warehouse, "SELECT count(*) FROM raw_studip_pages") == before, "kept, not added"
    assert query(warehouse, "SELECT * FROM studip_users ORDER BY user_id") == users


def test_missing_routes_fail_before_any_crawling(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    sb.studip.set_disabled_routes(  # type: ignore[attr-defined]
        ["/course/:course_id/members", "/user/:user_id/institutes"]
    )
    result = materialize(instance, warehouse, studip_for(sb), FULL)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    message = error.to_string()
    assert "GET /user/:user_id/institutes, GET /course/:course_id/members" in message
    assert "administrator" in message
    assert sb.studip.request_count() == 1, "nothing after /discovery"
    assert query(warehouse, "SELECT count(*) FROM raw_studip_pages") == [(0,)]


def test_an_unknown_seed_username_fails_the_sync(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    studip = studip_for(sb, seed_users=["lehre.koordination", "nobody.here"])
    result = materialize(instance, warehouse, studip, FULL)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    assert "STUDIP_SEED_USERS: Stud.IP has no user with the username 'nobody.here'" in (
        error.to_string()
    )
    assert served(sb, "/user/:user_id/courses") == 0, "before any crawling"


def test_an_invalid_record_is_quarantined_and_the_sync_goes_on(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    world = sb.world
    users, _ = expected_crawl(world)
    victim = sorted(users - set(default_seed_ids(world)))[0]
    perms = world.studip_users[victim].perms
    with world.lock:
        world.studip_users[victim].perms = "superuser"
    try:
        result = materialize(instance, warehouse, studip_for(sb), FULL2)
    finally:
        with world.lock:
            world.studip_users[victim].perms = perms
    assert result.success
    ((record_type, record_key, reason, raw),) = query(
        warehouse,
        "SELECT record_type, record_key, reason, raw FROM quarantine WHERE sync_key = ?",
        [FULL2],
    )
    assert (record_type, record_key) == ("user", victim)
    assert reason.startswith("perms: Input should be 'user', 'autor'")
    assert json.loads(raw)["perms"] == "superuser"
    assert victim not in ids(warehouse, "SELECT user_id FROM studip_users")
    assert metadata(result)["quarantined"] == 1


def test_an_incremental_sync_rereads_only_the_changed_persons_courses(
    instance: dg.DagsterInstance,
    warehouse: WarehouseResource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(9, 60, today=TODAY)
    with running_sandbox(port_base=0, world=world) as sb:
        studip = studip_for(sb)
        assert materialize(instance, warehouse, studip, FULL).success
        rebuild = ("rebuild", f"a full Stud.IP sync ({FULL})")
        assert rebuild in ids(warehouse, "SELECT kind, id FROM graph_changes")
        users, courses = expected_crawl(world)
        student = next(u for u in sorted(users) if world.studip_users[u].perms == "autor")
        new_course = next(c for c in sorted(courses) if student not in world.memberships[c])
        left_course = next(
            c
            for c in sorted(world.user_courses[student])
            if c in courses and world.memberships[c][student] == "autor"
        )
        with world.lock:
            world.enrol(new_course, student, "autor")
            world.drop(left_course, student)
        monkeypatch.setattr(
            studip_assets, "changed_studip_user_ids", lambda conn, key, field: [student]
        )
        sb.studip.counts.clear()  # type: ignore[attr-defined]
        with warehouse.connection() as conn:
            conn.execute("DELETE FROM graph_changes")  # as a hub_desired build consumes them

        result = materialize(instance, warehouse, studip, INCR)
        assert result.success

        wanted = set(default_semester_ids(world))
        unchanged = {
            c
            for c in world.user_courses[student]
            if world.studip_courses[c].start_semester in wanted
        } - {new_course}
        assert unchanged, "the student keeps courses whose members need no reading"
        assert served(sb, "/user/:user_id") == 1
        assert served(sb, "/user/:user_id/courses") == len(wanted)
        # only the courses whose membership changed: the one joined (in the student's list,
        # not stored) and the one left (stored, no longer in the list)
        assert served(sb, "/course/:course_id/members") == 2
        assert served(sb, "/user") == served(sb, "/users") == 0
        assert metadata(result)["crawl"] == "incremental"

    changed = "SELECT course_id, user_id FROM studip_memberships WHERE changed_in_sync = ?"
    assert query(warehouse, changed, [INCR]) == [(new_course, student)]
    assert ids(warehouse, "SELECT course_id, user_id, status FROM studip_memberships") == {
        (c, u, s) for c in courses for u, s in world.memberships[c].items()
    }, "the new membership is in, the ended one is out, the others untouched"
    assert (left_course, student) not in ids(
        warehouse, "SELECT course_id, user_id FROM studip_memberships"
    )
    assert ids(warehouse, "SELECT user_id FROM studip_users") == users
    # the next hub_desired build rebuilds the links of both courses
    noted = ids(warehouse, "SELECT kind, id FROM graph_changes")
    assert noted == {("studip_course", new_course), ("studip_course", left_course)}


def test_changed_persons_map_to_studip_users_by_student_id_email_and_login() -> None:
    conn = duckdb.connect()
    ensure_schema(conn, [m for m in all_migrations() if m.name.startswith(("core", "studip"))])
    conn.execute(
        """
        INSERT INTO studip_users (user_id, username, perms, email, datafields, changed_in_sync)
        VALUES ('a', 'anna', 'autor', 'Anna@Uni.at', MAP {'Matrikelnummer': '111'}, 'k'),
               ('b', 'bert', 'autor', 'bert@uni.at', MAP {}, 'k'),
               ('c', 'carl', 'autor', 'carl@uni.at', MAP {}, 'k'),
               ('d', 'dora', 'autor', 'dora@uni.at', MAP {'Matrikelnummer': '444'}, 'k')
        """
    )
    assert changed_studip_user_ids(conn, INCR) == [], "no CO or LMS tables: no changes"
    conn.execute(
        "CREATE TABLE co_students (STPERSONNR INTEGER, STUDID VARCHAR, EMAILADDRESSTU VARCHAR, "
        "changed_in_sync VARCHAR)"
    )
    conn.execute(
        "CREATE TABLE lms_learners (OrganizationLoginId VARCHAR, EmailAddress VARCHAR, "
        "StudentId VARCHAR, changed_in_sync VARCHAR)"
    )
    conn.execute(
        "INSERT INTO co_students VALUES (1, '111', NULL, ?), (2, NULL, 'BERT@uni.at', ?), "
        "(3, '444', NULL, 'an-older-sync')",
        [INCR, INCR],
    )
    conn.execute("INSERT INTO lms_learners VALUES ('carl', 'x@y.z', NULL, ?)", [INCR])
    assert changed_studip_user_ids(conn, INCR) == ["a", "b", "c"]


def test_the_full_sync_job_runs_the_studip_assets(tmp_path: Path, sb: Sandbox) -> None:
    prepare_dagster_home()  # run_sync uses the instance in DAGSTER_HOME, as the CLI does
    env = {**sb.env, "HUBSYNC_WAREHOUSE": str(tmp_path / "job.duckdb")}
    defs = build_definitions(load_settings(env))
    graph = defs.resolve_asset_graph()
    selection = list(dg.AssetSelection.groups("sync", "studip").resolve(graph))
    report = run_sync(defs, "full", FULL, asset_selection=selection, out=io.StringIO())
    assert report.success, report.error
    warehouse = WarehouseResource(path=env["HUBSYNC_WAREHOUSE"])
    ((status, summary),) = query(warehouse, "SELECT status, summary FROM sync_runs")
    assert status == "success"
    assert json.loads(summary)["raw"]["raw_studip_pages"]["pages"] > 0
    users, _ = expected_crawl(sb.world)
    assert ids(warehouse, "SELECT user_id FROM studip_users") == users


# -- what a real Stud.IP 5.5 does (issue: the sandbox got it wrong) ----------------------------


def test_courses_running_in_a_selected_semester_are_kept_with_their_semesters(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    """?semester= returns every course running in it: one from the previous semester into the
    current one, and unlimited ones (no start semester), are kept with their start and end
    semester and the earliest selected semester they came back for; with group null."""
    world = sb.world
    assert materialize(instance, warehouse, studip_for(sb), FULL).success
    _, courses = expected_crawl(world)
    current = world.current_semester.semester_id
    rows = {
        row[0]: row[1:]
        for row in query(
            warehouse,
            "SELECT course_id, start_semester_id, end_semester_id, first_selected_semester_id, "
            "group_nr, studygroup FROM studip_courses",
        )
    }
    started_earlier = [
        c
        for c in courses
        if world.studip_courses[c].start_semester == world.previous_semester.semester_id
    ]
    unlimited = [c for c in courses if world.studip_courses[c].start_semester is None]
    assert started_earlier and unlimited, "the world has both kinds, reached"
    for course_id in started_earlier:
        assert rows[course_id] == (
            world.previous_semester.semester_id,
            current,
            current,
            None,
            False,
        )
    for course_id in unlimited:
        studygroup = world.studip_courses[course_id].sem_type == "99"
        assert rows[course_id] == (None, None, current, None, studygroup)
    assert query(warehouse, "SELECT count(*) FROM quarantine WHERE sync_key = ?", [FULL]) == [(0,)]


def test_all_semesters_are_read_unfiltered_once_per_user(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    world = sb.world
    result = materialize(instance, warehouse, studip_for(sb, semesters=["all"]), FULL2)
    assert result.success
    users, courses = crawl_studip(world, list(world.studip_semesters), default_seed_ids(world))
    assert ids(warehouse, "SELECT course_id FROM studip_courses") == courses
    assert ids(warehouse, "SELECT user_id FROM studip_users") == users
    assert served(sb, "/user/:user_id/courses") == len(users), "one unfiltered read per user"
    assert metadata(result)["semesters"] == len(world.studip_semesters)
    earliest = world.semesters_in_order[0].semester_id
    assert ids(
        warehouse,
        "SELECT DISTINCT first_selected_semester_id FROM studip_courses "
        "WHERE start_semester_id IS NULL",
    ) == {earliest}


def test_a_bad_course_on_several_pages_is_quarantined_once(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    """An unlimited course comes back on every semester page of every member: its bad record
    is stored once per sync, not once per page."""
    world = sb.world
    _, courses = expected_crawl(world)
    victim = next(
        c for c in sorted(courses)
        if world.studip_courses[c].start_semester is None and len(world.memberships[c]) > 1
    )  # fmt: skip
    title = world.studip_courses[victim].title
    with world.lock:
        world.studip_courses[victim].title = None  # type: ignore[assignment]
    try:
        result = materialize(instance, warehouse, studip_for(sb), FULL2)
    finally:
        with world.lock:
            world.studip_courses[victim].title = title
    assert result.success
    pages_with_it = query(
        warehouse,
        "SELECT count(*) FROM raw_studip_pages WHERE sync_key = ? AND contains(body::VARCHAR, ?)",
        [FULL2, victim],
    )[0][0]
    assert pages_with_it >= 4, "two semesters times two members at least"
    rows = query(
        warehouse,
        "SELECT record_type, record_key, reason FROM quarantine WHERE sync_key = ?",
        [FULL2],
    )
    assert rows == [("course", victim, "title: Input should be a valid string")]
    assert metadata(result)["quarantined"] == 1


def test_an_empty_seed_user_setting_crawls_from_the_api_account_alone(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    settings = load_settings({**sb.env, "STUDIP_SEED_USERS": "", "STUDIP_API_MODE": "rest"})
    assert settings.studip.seed_users == ()
    result = materialize(instance, warehouse, studip_resource(settings.studip), FULL2)
    assert result.success
    assert served(sb, "/users") == 0, "no username to look up"
    # the API account is a member of no course: nothing else is reached
    assert ids(warehouse, "SELECT user_id FROM studip_users") == {sb.world.api_account.user_id}
    assert metadata(result)["seed_users"] == 1


def test_a_non_root_account_fails_saying_it_must_be_root(
    instance: dg.DagsterInstance, warehouse: WarehouseResource
) -> None:
    world = World(5, 30, today=TODAY)
    options = {"studip": {"api_account_is_root": False}}
    with running_sandbox(port_base=0, world=world, options=options) as sandbox:
        result = materialize(instance, warehouse, studip_for(sandbox), FULL)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    message = error.to_string()
    assert "must be root" in message and "/user/:user_id/courses" in message
    assert "STUDIP_USERNAME/STUDIP_PASSWORD" not in message, "the login itself was fine"


def test_a_refused_login_fails_at_discovery_naming_the_settings_and_root(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, sb: Sandbox
) -> None:
    result = materialize(instance, warehouse, studip_for(sb, password="wrong"), FULL2)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    message = error.to_string()
    assert "/discovery" in message and "STUDIP_USERNAME/STUDIP_PASSWORD" in message
    assert "must be root" in message
    assert sb.studip.request_count() == 1, "nothing after /discovery"


def test_an_incremental_search_reads_new_hits_and_checks_stored_ones_as_stored(
    instance: dg.DagsterInstance,
    warehouse: WarehouseResource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/users?q= hits are short records. A hit no sync stored is read with /user/:id to check
    the rules (e-mail, datafield) and landed as the search's; a stored hit is checked against
    its stored record without a request (at 100,000 students reading namesakes took 470 of an
    incremental crawl's 1,208 requests). Either kind that matches seeds the crawl."""
    world = World(9, 60, today=TODAY)
    with running_sandbox(port_base=0, world=world) as sb:
        studip = studip_for(sb)
        assert materialize(instance, warehouse, studip, FULL).success
        users, _ = expected_crawl(world)
        student = next(u for u in sorted(users) if world.studip_users[u].perms == "autor")
        person = world.persons[world.studip_users[student].pid or 0]
        # a namesake who joined Stud.IP after the full sync: no sync stored them
        namesake_pid = max(world.persons) + 1
        world.persons[namesake_pid] = replace(person, pid=namesake_pid)
        namesake = StudipUser(
            "e" * 32, "namesake", namesake_pid, "autor", "namesake@example.org", {}, []
        )
        world.studip_users[namesake.user_id] = namesake
        name = f"{person.given} {person.family}"
        wanted = [
            studip_assets.UnlinkedPerson(name, None, "namesake@example.org", None),
            studip_assets.UnlinkedPerson(name, None, world.studip_users[student].email, None),
        ]
        monkeypatch.setattr(studip_assets, "unlinked_changed_persons", lambda conn, key: wanted)
        monkeypatch.setattr(studip_assets, "changed_studip_user_ids", lambda conn, key, f: [])
        sb.studip.counts.clear()  # type: ignore[attr-defined]
        result = materialize(instance, warehouse, studip, INCR)
        assert result.success
        assert served(sb, "/users") == 1
        # the namesake's record for the search; the stored student's by the crawl, as a seed
        assert served(sb, "/user/:user_id") == 2
    user_pages = (
        f"SELECT request_key FROM raw_studip_pages WHERE sync_key = '{INCR}' "
        "AND request_key LIKE '/user/%' AND request_key NOT LIKE '%/courses%' "
        "AND request_key NOT LIKE '%/institutes'"
    )
    assert ids(warehouse, user_pages) == {f"/user/{namesake.user_id}?q={name}", f"/user/{student}"}
    assert namesake.user_id in ids(warehouse, "SELECT user_id FROM studip_users")
