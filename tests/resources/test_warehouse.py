import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from resources.hub import schema as hub_schema
from resources.migrations import Migration, raw_page_table_ddl
from resources.warehouse import (
    CHECKPOINT_WAL_BYTES,
    WAREHOUSE_POOL,
    RunHold,
    WarehouseError,
    WarehouseResource,
    all_migrations,
    applied_migrations,
    ensure_schema,
    other_runs_in_pool,
)

MIGRATIONS = all_migrations()
FETCHED = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


@contextmanager
def locked_by_other_process(path: Path, hold_s: float) -> Iterator[subprocess.Popen[str]]:
    """Another process opens ``path`` for writing and keeps it open for ``hold_s`` seconds."""
    script = textwrap.dedent(
        f"""
        import sys, time, duckdb
        conn = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({hold_s})
        conn.close()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait()


def test_nothing_is_opened_until_used(warehouse: WarehouseResource, warehouse_path: Path) -> None:
    assert not warehouse_path.exists()
    with warehouse.connection():
        assert warehouse_path.exists()


def test_schema_is_created_once_and_recorded(
    warehouse: WarehouseResource, warehouse_path: Path
) -> None:
    assert warehouse.ensure_schema() == len(MIGRATIONS)
    assert warehouse.ensure_schema() == len(MIGRATIONS)
    # a new resource on the existing file finds it up to date
    assert WarehouseResource(path=str(warehouse_path)).ensure_schema() == len(MIGRATIONS)

    with warehouse.connection() as conn:
        assert {"schema_migrations", "sync_runs", "quarantine"} <= tables(conn)
        assert applied_migrations(conn) == [m.name for m in MIGRATIONS]


def test_only_new_migrations_are_applied(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert ensure_schema(conn) == len(MIGRATIONS)
    conn.execute("INSERT INTO sync_runs (key, mode, effective_mode, status, started_at) "
                 "VALUES ('full-20260101T000000Z', 'full', 'full', 'success', now())")  # fmt: skip
    later = [*MIGRATIONS, Migration("test: pages", raw_page_table_ddl("raw_test_pages"))]

    assert ensure_schema(conn, later) == len(MIGRATIONS) + 1
    assert ensure_schema(conn, later) == len(MIGRATIONS) + 1
    assert "raw_test_pages" in tables(conn)
    assert conn.execute("SELECT count(*) FROM sync_runs").fetchone() == (1,)  # not re-created
    assert applied_migrations(conn) == [m.name for m in later]


def test_staged_rows_keep_their_data_when_staging_tables_are_renamed(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    names = [m.name for m in MIGRATIONS]
    renames = [names.index(n) for n in names if "staging table" in n and "named stg_" in n]
    assert len(renames) == 2, "the Stud.IP and LMS renames"
    ensure_schema(conn, MIGRATIONS[: min(renames)])
    conn.execute("INSERT INTO studip_staged_memberships VALUES ('k', 'c1', 'u1', 'autor')")

    ensure_schema(conn)

    assert conn.execute("FROM stg_studip_memberships").fetchall() == [("k", "c1", "u1", "autor")]
    assert not {"studip_staged_memberships", "lms_registration_items"} & tables(conn)


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    broken = [*MIGRATIONS, Migration("test: broken", "CREATE TABLE half (x INT); SELEC nonsense;")]

    with pytest.raises(WarehouseError, match=r"migration 'test: broken' failed"):
        ensure_schema(conn, broken)
    assert applied_migrations(conn) == [m.name for m in MIGRATIONS]
    assert "half" not in tables(conn)


def test_migration_names_must_be_unique(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    twice = Migration("test: twice", "SELECT 1")
    with pytest.raises(ValueError, match="unique.*test: twice"):
        ensure_schema(conn, [*MIGRATIONS, twice, twice])


def test_components_add_migrations_independently(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    first = Migration("a: one", raw_page_table_ddl("raw_a_pages"))
    second = Migration("b: one", raw_page_table_ddl("raw_b_pages"))
    ensure_schema(conn, [*MIGRATIONS, first])
    # another component's migration landing before it in the list still gets applied
    assert ensure_schema(conn, [*MIGRATIONS, second, first]) == len(MIGRATIONS) + 2
    assert {"raw_a_pages", "raw_b_pages"} <= tables(conn)


def test_a_newer_warehouse_is_refused(warehouse: WarehouseResource, warehouse_path: Path) -> None:
    conn = duckdb.connect(str(warehouse_path))
    ensure_schema(conn, [*MIGRATIONS, Migration("test: from the future", "SELECT 1")])
    conn.close()
    with pytest.raises(WarehouseError, match="does not know.*from the future.*upgrade"):
        warehouse.ensure_schema()


def test_a_file_that_is_not_duckdb_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("these are not the tables you are looking for\n" * 200)
    with pytest.raises(WarehouseError) as caught:
        WarehouseResource(path=str(path)).ensure_schema()
    assert str(path) in str(caught.value)
    assert "not a valid DuckDB database" in str(caught.value)


def test_a_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match=f"cannot open the warehouse {tmp_path}"):
        WarehouseResource(path=str(tmp_path)).ensure_schema()


def test_the_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "w.duckdb"
    assert WarehouseResource(path=str(path)).ensure_schema() == len(MIGRATIONS)


def test_a_lock_held_by_another_process_is_reported(
    warehouse: WarehouseResource, warehouse_path: Path
) -> None:
    impatient = WarehouseResource(path=str(warehouse_path), lock_timeout_s=0.5)
    with locked_by_other_process(warehouse_path, hold_s=30):
        started = time.monotonic()
        with pytest.raises(WarehouseError) as caught:
            impatient.ensure_schema()
        waited = time.monotonic() - started
    message = str(caught.value)
    assert f"the warehouse {warehouse_path} is locked by another process" in message
    assert "waited 0.5 s" in message
    assert 0.5 <= waited < 5


def test_the_lock_is_waited_for(warehouse: WarehouseResource, warehouse_path: Path) -> None:
    with locked_by_other_process(warehouse_path, hold_s=0.5) as other:
        assert warehouse.ensure_schema() == len(MIGRATIONS)
        assert other.wait(timeout=5) == 0  # it let go after half a second, then we got in


OPENS_FROM_ANOTHER_PROCESS = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def another_process_can_open(path: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", OPENS_FROM_ANOTHER_PROCESS, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 or "lock" in done.stderr.lower(), done.stderr
    return done.returncode == 0


def default_order(conn: duckdb.DuckDBPyConnection) -> str:
    (order,) = conn.execute("SELECT current_setting('default_order')").fetchone() or ("",)
    return str(order).upper()


def test_connections_are_closed(warehouse: WarehouseResource, warehouse_path: Path) -> None:
    with warehouse.connection() as conn:
        pass
    with pytest.raises(duckdb.ConnectionException):
        conn.execute("SELECT 1")
    assert another_process_can_open(warehouse_path)  # right away


# -- raw page landing -------------------------------------------------------------------------


@pytest.fixture
def pages_warehouse(warehouse: WarehouseResource) -> WarehouseResource:
    with warehouse.connection() as conn:
        conn.execute(raw_page_table_ddl("raw_test_pages"))
    return warehouse


def land(warehouse: WarehouseResource, key: str, bodies: list[str]) -> None:
    with warehouse.page_writer("raw_test_pages", key) as writer:
        for page_nr, body in enumerate(bodies):
            writer.add(
                request_key="students",
                page_nr=page_nr,
                request_params={"offset": page_nr * 2, "since": FETCHED},
                body=body,
                record_count=len(json.loads(body)),
                fetched_at=FETCHED,
            )


def pages(warehouse: WarehouseResource) -> list[tuple[str, int, str]]:
    with warehouse.connection() as conn:
        return conn.execute(
            "SELECT sync_key, page_nr, body::VARCHAR FROM raw_test_pages ORDER BY ALL"
        ).fetchall()


def test_pages_are_landed_with_their_metadata(pages_warehouse: WarehouseResource) -> None:
    with pages_warehouse.page_writer("raw_test_pages", "full-20261123T101500Z") as writer:
        writer.add(
            request_key="students",
            page_nr=0,
            request_params={"limit": 2, "since": FETCHED},
            body=b'[{"id": 1}, {"id": 2}]',
            record_count=2,
            fetched_at=FETCHED,
        )
        writer.add(request_key="students", page_nr=1, request_params={}, body="[]", record_count=0)
    assert (writer.pages, writer.records) == (2, 2)

    with pages_warehouse.connection() as conn:
        row = conn.execute(
            """
            SELECT request_key, request_params->>'since', fetched_at, record_count, body->>'$[1].id'
            FROM raw_test_pages WHERE page_nr = 0
            """
        ).fetchone()
    assert row == ("students", "2026-11-23T10:15:00+00:00", FETCHED, 2, "2")


def test_relanding_a_key_replaces_only_its_pages(pages_warehouse: WarehouseResource) -> None:
    land(pages_warehouse, "full-1", ["[1, 2]", "[3]"])
    land(pages_warehouse, "incr-2", ["[4]"])
    land(pages_warehouse, "full-1", ["[5]"])

    assert pages(pages_warehouse) == [("full-1", 0, "[5]"), ("incr-2", 0, "[4]")]


def test_a_failure_midway_keeps_the_previous_pages(pages_warehouse: WarehouseResource) -> None:
    land(pages_warehouse, "full-1", ["[1, 2]", "[3]"])
    with (
        pytest.raises(ConnectionError),
        pages_warehouse.page_writer("raw_test_pages", "full-1") as writer,
    ):
        writer.add(request_key="students", page_nr=0, request_params={}, body="[9]", record_count=1)
        writer.execute("UPDATE sync_runs SET status = 'x'")
        raise ConnectionError("the API went away after one page")

    assert pages(pages_warehouse) == [("full-1", 0, "[1, 2]"), ("full-1", 1, "[3]")]


def test_extra_statements_commit_with_the_pages(pages_warehouse: WarehouseResource) -> None:
    with pages_warehouse.connection() as conn:
        conn.execute("INSERT INTO sync_runs (key, mode, effective_mode, status, started_at) "
                     "VALUES ('full-1', 'full', 'full', 'running', now())")  # fmt: skip
    with pages_warehouse.page_writer("raw_test_pages", "full-1") as writer:
        writer.add(request_key="students", page_nr=0, request_params={}, body="[1]", record_count=1)
        writer.execute(
            "UPDATE sync_runs SET watermarks = ?::JSON WHERE key = ?",
            [json.dumps({"co": {"students": "2026-11-23T10:00:00Z"}}), "full-1"],
        )
        # the writer's own transaction sees its pages before commit
        assert writer.execute("SELECT count(*) FROM raw_test_pages").fetchone() == (1,)

    with pages_warehouse.connection() as conn:
        watermark = conn.execute("SELECT watermarks->>'$.co.students' FROM sync_runs").fetchone()
    assert watermark == ("2026-11-23T10:00:00Z",)


def test_a_body_that_is_not_json_is_refused(pages_warehouse: WarehouseResource) -> None:
    land(pages_warehouse, "full-1", ["[1]"])
    with pytest.raises(WarehouseError, match="page 3 of 'students' is not valid JSON"):
        with pages_warehouse.page_writer("raw_test_pages", "full-1") as writer:
            truncated = '[{"id": 1}, {"id"'
            writer.add(
                request_key="students", page_nr=3, request_params={}, body=truncated, record_count=2
            )
    assert pages(pages_warehouse) == [("full-1", 0, "[1]")]


def test_a_page_cannot_be_landed_twice(pages_warehouse: WarehouseResource) -> None:
    with (
        pytest.raises(duckdb.ConstraintException),
        pages_warehouse.page_writer("raw_test_pages", "full-1") as writer,
    ):
        for _ in range(2):
            writer.add(request_key="a", page_nr=0, request_params={}, body="[]", record_count=0)


def test_naive_fetch_times_are_refused(pages_warehouse: WarehouseResource) -> None:
    with (
        pytest.raises(ValueError, match="timezone-aware"),
        pages_warehouse.page_writer("raw_test_pages", "full-1") as writer,
    ):
        writer.add(
            request_key="x",
            page_nr=0,
            request_params={},
            body="[]",
            record_count=0,
            fetched_at=datetime(2026, 1, 1),
        )


def test_raw_table_names_are_checked(pages_warehouse: WarehouseResource) -> None:
    for bad in ("students", "raw_x; DROP TABLE sync_runs", "RAW_X"):
        with pytest.raises(ValueError, match="raw_<lowercase words>"):
            raw_page_table_ddl(bad)
    with pytest.raises(WarehouseError, match=r"raw_page_table_ddl\('raw_missing'\)"):
        with pages_warehouse.page_writer("raw_missing", "full-1"):
            pass


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (files 0644), restored afterwards: opening the warehouse tightens it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_warehouse_its_log_and_its_new_folder_are_private(
    tmp_path: Path, umask_022: None
) -> None:
    """Personal data: with umask 022 the file was created 0644, readable by every local user."""
    path = tmp_path / "new" / "w.duckdb"
    warehouse = WarehouseResource(path=str(path))
    with warehouse.connection() as conn:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
        conn.execute("COMMIT")
        conn.execute("INSERT INTO t SELECT range FROM range(10)")
        wal = path.with_name("w.duckdb.wal")
        assert wal.exists(), "the write-ahead log exists while the connection is open"
        assert _mode(wal) == 0o600
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


def test_an_existing_readable_warehouse_is_made_private_on_open(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).close()
    path.chmod(0o644)
    with WarehouseResource(path=str(path)).connection():
        pass
    assert _mode(path) == 0o600


def test_duckdb_keeps_to_the_memory_setting_and_spills_beyond_it(warehouse_path: Path) -> None:
    """HUBSYNC_WAREHOUSE_MEMORY_MB reaches DuckDB; a transaction larger than it still commits
    (DuckDB spills to <warehouse>.tmp/ instead of failing or growing the process)."""
    from resources.settings import load_settings
    from resources.warehouse import transaction

    settings = load_settings(
        {"HUBSYNC_WAREHOUSE": str(warehouse_path), "HUBSYNC_WAREHOUSE_MEMORY_MB": "256"}
    )
    warehouse = WarehouseResource.of(settings)
    assert warehouse.memory_mb == 256
    with warehouse.connection() as conn:
        (limit,) = conn.execute("SELECT current_setting('memory_limit')").fetchone() or ("",)
        assert limit == "244.1 MiB"  # 256 MB
        with transaction(conn):
            conn.execute(
                "CREATE TABLE big AS SELECT i, repeat(md5(i::VARCHAR), 16) AS s "
                "FROM range(1000000) t(i)"  # 512 MB of strings, one transaction
            )
        assert conn.execute("SELECT count(DISTINCT s) FROM big").fetchone() == (1000000,)
    assert WarehouseResource(path=str(warehouse_path)).memory_mb == 512  # the default


def _views(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return {row[0] for row in rows}


def test_the_per_type_hub_views_follow_the_object_types_on_every_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views were made inside a migration: a warehouse created before a type was added never
    got its view (the migration had run), while a fresh one did."""
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_schema(conn)
    assert {"hub_desired_users", "hub_state_users", "hub_desired_sections"} <= _views(conn)
    conn.execute("CREATE VIEW hub_state_summary AS SELECT count(*) AS n FROM hub_state")
    # as the migration wrote them before the views followed the types
    conn.execute("DROP VIEW hub_state_terms")
    conn.execute(
        "CREATE VIEW hub_state_terms AS SELECT * FROM hub_state WHERE object_type = 'term';"
    )

    types = {**hub_schema.OBJECT_MODELS, "widget": object}
    del types["term"]
    monkeypatch.setattr(hub_schema, "OBJECT_MODELS", types)
    ensure_schema(conn)  # the same warehouse, started by a hubsync that knows other types
    views = _views(conn)
    assert {"hub_desired_widgets", "hub_state_widgets"} <= views
    assert not {"hub_desired_terms", "hub_state_terms"} & views
    assert "hub_state_summary" in views, "a view someone made themselves stays"
    conn.execute("INSERT INTO hub_desired (object_type, key, payload) VALUES ('widget', 'w', '{}')")
    assert conn.execute("SELECT key FROM hub_desired_widgets").fetchall() == [("w",)]


# -- a run holds the warehouse open between its steps ------------------------------------------


@dg.asset
def orders_descending(warehouse: WarehouseResource) -> None:
    with warehouse.connection() as conn:
        conn.execute("SET GLOBAL default_order = 'DESC'")  # lives as long as the database


@dg.asset(deps=[orders_descending])
def order_seen(warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connection() as conn:
        return dg.MaterializeResult(metadata={"order": default_order(conn)})


def order_seen_by_a_run(warehouse: WarehouseResource, instance: dg.DagsterInstance) -> str:
    result = dg.materialize(
        [orders_descending, order_seen], instance=instance, resources={"warehouse": warehouse}
    )
    (materialization,) = result.asset_materializations_for_node("order_seen")
    return str(materialization.metadata["order"].value)


@pytest.mark.parametrize("storage", ["sqlite", "ephemeral"])
def test_a_run_keeps_the_database_open_between_its_steps_and_closes_it_at_its_end(
    warehouse: WarehouseResource, warehouse_path: Path, storage: str
) -> None:
    instance = dg.instance_for_test() if storage == "sqlite" else dg.DagsterInstance.ephemeral()
    with instance as dagster_instance:
        # the second step sees what the first set in the database: it was not closed between
        assert order_seen_by_a_run(warehouse, dagster_instance) == "DESC"
    assert another_process_can_open(warehouse_path)  # let go at the run's end
    with warehouse.connection() as conn:  # so the next connection opens it anew
        assert default_order(conn) == "ASCENDING"


def test_outside_a_run_each_connection_opens_and_closes_the_database(
    warehouse: WarehouseResource, warehouse_path: Path
) -> None:
    with warehouse.connection() as conn:
        conn.execute("SET GLOBAL default_order = 'DESC'")
        assert default_order(conn) == "DESC"
    assert another_process_can_open(warehouse_path)
    with warehouse.connection() as conn:
        assert default_order(conn) == "ASCENDING"


def test_a_hold_lets_go_as_soon_as_another_run_waits(warehouse_path: Path) -> None:
    waiting = threading.Event()
    hold = RunHold(warehouse_path, waiting.is_set)
    try:
        with duckdb.connect(str(warehouse_path)):
            hold.keep()
        assert not another_process_can_open(warehouse_path)  # held between steps
        waiting.set()
        deadline = time.monotonic() + 5
        while not another_process_can_open(warehouse_path):
            assert time.monotonic() < deadline, "the hold did not let go for the other run"
        assert hold.let_go_for_another_run
        with duckdb.connect(str(warehouse_path)):
            hold.keep()  # for the rest of the run it holds nothing
        assert another_process_can_open(warehouse_path)
    finally:
        hold.release()


def test_a_hold_that_cannot_tell_whether_others_wait_lets_go(warehouse_path: Path) -> None:
    def broken() -> bool:
        raise RuntimeError("the instance's storage is gone")

    hold = RunHold(warehouse_path, broken)
    try:
        with duckdb.connect(str(warehouse_path)):
            hold.keep()
        deadline = time.monotonic() + 5
        while not another_process_can_open(warehouse_path):
            assert time.monotonic() < deadline
    finally:
        hold.release()


def test_other_runs_are_seen_holding_or_waiting_for_the_pool() -> None:
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(WAREHOUSE_POOL, 1)
        storage.claim_concurrency_slot(WAREHOUSE_POOL, "mine", "step_a")
        assert not other_runs_in_pool(instance, "mine")
        storage.claim_concurrency_slot(WAREHOUSE_POOL, "other", "step_b")  # waits: limit 1
        assert other_runs_in_pool(instance, "mine")
        storage.free_concurrency_slots_for_run("other")
        assert not other_runs_in_pool(instance, "mine")
        assert other_runs_in_pool(instance, "someone")  # "mine" holds the slot


def test_a_run_waiting_for_the_pool_gets_the_warehouse_another_run_held(tmp_path: Path) -> None:
    """The first run holds the warehouse open and keeps the pool's slot without using it until
    the second waits for the slot; the second then gets it, and waits for DuckDB's lock. The first
    run's hold must let go while the second waits: otherwise the second gives up on the lock
    (LOCK_TIMEOUT_S), while the first waits for the slot behind it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n"
    )
    warehouse = tmp_path / "warehouse.duckdb"

    def start(which: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.resources.warehouse_runs", which, str(home),
             str(warehouse)],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = start("first")
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "first wrote", first.communicate()
    second = start("second")  # while the first run holds the warehouse and has the slot
    outcomes = [process.communicate(timeout=120) for process in (first, second)]
    assert [out.strip().splitlines()[-1] for out, _ in outcomes] == ["success", "success"], [
        err[-2000:] for _, err in outcomes
    ]
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        order = [
            who for (who,) in conn.execute("SELECT who FROM writes ORDER BY written_at").fetchall()
        ]
    assert order == ["first", "second", "first again"]  # the second got in between


@dg.asset
def writes_much(warehouse: WarehouseResource) -> None:
    with warehouse.connection() as conn:  # about 8 MB of log, under DuckDB's own threshold
        conn.execute("CREATE TABLE much (m VARCHAR)")  # (fewer rows than a row group: logged)
        conn.execute("INSERT INTO much SELECT repeat(md5(i::VARCHAR), 12) FROM range(20000) t(i)")


@dg.asset(deps=[writes_much])
def log_size_seen(warehouse: WarehouseResource) -> dg.MaterializeResult:
    wal = Path(warehouse.path + ".wal")
    return dg.MaterializeResult(metadata={"wal": wal.stat().st_size if wal.exists() else 0})


def test_a_step_that_wrote_much_is_checkpointed_after_it(warehouse: WarehouseResource) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [writes_much, log_size_seen], instance=instance, resources={"warehouse": warehouse}
        )
    (seen,) = result.asset_materializations_for_node("log_size_seen")
    assert seen.metadata["wal"].value < CHECKPOINT_WAL_BYTES  # else it stays in memory
