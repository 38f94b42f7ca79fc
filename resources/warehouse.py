"""The DuckDB warehouse: connections, versioned schema migrations and raw page landing.

Nothing here touches the database file at import. ``WarehouseResource.connection()`` opens it on
use (waiting briefly while another process holds DuckDB's single-writer lock), brings the schema
up to date and closes it again. Within a Dagster run the database itself stays open from the
first connection to the run's end (``RunHold``): opening it and checkpointing on close cost each
step 25-50 ms. The hold ends early as soon as another run waits for pool ``duckdb``, so a run
never keeps the file from another run's step.

The warehouse holds personal data, so its files are private to the user running hubsync (0600,
a folder hubsync creates 0700): opening it makes the process create files without group or
other permissions from then on (DuckDB's write-ahead log comes and goes with every checkpoint),
and a warehouse file or log left readable by others is made private.
"""

import json
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from resources import sources
from resources.graph_changes import GRAPH_CHANGES_SCHEMA
from resources.graph_schema import GRAPH_CONFLICTS_SCHEMA, GRAPH_SCHEMA, GRAPH_VIEWS
from resources.hub.schema import (
    HUB_COMPRESSED_ENVELOPES_SCHEMA,
    HUB_REFUSALS_SCHEMA,
    HUB_SCHEMA,
    TYPE_VIEW_SQL,
    TYPE_VIEW_TABLES,
    type_views,
)
from resources.migrations import Migration, check_raw_table_name
from resources.private_files import make_new_files_private
from resources.settings import Settings, setting_default, setting_field


class WarehouseError(RuntimeError):
    """The warehouse cannot be opened or used; the message names the file and the reason."""


DEFAULT_MEMORY_MB: int = setting_default("HUBSYNC_WAREHOUSE_MEMORY_MB")

# Applied in list order, each in its own transaction; applied names are recorded in
# schema_migrations. Append new migrations at the end; never edit or rename an applied one.
# Columns holding enumerations are plain VARCHAR (no CHECK constraints): DuckDB cannot drop a
# constraint without rebuilding the table, and later issues add values (e.g. effective_mode
# 'fallback').
CORE_MIGRATIONS: list[Migration] = [
    Migration(
        "core: sync runs and quarantine",
        """
        CREATE TABLE sync_runs (
            key VARCHAR PRIMARY KEY,         -- the sync_runs partition key
            mode VARCHAR NOT NULL,           -- 'full' | 'incremental', from the key
            effective_mode VARCHAR NOT NULL, -- what actually ran, e.g. 'fallback' to full
            status VARCHAR NOT NULL,         -- 'running' | 'success' | 'failed'
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            watermarks JSON,                 -- per-source cursors used/reached by this sync
            summary JSON,                    -- counts written by sync_summary
            error VARCHAR
        );
        CREATE TABLE quarantine (
            source VARCHAR NOT NULL,         -- 'co' | 'studip' | 'lms' | 'hub'
            record_type VARCHAR NOT NULL,
            record_key VARCHAR,
            reason VARCHAR NOT NULL,
            sync_key VARCHAR NOT NULL,
            raw JSON,
            quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
]
# The graph's and the HUB's tables, applied after every source's (the graph's views join them).
SHARED_MIGRATIONS: list[Migration] = [
    Migration("hub: desired and acknowledged state, events, batches, log", HUB_SCHEMA),
    Migration("graph: persons and identity links", GRAPH_SCHEMA),
    Migration("graph: views joining persons to every source", GRAPH_VIEWS),
    Migration("hub: refused objects and messages given up", HUB_REFUSALS_SCHEMA),
    Migration("graph: identity conflicts and blocked persons", GRAPH_CONFLICTS_SCHEMA),
    # resources/hub/identity.py: the HUB that hub_state belongs to (one row).
    Migration(
        "hub: identity of the HUB the acknowledged state belongs to",
        """
        CREATE TABLE hub_identity (
            api_url VARCHAR NOT NULL,        -- HUB_API_URL without user info or query
            org_id VARCHAR NOT NULL,         -- HUB_ORG_ID
            since TIMESTAMPTZ NOT NULL       -- first delivery, or the last hubsync hub-reset
        );
        """,
    ),
    Migration("graph: changes awaiting the next hub_desired build", GRAPH_CHANGES_SCHEMA),
    Migration("hub: batch envelopes kept zlib-compressed", HUB_COMPRESSED_ENVELOPES_SCHEMA),
]


def all_migrations() -> list[Migration]:
    """Every migration in the order a new warehouse applies them: the core's, each source
    system's (``SourceSystem.migrations``, in registry order), then the graph's and the HUB's.
    Read from the registry when called, so a source registered later is included."""
    return [
        *CORE_MIGRATIONS,
        *(m for system in sources.SOURCE_SYSTEMS for m in system.migrations()),
        *SHARED_MIGRATIONS,
    ]


# Every step that opens the warehouse is in this Dagster pool (dagster.yaml limits it to one).
WAREHOUSE_POOL = "duckdb"
HOLD_WATCH_S = 0.2  # how often a run holding the warehouse asks whether another run waits
CHECKPOINT_WAL_BYTES = 4 * 2**20  # a held warehouse is checkpointed after a step wrote more


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Commit on clean exit, roll back on any exception."""
    conn.begin()
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def applied_migrations(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The names of the applied migrations, in the order they were applied."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            name VARCHAR PRIMARY KEY,
            position INTEGER NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    return [
        row[0]
        for row in conn.execute("SELECT name FROM schema_migrations ORDER BY position").fetchall()
    ]


def ensure_schema(
    conn: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] | None = None
) -> int:
    """Apply the migrations (default: ``all_migrations()``) the warehouse has not seen yet, in
    order; return how many are applied in all.

    Idempotent and cheap when up to date (one catalog check and one query).
    """
    if migrations is None:
        migrations = all_migrations()
    names = [m.name for m in migrations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"migration names must be unique (repeated: {', '.join(duplicates)})")
    applied = applied_migrations(conn)
    unknown = [name for name in applied if name not in names]
    if unknown:
        raise WarehouseError(
            f"the warehouse has migrations this hubsync does not know "
            f"({', '.join(unknown)}); it was written by a newer hubsync: upgrade hubsync"
        )
    for migration in migrations:
        if migration.name in applied:
            continue
        try:
            with transaction(conn):
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [migration.name, len(applied) + 1],
                )
        except duckdb.Error as exc:
            raise WarehouseError(f"migration {migration.name!r} failed: {exc}") from exc
        applied.append(migration.name)
    ensure_type_views(conn)
    return len(applied)


def ensure_type_views(conn: duckdb.DuckDBPyConnection) -> None:
    """Make the HUB's per-type views (``hub_desired_users``, …) match ``OBJECT_MODELS``: add
    those of new types, drop those of types that are gone (only views of that exact form: views
    people made themselves stay). Two catalog queries when nothing changed."""
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
        ).fetchall()
    }
    if not set(TYPE_VIEW_TABLES) <= tables:
        return  # a warehouse with only some components' migrations (tests)
    present = {
        name
        for name, sql in conn.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal"
        ).fetchall()
        if TYPE_VIEW_SQL.fullmatch(sql)
    }
    wanted = type_views()
    if present == wanted.keys():
        return
    with transaction(conn):
        for name in sorted(present - wanted.keys()):
            conn.execute(f"DROP VIEW {name}")
        for name in sorted(wanted.keys() - present):
            conn.execute(f"CREATE OR REPLACE VIEW {name} AS {wanted[name]}")


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return "could not set lock" in str(exc).lower()


