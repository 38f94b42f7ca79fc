"""The DuckDB warehouse: connections, versioned schema migrations and raw page landing.

Nothing here touches the database file at import. ``WarehouseResource.connection()`` opens it on
use (waiting briefly while another process holds DuckDB's single-writer lock), brings the schema
up to date and always closes it again, so no process keeps the file locked between steps.

The warehouse holds personal data, so its files are private to the user running hubsync (0600,
a folder hubsync creates 0700): opening it makes the process create files without group or
other permissions from then on (DuckDB's write-ahead log comes and goes with every checkpoint),
and a warehouse file or log left readable by others is made private.
"""

import json
import re
import stat
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field

from resources.campusonline.schema import (
    CAMPUSONLINE_SCHEMA,
    CO_CURRENT_BUILT,
    CO_ROW_HASH_MIGRATION,
)
from resources.graph_schema import GRAPH_CONFLICTS_SCHEMA, GRAPH_SCHEMA, GRAPH_VIEWS
from resources.hub.schema import (
    HUB_REFUSALS_SCHEMA,
    HUB_SCHEMA,
    TYPE_VIEW_SQL,
    TYPE_VIEW_TABLES,
    type_views,
)
from resources.lms.schema import LMS_SCHEMA
from resources.private_files import make_new_files_private
from resources.settings import MIN_WAREHOUSE_MEMORY_MB, VARIABLES_BY_NAME, Settings


class WarehouseError(RuntimeError):
    """The warehouse cannot be opened or used; the message names the file and the reason."""


@dataclass(frozen=True)
class Migration:
    """One schema change. ``name`` identifies it for ever (prefix it with the component, e.g.
    ``"campusonline: raw pages"``), so components can add migrations independently."""

    name: str
    sql: str


_RAW_TABLE = re.compile(r"raw_[a-z0-9_]+")


def _check_raw_table_name(name: str) -> None:
    if not _RAW_TABLE.fullmatch(name):
        raise ValueError(f"raw page tables are named raw_<lowercase words> (got {name!r})")


def raw_page_table_ddl(name: str, *, compressed: bool = False) -> str:
    """DDL for a raw page table. Every raw table has this shape, so one writer lands them all.

    ``request_key`` identifies the API call within a sync (one sync makes many calls, e.g. one
    per endpoint, per student or per semester) and ``page_nr`` the page within that call.
    ``compressed``: the body is kept zlib-compressed (``body_zlib``, with ``body_bytes`` its size)
    instead of as JSON, for pages so large that a sync's landing transaction, which DuckDB holds
    in memory, would not fit.
    """
    _check_raw_table_name(name)
    body = (
        """body_zlib BLOB NOT NULL,     -- the response body as received, zlib-compressed
            body_bytes BIGINT NOT NULL,  -- its size uncompressed"""
        if compressed
        else "body JSON NOT NULL,"
    )
    return f"""
        CREATE TABLE {name} (
            sync_key VARCHAR NOT NULL,
            request_key VARCHAR NOT NULL,
            page_nr INTEGER NOT NULL,
            request_params JSON NOT NULL,
            fetched_at TIMESTAMPTZ NOT NULL,
            record_count INTEGER NOT NULL,
            {body}
            PRIMARY KEY (sync_key, request_key, page_nr)
        );
    """


DEFAULT_MEMORY_MB = int(VARIABLES_BY_NAME["HUBSYNC_WAREHOUSE_MEMORY_MB"].default or 0)