def _duckdb_detail(exc: duckdb.Error) -> str:
    return str(exc).removeprefix("IO Error: ")


def _make_private(path: Path) -> None:
    """Take group and other permissions off ``path`` (when it exists and is ours to change)."""
    for file in (path, path.with_name(path.name + ".wal")):
        try:
            mode = file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                file.chmod(stat.S_IMODE(mode) & ~(stat.S_IRWXG | stat.S_IRWXO))
        except OSError:
            pass  # absent, or another user's file: DuckDB reports what matters on open


def connect(
    path: Path, lock_timeout_s: float = 10.0, memory_mb: int = DEFAULT_MEMORY_MB
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, creating its folder, retrying while another process holds the lock.

    The file, its write-ahead log and a folder created here are private to this user. DuckDB
    holds at most ``memory_mb`` in memory and spills the rest to ``<file>.tmp/``."""
    make_new_files_private()
    _make_private(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WarehouseError(
            f"cannot create the folder of the warehouse {path}: {exc.strerror}"
        ) from exc
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            conn = duckdb.connect(str(path))
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc):
                raise WarehouseError(
                    f"cannot open the warehouse {path}: {_duckdb_detail(exc)}"
                ) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WarehouseError(
                    f"the warehouse {path} is locked by another process "
                    f"(waited {lock_timeout_s:g} s): {_duckdb_detail(exc)}"
                ) from exc
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)
        else:
            # Timestamps come back and render in UTC whatever the machine's zone.
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
            return conn


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"request parameter of type {type(value).__name__} is not JSON serializable")


class PageWriter:
    """Lands the pages of one raw table for one sync key inside an open transaction.

    Made by ``WarehouseResource.page_writer``; pages go straight to DuckDB, nothing is buffered.
    ``compressed``: bodies go to ``body_zlib`` (see ``raw_page_table_ddl``), read them back with
    ``raw_page_bodies``.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        table: str,
        sync_key: str,
        *,
        compressed: bool = False,
    ) -> None:
        self._conn = conn
        self.table = table
        self.sync_key = sync_key
        self.compressed = compressed
        self.pages = 0
        self.records = 0
        self.seconds = 0.0  # spent inserting (and compressing) pages

    def add(
        self,
        *,
        request_key: str,
        page_nr: int,
        request_params: Mapping[str, Any],
        body: str | bytes,
        record_count: int,
        fetched_at: datetime | None = None,
    ) -> None:
        """Insert one page. ``body`` is the response's JSON text; it is validated as JSON unless
        the writer is ``compressed`` (its caller parsed it already)."""
        with self._timed():
            if fetched_at is None:
                fetched_at = datetime.now(UTC)
            elif fetched_at.tzinfo is None:
                raise ValueError("fetched_at must be timezone-aware")
            params = json.dumps(request_params, sort_keys=True, default=_json_default)
            if self.compressed:
                raw = body.encode("utf-8") if isinstance(body, str) else body
                self._conn.execute(
                    f"""INSERT INTO {self.table} (sync_key, request_key, page_nr, request_params,
                            fetched_at, record_count, body_zlib, body_bytes)
                        VALUES (?, ?, ?, ?::JSON, ?, ?, ?, ?)""",
                    [self.sync_key, request_key, page_nr, params, fetched_at, record_count,
                     deflate(raw), len(raw)],
                )  # fmt: skip
            else:
                text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
                try:
                    self._conn.execute(
                        f"INSERT INTO {self.table} VALUES (?, ?, ?, ?::JSON, ?, ?, ?::JSON)",
                        [self.sync_key, request_key, page_nr, params, fetched_at, record_count,
                         text],
                    )  # fmt: skip
                except duckdb.ConversionException as exc:
                    raise WarehouseError(
                        f"{self.table}: page {page_nr} of {request_key!r} is not valid JSON: {exc}"
                    ) from exc
            self.pages += 1
            self.records += record_count

    @contextmanager
    def _timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    def execute(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] | None = None
    ) -> duckdb.DuckDBPyConnection:
        """Run another statement in the same transaction as the pages, e.g. a cursor update that
        must commit (or roll back) together with them."""
        return self._conn.execute(sql, parameters)


def deflate(body: bytes) -> bytes:
    """A raw page's body as stored in ``body_zlib`` (and a HUB batch's envelope in
    ``envelope_zlib``): level 1, fast, about 7-15x smaller for JSON."""
    return zlib.compress(body, 1)


def inflate(body_zlib: bytes) -> str:
    """A compressed raw page's body (``body_zlib``) as the JSON text received."""
    return zlib.decompress(body_zlib).decode("utf-8", errors="replace")


def table_columns(conn: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    """The names of ``table``'s columns."""
    rows = conn.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
    ).fetchall()
    return {name for (name,) in rows}


def raw_page_bodies(
    conn: duckdb.DuckDBPyConnection, table: str, sync_key: str
) -> Iterator[tuple[str, int, str]]:
    """(request_key, page_nr, body as JSON text) of the key's pages in ``table``, in landing
    order, compressed or not, read a few at a time through a cursor of its own (``conn`` may go
    on writing meanwhile)."""
    for request_key, page_nr, body in raw_page_bytes(conn, table, sync_key):
        yield request_key, page_nr, body.decode("utf-8", errors="replace")


def raw_page_bytes(
    conn: duckdb.DuckDBPyConnection, table: str, sync_key: str
) -> Iterator[tuple[str, int, bytes]]:
    """``raw_page_bodies`` with each body as UTF-8 bytes: what a DuckDB query takes fastest
    (a BLOB parameter, ``decode``d in SQL, binds in a third of a VARCHAR's time)."""
    check_raw_table_name(table)
    columns = table_columns(conn, table)
    text = "body::VARCHAR" if "body" in columns else "NULL"
    packed = "body_zlib" if "body_zlib" in columns else "NULL"
    reader = conn.cursor()
    try:
        reader.execute(
            f"SELECT request_key, page_nr, {text}, {packed} FROM {table} WHERE sync_key = ? "
            "ORDER BY fetched_at, request_key, page_nr",
            [sync_key],
        )
        while chunk := reader.fetchmany(16):
            for request_key, page_nr, body, body_zlib in chunk:
                yield (
                    request_key,
                    page_nr,
                    zlib.decompress(body_zlib) if body_zlib is not None else body.encode(),
                )
    finally:
        reader.close()