# Applied in list order, each in its own transaction; applied names are recorded in
# schema_migrations. Append new migrations at the end; never edit or rename an applied one.
# Columns holding enumerations are plain VARCHAR (no CHECK constraints): DuckDB cannot drop a
# constraint without rebuilding the table, and later issues add values (e.g. effective_mode
# 'fallback').
MIGRATIONS: list[Migration] = [
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
    # Stud.IP (assets/studip/): raw pages, the crawl's staged records per sync key, and the
    # current state merged from them.
    Migration(
        "studip: raw pages, staging and current state",
        raw_page_table_ddl("raw_studip_pages")
        + """
        CREATE TABLE studip_staged_users (
            sync_key VARCHAR NOT NULL, user_id VARCHAR NOT NULL, username VARCHAR NOT NULL,
            perms VARCHAR NOT NULL, email VARCHAR, given VARCHAR, family VARCHAR,
            formatted VARCHAR, datafields MAP(VARCHAR, VARCHAR)
        );
        CREATE TABLE studip_staged_semesters (
            sync_key VARCHAR NOT NULL, semester_id VARCHAR NOT NULL, title VARCHAR NOT NULL,
            token VARCHAR, begin_at TIMESTAMPTZ NOT NULL, end_at TIMESTAMPTZ NOT NULL,
            seminars_begin_at TIMESTAMPTZ, seminars_end_at TIMESTAMPTZ, visible INTEGER
        );
        CREATE TABLE studip_staged_sem_types (
            sync_key VARCHAR NOT NULL, type VARCHAR NOT NULL, name VARCHAR, class VARCHAR
        );
        CREATE TABLE studip_staged_courses (
            sync_key VARCHAR NOT NULL, course_id VARCHAR NOT NULL, number VARCHAR,
            title VARCHAR NOT NULL, subtitle VARCHAR, type VARCHAR NOT NULL,
            start_semester_id VARCHAR, end_semester_id VARCHAR, group_nr INTEGER
        );
        CREATE TABLE studip_staged_memberships (
            sync_key VARCHAR NOT NULL, course_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL
        );
        CREATE TABLE studip_staged_user_institutes (
            sync_key VARCHAR NOT NULL, user_id VARCHAR NOT NULL, institute_id VARCHAR NOT NULL,
            relation VARCHAR NOT NULL, perms VARCHAR, name VARCHAR, faculty_name VARCHAR,
            city VARCHAR
        );
        CREATE TABLE studip_users (
            user_id VARCHAR NOT NULL, username VARCHAR NOT NULL, perms VARCHAR NOT NULL,
            email VARCHAR, given VARCHAR, family VARCHAR, formatted VARCHAR,
            datafields MAP(VARCHAR, VARCHAR), changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_semesters (
            semester_id VARCHAR NOT NULL, title VARCHAR NOT NULL, token VARCHAR,
            begin_at TIMESTAMPTZ NOT NULL, end_at TIMESTAMPTZ NOT NULL,
            seminars_begin_at TIMESTAMPTZ, seminars_end_at TIMESTAMPTZ, visible INTEGER,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_courses (
            course_id VARCHAR NOT NULL, number VARCHAR, title VARCHAR NOT NULL, subtitle VARCHAR,
            type VARCHAR NOT NULL, type_name VARCHAR, type_class VARCHAR,
            start_semester_id VARCHAR, end_semester_id VARCHAR, group_nr INTEGER,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_memberships (
            course_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, status VARCHAR NOT NULL,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_institutes (
            institute_id VARCHAR NOT NULL, name VARCHAR, faculty_name VARCHAR, city VARCHAR,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_user_institutes (
            user_id VARCHAR NOT NULL, institute_id VARCHAR NOT NULL, relation VARCHAR NOT NULL,
            perms VARCHAR, changed_in_sync VARCHAR NOT NULL
        );
        """,
    ),
    Migration(
        "campusonline: raw pages, staging, current state and cursor",
        raw_page_table_ddl("raw_co_students")
        + raw_page_table_ddl("raw_co_studies")
        + raw_page_table_ddl("raw_co_applications")
        + CAMPUSONLINE_SCHEMA,
    ),
    Migration(
        "lms: raw registrations, watermarks, staging and current state",
        raw_page_table_ddl("raw_lms_active_registrations")
        + raw_page_table_ddl("raw_lms_completed_registrations")
        + LMS_SCHEMA,
    ),
    Migration("hub: desired and acknowledged state, events, batches, log", HUB_SCHEMA),
    Migration("graph: persons and identity links", GRAPH_SCHEMA),
    Migration("graph: views joining persons to every source", GRAPH_VIEWS),
    # ?semester= returns every course running in the semester: which selected semester a course
    # came back for gives an unlimited course its HUB term; study groups are no HUB sections.
    Migration(
        "studip: the selected semesters a course was returned for, and study groups",
        """
        ALTER TABLE studip_staged_courses ADD COLUMN semester_id VARCHAR;
        ALTER TABLE studip_staged_sem_types ADD COLUMN studygroup BOOLEAN;
        ALTER TABLE studip_courses ADD COLUMN first_selected_semester_id VARCHAR;
        ALTER TABLE studip_courses ADD COLUMN studygroup BOOLEAN;
        """,
    ),
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
    # The Stud.IP listing's pages (JSON:API) are large (a 100,000-user listing is over 1 GB of
    # JSON) and land in one transaction, whose strings DuckDB holds in memory: they are stored
    # zlib-compressed (about 15x smaller). assets/studip/listing.py:listing_pages reads them.
    Migration(
        "studip: the listing's raw pages, compressed",
        raw_page_table_ddl("raw_studip_listing_pages", compressed=True),
    ),
    # CO pages too: 310 MB of JSON at 100,000 students, landed in one transaction with the
    # cursor. New pages keep body NULL and body_zlib set; pages landed before keep body.
    Migration(
        "co: raw pages compressed",
        "".join(
            f"""
            ALTER TABLE {table} ADD COLUMN body_zlib BLOB;
            ALTER TABLE {table} ADD COLUMN body_bytes BIGINT;
            ALTER TABLE {table} ALTER COLUMN body DROP NOT NULL;
            """
            for table in ("raw_co_students", "raw_co_studies", "raw_co_applications")
        ),
    ),
    # CO rows are validated and hashed in DuckDB now (assets/campusonline/staging.py): rows
    # staged and current before keep comparing equal to the same rows staged after.
    Migration("co: row hashes over the typed content columns", CO_ROW_HASH_MIGRATION),
    Migration("co: the sync whose state the current tables hold", CO_CURRENT_BUILT),
    # One naming for every source's staged records: raw_<system>_*, stg_<system>_*, <system>_*.
    Migration(
        "studip: staging tables named stg_studip_*",
        "".join(
            f"ALTER TABLE studip_staged_{name} RENAME TO stg_studip_{name};"
            for name in ("users", "semesters", "sem_types", "courses", "memberships")
        )
        + "ALTER TABLE studip_staged_user_institutes RENAME TO stg_studip_user_institutes;",
    ),
    Migration(
        "lms: staging table named stg_lms_registrations",
        "ALTER TABLE lms_registration_items RENAME TO stg_lms_registrations;",
    ),
]


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
    """Apply the migrations (default: ``MIGRATIONS``) the warehouse has not seen yet, in order;
    return how many are applied in all.

    Idempotent and cheap when up to date (one catalog check and one query).
    """
    if migrations is None:
        migrations = MIGRATIONS
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
    """A raw page's body as stored in ``body_zlib``: level 1, fast, about 15x smaller for JSON."""
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
    _check_raw_table_name(table)
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


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. Open it only through ``connection()`` or ``page_writer()``."""

    path: str = Field(description="Absolute path of the DuckDB file (HUBSYNC_WAREHOUSE).")
    lock_timeout_s: float = Field(
        default=10.0,
        description="How long to wait while another process holds the DuckDB lock.",
    )
    memory_mb: int = Field(
        default=DEFAULT_MEMORY_MB,
        ge=MIN_WAREHOUSE_MEMORY_MB,
        description="What DuckDB may hold in memory before it spills to <file>.tmp/ "
        "(HUBSYNC_WAREHOUSE_MEMORY_MB).",
    )

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> "WarehouseResource":
        """The warehouse the settings name (HUBSYNC_WAREHOUSE, HUBSYNC_WAREHOUSE_MEMORY_MB)."""
        return cls(
            path=str(settings.warehouse_path),
            memory_mb=settings.warehouse_memory_mb,
            **overrides,
        )

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the schema up to date; closed when the block ends."""
        path = Path(self.path)
        conn = connect(path, self.lock_timeout_s, self.memory_mb)
        try:
            ensure_schema(conn)
            yield conn
        finally:
            conn.close()

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
        _check_raw_table_name(table)
        with self.connection() as conn, transaction(conn):
            try:
                conn.execute(f"DELETE FROM {table} WHERE sync_key = ?", [sync_key])
            except duckdb.CatalogException as exc:
                raise WarehouseError(
                    f"{table} does not exist in {self.path}; create it in a migration "
                    f"with raw_page_table_ddl({table!r})"
                ) from exc
            yield PageWriter(conn, table, sync_key)