class RunHold:
    """Keeps one run's warehouse open between its steps, until ``release``.

    DuckDB closes a database with its last connection (checkpointing it) and opens it again
    with the next; one more connection held here keeps it open, so each step's connection is
    cheap and finds the blocks the steps before it read still cached (within the memory
    setting). A step that wrote much is checkpointed after it, as closing did.

    The file stays locked meanwhile, so a thread asks every ``HOLD_WATCH_S`` whether another
    run wants it (``others_waiting``) and then lets go for the rest of the run: that run's step,
    which waits for the pool and then for the lock, gets it within a moment.
    """

    def __init__(self, path: Path, others_waiting: Callable[[], bool]) -> None:
        self._path = path
        self._others_waiting = others_waiting
        self._lock = threading.Lock()
        self._held: duckdb.DuckDBPyConnection | None = None
        self._done = threading.Event()
        self.schema_checked = False
        self.let_go_for_another_run = False
        self._watcher = threading.Thread(target=self._watch, name="warehouse-hold", daemon=True)
        self._watcher.start()

    def keep(self) -> None:
        """Hold the database open; call it while a connection to it is open (so this one
        joins that database instead of opening the file)."""
        with self._lock:
            if self._held is None and not self._done.is_set():
                self._held = duckdb.connect(str(self._path))

    def checkpoint_if_large(self) -> None:
        """Checkpoint when the write-ahead log passed ``CHECKPOINT_WAL_BYTES``, as closing the
        database did: what a step wrote (a landing) otherwise stays in memory meanwhile."""
        with self._lock:
            wal = self._path.with_name(self._path.name + ".wal")
            if (
                self._held is not None
                and wal.exists()
                and wal.stat().st_size > CHECKPOINT_WAL_BYTES
            ):
                try:
                    self._held.execute("CHECKPOINT")
                except duckdb.Error:
                    pass  # a transaction is open (a nested connection): DuckDB does it later

    def release(self) -> None:
        """Stop holding; the database closes with the last connection still open."""
        self._done.set()
        with self._lock:
            if self._held is not None:
                self._held.close()
                self._held = None

    def _watch(self) -> None:
        while not self._done.wait(HOLD_WATCH_S):
            try:
                waiting = self._others_waiting()
            except Exception:  # cannot tell: let go rather than risk blocking another run
                waiting = True
            if waiting:
                self.let_go_for_another_run = True
                self.release()


def other_runs_in_pool(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether a run other than ``run_id`` holds or waits for a slot of the warehouse pool."""
    info = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    return bool((info.active_run_ids | info.pending_run_ids) - {run_id})


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. Open it only through ``connection()`` or ``page_writer()``."""

    path: str = Field(description="Absolute path of the DuckDB file (HUBSYNC_WAREHOUSE).")
    lock_timeout_s: float = Field(
        default=10.0,
        description="How long to wait while another process holds the DuckDB lock.",
    )
    memory_mb: int = setting_field(
        "HUBSYNC_WAREHOUSE_MEMORY_MB",
        "What DuckDB may hold in memory before it spills to <file>.tmp/",
    )
    _hold: RunHold | None = PrivateAttr(default=None)  # set while a run executes

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> "WarehouseResource":
        """The warehouse the settings name (HUBSYNC_WAREHOUSE, HUBSYNC_WAREHOUSE_MEMORY_MB)."""
        return cls(
            path=str(settings.warehouse_path),
            memory_mb=settings.warehouse_memory_mb,
            **overrides,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """In a run (once per run with the in-process executor), hold the warehouse open
        between steps while no other run waits for it (``RunHold``)."""
        instance, run_id = context.instance, context.run_id
        if instance is not None and run_id is not None:
            self._hold = RunHold(Path(self.path), lambda: other_runs_in_pool(instance, run_id))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the schema up to date; closed when the block ends."""
        path = Path(self.path)
        conn = connect(path, self.lock_timeout_s, self.memory_mb)
        hold = self._hold
        try:
            if hold is None or not hold.schema_checked:
                ensure_schema(conn)
            if hold is not None:
                hold.schema_checked = True
                hold.keep()
            yield conn
        finally:
            conn.close()
            if hold is not None:
                hold.checkpoint_if_large()

    def ensure_schema(self) -> int:
        """Bring the schema up to date; return how many migrations are applied."""
        with self.connection() as conn:
            return len(applied_migrations(conn))

    @contextmanager
    def page_writer(self, table: str, sync_key: str) -> Iterator[PageWriter]:
        """Replace the pages of ``table`` for ``sync_key`` in one transaction.

        The key's existing pages are deleted first; the new pages (and anything run through
        ``PageWriter.execute``) commit together on clean exit. On an exception everything rolls
        back, so the previous pages of the key stay intact.
        """
        check_raw_table_name(table)
        with self.connection() as conn, transaction(conn):
            try:
                conn.execute(f"DELETE FROM {table} WHERE sync_key = ?", [sync_key])
            except duckdb.CatalogException as exc:
                raise WarehouseError(
                    f"{table} does not exist in {self.path}; create it in a migration "
                    f"with raw_page_table_ddl({table!r})"
                ) from exc
            yield PageWriter(conn, table, sync_key)
