"""LMS registrations: raw landing per sync with the fromDate watermark, and the current state.

``lms_registration_pages`` lands both endpoints of one sync in ONE DuckDB transaction: the raw
pages as received, the validated items (``stg_lms_registrations``; malformed ones go to
``quarantine``) and, per endpoint, the watermark row (``lms_watermarks``) holding the fromDate
sent and ``nextFromDate``, the time taken just before the endpoint's first call. The next
incremental sync sends that ``nextFromDate``; nothing is stored unless both endpoints were read
to the end, so a failed sync advances nothing. A full sync reads from the beginning of time.

``lms_current_state`` builds ``lms_registrations``, ``lms_courses`` and ``lms_learners`` in
SQL: the items of the latest successful full sync overlaid with every later sync, one row per
``RegistrationId`` (the latest fetched wins: a later sync, then the completed endpoint, which is
read after the active one, then the later page and position). A registration absent from the
latest full sync is gone. ``changed_in_sync`` names the sync that last changed a row. An
incremental sync that follows the landing the tables hold (``lms_current_built``) applies only
its own items (``overlay``), which gives the same tables.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
import duckdb

from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import sync_run
from resources.change_detection import current_state_build, row_hash_sql
from resources.graph_changes import note_changed_rows, note_changes, note_rebuild
from resources.lms import (
    ENDPOINTS,
    REGISTRATION_STATUS_NAMES,
    STUDENT_ID_FIELD,
    Endpoint,
    LmsClient,
    LmsResource,
    Registration,
    validate_registration,
)
from resources.quarantine import quarantine
from resources.warehouse import WAREHOUSE_POOL, PageWriter, WarehouseResource, transaction

SOURCE = "lms"
GROUP = "lms"
RAW_TABLES: dict[Endpoint, str] = {
    "active": "raw_lms_active_registrations",
    "completed": "raw_lms_completed_registrations",
}

# Columns of stg_lms_registrations after (sync_key, endpoint, page_nr), as DuckDB JSON types:
# the validated items of a page go in as one JSON document, unnested by DuckDB.
ITEM_COLUMNS: dict[str, str] = {
    "item_nr": "INTEGER",
    "RegistrationId": "VARCHAR",
    "RegistrationStatus": "INTEGER",
    "RegistrationDate": "TIMESTAMPTZ",
    "CompletionDate": "TIMESTAMPTZ",
    "CompletionLocation": "VARCHAR",
    "CourseId": "VARCHAR",
    "CourseCode": "VARCHAR",
    "CourseName": "VARCHAR",
    "OfferingShortId": "VARCHAR",
    "OrganizationLoginId": "VARCHAR",
    "UniqueLoginId": "VARCHAR",
    "EmailAddress": "VARCHAR",
    "ContactEmail": "VARCHAR",
    "FirstName": "VARCHAR",
    "LastName": "VARCHAR",
    "OrgProfileFieldValues": "JSON",
}

REGISTRATION_SCHEMA = {
    "RegistrationId": "VARCHAR",
    "RegistrationStatus": "INTEGER",
    "RegistrationStatusName": "VARCHAR",
    "RegistrationDate": "TIMESTAMPTZ",
    "CompletionDate": "TIMESTAMPTZ",
    "CompletionLocation": "VARCHAR",
    "CourseId": "VARCHAR",
    "CourseCode": "VARCHAR",
    "OfferingShortId": "VARCHAR",
    "OrganizationLoginId": "VARCHAR",
    "UniqueLoginId": "VARCHAR",
    "EmailAddress": "VARCHAR",
    "OrgProfileFieldValues": "MAP(VARCHAR, VARCHAR)",
    "fetched_in_sync": "VARCHAR",
    "row_hash": "VARCHAR",
    "changed_in_sync": "VARCHAR",
}
COURSE_SCHEMA = {
    "CourseId": "VARCHAR",
    "CourseCode": "VARCHAR",
    "CourseName": "VARCHAR",
    "OfferingShortIds": "VARCHAR[]",
    "row_hash": "VARCHAR",
    "changed_in_sync": "VARCHAR",
}
LEARNER_SCHEMA = {
    "OrganizationLoginId": "VARCHAR",
    "UniqueLoginId": "VARCHAR",
    "EmailAddress": "VARCHAR",
    "ContactEmail": "VARCHAR",
    "FirstName": "VARCHAR",
    "LastName": "VARCHAR",
    "StudentId": "VARCHAR",
    "OrgProfileFieldValues": "MAP(VARCHAR, VARCHAR)",
    "row_hash": "VARCHAR",
    "changed_in_sync": "VARCHAR",
}
STATE_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "lms_registrations": ("RegistrationId", REGISTRATION_SCHEMA),
    "lms_courses": ("CourseId", COURSE_SCHEMA),
    "lms_learners": ("OrganizationLoginId", LEARNER_SCHEMA),
}


def _status_name_sql(column: str) -> str:
    cases = " ".join(
        f"WHEN {code} THEN '{name}'" for code, name in REGISTRATION_STATUS_NAMES.items()
    )
    return f"CASE {column} {cases} END"


# --------------------------------------------------------------------------------------------
# Landing


@dataclass
class EndpointLanding:
    """What landing one endpoint did, for the watermark row and the metadata."""

    endpoint: Endpoint
    from_date: datetime | None
    next_from_date: datetime
    pages: int = 0
    items: int = 0
    valid: int = 0
    quarantined: int = 0
    stepped_back_pages: int = 0
    total_items: int = 0  # TotalItems of the last page
    registration_ids: set[str] = field(default_factory=set)
    requests: dict[str, float] = field(default_factory=dict)  # API calls, bytes, token numbers
    seconds: float = 0.0

    @property
    def duplicates_dropped(self) -> int:
        return self.valid - len(self.registration_ids)


def previous_next_from_date(
    conn: duckdb.DuckDBPyConnection, endpoint: Endpoint, key: str, before: datetime
) -> datetime | None:
    """The ``nextFromDate`` the latest earlier LMS landing stored for ``endpoint``, if any."""
    row = conn.execute(
        """
        SELECT next_from_date FROM lms_watermarks
        WHERE endpoint = ? AND sync_key <> ? AND sync_started_at <= ?
        ORDER BY sync_started_at DESC, landed_at DESC
        LIMIT 1
        """,
        [endpoint, key, before],
    ).fetchone()
    return row[0] if row else None


def clear_landing(conn: duckdb.DuckDBPyConnection, key: str) -> None:
    """Forget what an earlier run of this key landed (re-running a key replaces it)."""
    for table in (*RAW_TABLES.values(), "stg_lms_registrations", "lms_watermarks"):
        conn.execute(f"DELETE FROM {table} WHERE sync_key = ?", [key])
    conn.execute("DELETE FROM quarantine WHERE source = ? AND sync_key = ?", [SOURCE, key])


def _item_row(item_nr: int, registration: Registration) -> dict[str, Any]:
    row = registration.model_dump(mode="json", include=set(ITEM_COLUMNS))
    row["item_nr"] = item_nr
    row["OrgProfileFieldValues"] = registration.profile
    return row


_ITEM_STRUCTURE = json.dumps([ITEM_COLUMNS])
_INSERT_ITEMS = f"""
    INSERT INTO stg_lms_registrations
    SELECT ?, ?, ?, {", ".join(f"r.{c}" for c in ITEM_COLUMNS if c != "OrgProfileFieldValues")},
        CAST(r.OrgProfileFieldValues AS MAP(VARCHAR, VARCHAR))
    FROM (SELECT unnest(from_json(?::JSON, '{_ITEM_STRUCTURE}')) AS r)
"""


def quarantine_item(
    conn: duckdb.DuckDBPyConnection, key: str, item: Any, reason: str, endpoint: Endpoint
) -> None:
    record_key = item.get("RegistrationId") if isinstance(item, dict) else None
    record_key = record_key if isinstance(record_key, str) else None
    quarantine(conn, SOURCE, key, f"{endpoint} registration", record_key, reason, json.dumps(item))


def land_endpoint(
    conn: duckdb.DuckDBPyConnection,
    client: LmsClient,
    key: str,
    landing: EndpointLanding,
    log: dg.DagsterLogManager | None = None,
) -> None:
    """Page one endpoint into its raw table and the item staging table, page by page."""
    writer = PageWriter(conn, RAW_TABLES[landing.endpoint], key)
    for page in client.registration_pages(landing.endpoint, landing.from_date):
        writer.add(
            request_key=landing.endpoint,
            page_nr=page.page_nr,
            request_params=page.params,
            body=page.body,
            record_count=len(page.items),
            fetched_at=page.fetched_at,
        )
        landing.pages += 1
        landing.items += len(page.items)
        landing.total_items = page.total_items
        landing.stepped_back_pages += int(page.stepped_back)
        rows = []
        for item_nr, item in enumerate(page.items):
            try:
                registration = validate_registration(item)
            except ValueError as exc:
                quarantine_item(conn, key, item, str(exc), landing.endpoint)
                landing.quarantined += 1
                continue
            rows.append(_item_row(item_nr, registration))
            landing.registration_ids.add(registration.RegistrationId)
        if rows:
            conn.execute(_INSERT_ITEMS, [key, landing.endpoint, page.page_nr, json.dumps(rows)])
        landing.valid += len(rows)
        if log is not None:
            log.debug(
                f"{landing.endpoint} page {page.page_nr}: {len(page.items)} items, "
                f"TotalItems {page.total_items}"
            )


def record_watermarks(
    conn: duckdb.DuckDBPyConnection, key: str, landings: list[EndpointLanding]
) -> None:
    """The watermark rows and the sync's ``sync_runs.watermarks['lms']``, in the caller's
    transaction (the one holding the pages)."""
    sync = parse_sync_key(key)
    now = datetime.now(UTC)
    for landing in landings:
        conn.execute(
            "INSERT INTO lms_watermarks VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                key,
                landing.endpoint,
                sync.mode,
                sync.started_at,
                landing.from_date,
                landing.next_from_date,
                now,
            ],
        )
    used = {
        landing.endpoint: {
            "fromDate": landing.from_date.isoformat() if landing.from_date else None,
            "nextFromDate": landing.next_from_date.isoformat(),
        }
        for landing in landings
    }
    row = conn.execute("SELECT watermarks FROM sync_runs WHERE key = ?", [key]).fetchone()
    if row is None:
        return  # the sync's row is opened by sync_run; without it there is nothing to annotate
    watermarks = json.loads(row[0]) if row[0] else {}
    watermarks[SOURCE] = used  # read-modify-write is safe: the caller's transaction holds it
    conn.execute(
        "UPDATE sync_runs SET watermarks = ?::JSON WHERE key = ?", [json.dumps(watermarks), key]
    )


def land_registrations(
    conn: duckdb.DuckDBPyConnection,
    client: LmsClient,
    key: str,
    log: dg.DagsterLogManager | None = None,
) -> list[EndpointLanding]:
    """Land both endpoints for sync ``key`` with their watermarks, in one transaction."""
    sync = parse_sync_key(key)
    landings = []
    with transaction(conn):
        clear_landing(conn, key)
        for endpoint in ENDPOINTS:
            from_date = (
                None
                if sync.mode == "full"
                else previous_next_from_date(conn, endpoint, key, sync.started_at)
            )
            # Taken just before the endpoint's first call (the seed's rule): anything modified
            # while it is paged is then read again by the next sync.
            landing = EndpointLanding(endpoint, from_date, datetime.now(UTC))
            before, started = _client_numbers(client), time.perf_counter()
            land_endpoint(conn, client, key, landing, log)
            landing.seconds = time.perf_counter() - started
            landing.requests = {
                k: round(v - before[k], 3) for k, v in _client_numbers(client).items()
            }
            landings.append(landing)
        record_watermarks(conn, key, landings)
    return landings


def _raw_metadata(landing: EndpointLanding) -> dict[str, Any]:
    return {
        "pages": landing.pages,
        "records": landing.items,
        "dagster/row_count": landing.items,
        "quarantined": landing.quarantined,
        "duplicates_dropped": landing.duplicates_dropped,
        "stepped_back_pages": landing.stepped_back_pages,
        "total_items": landing.total_items,
        "from_date": landing.from_date.isoformat() if landing.from_date else "beginning of time",
        "next_from_date": dg.MetadataValue.timestamp(landing.next_from_date),
        **landing.requests,
        "duration_s": round(landing.seconds, 3),
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            table,
            deps=[sync_run],
            group_name=GROUP,
            kinds={"api", "duckdb"},
            description=(
                f"Raw pages of the LMS {endpoint} registrations of one sync "
                f"(Get{endpoint.capitalize()}RegistrationData), as received."
            ),
        )
        for endpoint, table in RAW_TABLES.items()
    ],
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
)
def lms_registration_pages(
    context: dg.AssetExecutionContext, lms: LmsResource, warehouse: WarehouseResource
) -> Iterator[dg.MaterializeResult]:
    """Lands the LMS active and completed registrations of one sync: the raw pages, the
    validated items (malformed ones to quarantine) and the fromDate watermarks, all in one
    transaction. Incremental syncs ask for what changed since the last landed sync's
    nextFromDate (the server adds a 5-minute overlap); full syncs read from the beginning of
    time. A failed run stores nothing, so its watermark stays where it was."""
    with warehouse.connection() as conn, lms.client() as client:
        landings = land_registrations(conn, client, context.partition_key, context.log)
    for landing in landings:
        shown = landing.from_date.isoformat() if landing.from_date else "none (full)"
        context.log.info(
            f"LMS {landing.endpoint}: {landing.pages} pages, {landing.items} items, "
            f"{landing.quarantined} quarantined, fromDate {shown}"
        )
        yield dg.MaterializeResult(
            asset_key=RAW_TABLES[landing.endpoint], metadata=_raw_metadata(landing)
        )


def _client_numbers(client: LmsClient) -> dict[str, float]:
    return {
        **client.http.stats.as_metadata(),
        "logins": client.token_stats.logins,
        "token_refreshes": client.token_stats.refreshes,
        "failed_token_refreshes": client.token_stats.failed_refreshes,
        "unauthorized": client.token_stats.unauthorized,
    }


# --------------------------------------------------------------------------------------------
# Current state

_REGISTRATION_CONTENT = [
    c
    for c in REGISTRATION_SCHEMA
    if c not in ("RegistrationStatusName", "fetched_in_sync", "row_hash", "changed_in_sync")
]
_COURSE_CONTENT = ["CourseId", "CourseCode", "CourseName", "OfferingShortIds"]
_LEARNER_CONTENT = [c for c in LEARNER_SCHEMA if c not in ("row_hash", "changed_in_sync")]
# The completed endpoint is read after the active one: its items are the more recent.
_OLDEST_FIRST = "l.started, i.endpoint = 'completed', i.page_nr, i.item_nr"


def build_chain(conn: duckdb.DuckDBPyConnection, as_of: datetime, key: str | None = None) -> None:
    """Temp table ``lms_chain`` (sync_key, mode, started): the base and every later landing up
    to ``as_of`` (all landings if there is no base). The base is the latest full landing whose
    sync succeeded, or ``key``'s own: a full sync that failed (one the mass-delete guard
    blocked, say) is overlaid like any later landing, it deletes nothing, or every sync after
    it would be built on its snapshot and blocked too."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE lms_chain AS
        WITH landings AS (
            SELECT sync_key, any_value(mode) AS mode, any_value(sync_started_at) AS started
            FROM lms_watermarks WHERE sync_started_at <= ? GROUP BY sync_key
        ),
        base AS (
            SELECT coalesce(max(started), '-infinity'::TIMESTAMPTZ) AS started
            FROM landings l WHERE mode = 'full' AND (
                l.sync_key = ?
                OR EXISTS (SELECT 1 FROM sync_runs r
                           WHERE r.key = l.sync_key AND r.status = 'success')
                -- landed without sync bookkeeping (the LMS assets materialized alone)
                OR NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.key = l.sync_key))
        )
        SELECT sync_key, mode, started FROM landings
        WHERE started >= (SELECT started FROM base)
        """,
        [as_of, key],
    )


def build_current_items(conn: duckdb.DuckDBPyConnection, only_key: str | None = None) -> None:
    """Temp table ``lms_current_items``: per RegistrationId its latest item in ``lms_chain``
    (``only_key``: in that landing alone)."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE lms_current_items AS
        WITH ranked AS (
            SELECT i.*, l.started,
                -- fetch order over the overlaid syncs: the higher, the more recent
                row_number() OVER (ORDER BY {_OLDEST_FIRST}) AS fetch_rank
            FROM stg_lms_registrations i JOIN lms_chain l USING (sync_key)
            {"WHERE i.sync_key = $key" if only_key else ""}
        )
        SELECT * FROM ranked
        QUALIFY row_number() OVER (PARTITION BY RegistrationId ORDER BY fetch_rank DESC) = 1
        """,
        {"key": only_key} if only_key else None,
    )


def _build_mode(conn: duckdb.DuckDBPyConnection, key: str) -> Literal["overlay", "rebuild"]:
    """Whether ``key``'s items overlay the tables or the chain is rebuilt."""
    chain = conn.execute(
        "SELECT sync_key, mode = 'full' FROM lms_chain ORDER BY started"
    ).fetchall()
    built = conn.execute("SELECT built_from_key, base_key FROM lms_current_built").fetchall()
    return current_state_build(chain, built, key)


def _moved(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether an item of the sync moves a stored registration to another course or learner:
    the course or learner it leaves may then take its values from older items, which only a
    rebuild reads."""
    (moved,) = conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM new_lms_registrations n JOIN lms_registrations o
                       USING (RegistrationId)
                       WHERE n.CourseId <> o.CourseId
                          OR n.OrganizationLoginId <> o.OrganizationLoginId)
        """
    ).fetchone() or (True,)
    return bool(moved)


def build_new_state(
    conn: duckdb.DuckDBPyConnection, student_id_field: str = STUDENT_ID_FIELD
) -> None:
    """Temp tables ``new_lms_registrations|courses|learners`` from ``lms_current_items``,
    with each table's columns in order except ``changed_in_sync``; a learner's ``StudentId``
    is the profile field ``student_id_field``."""
    field = student_id_field.replace("'", "''")
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE new_lms_registrations AS
        SELECT RegistrationId, RegistrationStatus,
            {_status_name_sql("RegistrationStatus")} AS RegistrationStatusName,
            RegistrationDate, CompletionDate, CompletionLocation, CourseId, CourseCode,
            OfferingShortId, OrganizationLoginId, UniqueLoginId, EmailAddress,
            OrgProfileFieldValues, sync_key AS fetched_in_sync,
            {row_hash_sql(_REGISTRATION_CONTENT)} AS row_hash
        FROM lms_current_items
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE new_lms_courses AS
        WITH courses AS (
            SELECT CourseId,
                arg_max(CourseCode, fetch_rank)
                    AS CourseCode,
                arg_max(CourseName, fetch_rank)
                    AS CourseName,
                list_sort(list_distinct(list(OfferingShortId))) AS OfferingShortIds
            FROM lms_current_items GROUP BY CourseId
        )
        SELECT *, {row_hash_sql(_COURSE_CONTENT)} AS row_hash FROM courses
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE new_lms_learners AS
        WITH learners AS (
            SELECT OrganizationLoginId, UniqueLoginId, EmailAddress, ContactEmail, FirstName,
                LastName, nullif(trim(OrgProfileFieldValues['{field}']), '')
                    AS StudentId,
                OrgProfileFieldValues
            FROM lms_current_items
            QUALIFY row_number() OVER (
                PARTITION BY OrganizationLoginId ORDER BY fetch_rank DESC
            ) = 1
        )
        SELECT *, {row_hash_sql(_LEARNER_CONTENT)} AS row_hash FROM learners
        """
    )


@dataclass(frozen=True)
class StateChange:
    rows: int
    inserted: int
    updated: int
    deleted: int


def apply_new_state(
    conn: duckdb.DuckDBPyConnection, table: str, key_column: str, key: str, *, whole: bool = True
) -> StateChange:
    """Make ``table`` equal to ``new_<table>`` (``whole``; else only upsert its rows); rows that
    are new or differ get ``changed_in_sync = key``, unchanged rows keep theirs."""
    new = f"new_{table}"
    inserted, updated = conn.execute(
        f"""
        SELECT count(*) FILTER (WHERE o.{key_column} IS NULL),
               count(*) FILTER (WHERE o.{key_column} IS NOT NULL AND o.row_hash <> n.row_hash)
        FROM {new} n LEFT JOIN {table} o ON o.{key_column} = n.{key_column}
        """
    ).fetchone() or (0, 0)
    deleted = 0
    if whole:
        gone = f"{key_column} NOT IN (SELECT {key_column} FROM {new})"
        (deleted,) = conn.execute(f"SELECT count(*) FROM {table} WHERE {gone}").fetchone() or (0,)
        conn.execute(f"DELETE FROM {table} WHERE {gone}")
    conn.execute(
        f"""
        INSERT OR REPLACE INTO {table}
        SELECT n.*, ? FROM {new} n LEFT JOIN {table} o ON o.{key_column} = n.{key_column}
        WHERE o.row_hash IS DISTINCT FROM n.row_hash
        """,
        [key],
    )
    (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
    return StateChange(int(rows), int(inserted), int(updated), int(deleted))


def sync_numbers(conn: duckdb.DuckDBPyConnection, key: str) -> dict[str, int]:
    """Items this sync staged and the duplicates among them (page overlaps, and registrations
    read as active and then as completed)."""
    items, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT RegistrationId) FROM stg_lms_registrations "
        "WHERE sync_key = ?",
        [key],
    ).fetchone() or (0, 0)
    return {"sync_items": int(items), "duplicates_dropped": int(items) - int(distinct)}


def _note_changed_registrations(conn: duckdb.DuckDBPyConnection, *, whole: bool) -> None:
    """Before the registrations are replaced: tell the next ``hub_desired`` build the learners
    of the registrations that are new, changed or (``whole``) gone (their persons' links)."""
    changed = """SELECT n.OrganizationLoginId FROM new_lms_registrations n
                     LEFT JOIN lms_registrations o USING (RegistrationId)
                 WHERE o.row_hash IS DISTINCT FROM n.row_hash"""
    gone = """SELECT o.OrganizationLoginId FROM lms_registrations o
                  LEFT JOIN new_lms_registrations n USING (RegistrationId)
              WHERE n.row_hash IS DISTINCT FROM o.row_hash"""
    note_changes(conn, "lms_learner", f"{changed} UNION {gone}" if whole else changed)


def _offerings_of_touched_courses(conn: duckdb.DuckDBPyConnection) -> None:
    """An overlay's ``new_lms_courses`` have the offerings of the sync's items; a course's are
    those of all its registrations (the sync's applied already)."""
    conn.execute(
        f"""
        UPDATE new_lms_courses n SET OfferingShortIds = r.ids
        FROM (SELECT CourseId, list_sort(list_distinct(list(OfferingShortId))) AS ids
              FROM lms_registrations
              WHERE CourseId IN (SELECT CourseId FROM new_lms_courses) GROUP BY CourseId) r
        WHERE r.CourseId = n.CourseId;
        UPDATE new_lms_courses SET row_hash = {row_hash_sql(_COURSE_CONTENT)};
        """
    )


def _note_graph_changes(conn: duckdb.DuckDBPyConnection, key: str) -> None:
    """Tell the next ``hub_desired`` build which learners changed; after a full sync it
    rebuilds everything."""
    if parse_sync_key(key).mode == "full":
        note_rebuild(conn, f"a full LMS sync ({key})")
    note_changed_rows(conn, "lms_learner", "lms_learners", "OrganizationLoginId", key)


def update_current_state(
    conn: duckdb.DuckDBPyConnection, key: str, student_id_field: str = STUDENT_ID_FIELD
) -> tuple[dict[str, StateChange], dict[str, Any]]:
    """Bring the ``lms_*`` tables to the state as of ``key``: an incremental sync that follows
    the landing whose state they hold (``lms_current_built``) applies its own items
    (``build`` = overlay, O(changes)); every other sync rebuilds them from the last full sync
    and the landings after it (rebuild)."""
    as_of = parse_sync_key(key).started_at
    with transaction(conn):
        build_chain(conn, as_of, key)
        build = _build_mode(conn, key)
        if build == "overlay":
            build_current_items(conn, only_key=key)
            build_new_state(conn, student_id_field)
            if _moved(conn):
                build = "rebuild"
        if build == "rebuild":
            build_current_items(conn)
            build_new_state(conn, student_id_field)
        whole = build == "rebuild"
        (resent,) = conn.execute(
            """
            SELECT count(*) FROM new_lms_registrations n JOIN lms_registrations o
                USING (RegistrationId)
            WHERE n.fetched_in_sync = ? AND o.row_hash = n.row_hash
            """,
            [key],
        ).fetchone() or (0,)
        _note_changed_registrations(conn, whole=whole)
        changes = {}
        for table, (key_column, _) in STATE_TABLES.items():
            if table == "lms_courses" and not whole:
                _offerings_of_touched_courses(conn)
            changes[table] = apply_new_state(conn, table, key_column, key, whole=whole)
        conn.execute("DELETE FROM lms_current_built")
        conn.execute(
            "INSERT INTO lms_current_built SELECT $key, "
            "(SELECT sync_key FROM lms_chain ORDER BY started LIMIT 1)",
            {"key": key},
        )
        _note_graph_changes(conn, key)
    numbers = {**sync_numbers(conn, key), "resent_unchanged": int(resent), "build": build}
    return changes, numbers


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            table,
            deps=list(RAW_TABLES.values()),
            group_name=GROUP,
            kinds={"duckdb"},
            description=description,
            metadata={
                "dagster/column_schema": dg.TableSchema.from_name_type_dict(schema),
            },
        )
        for table, (_, schema), description in (
            (
                "lms_registrations",
                STATE_TABLES["lms_registrations"],
                "LMS registrations now: one row per RegistrationId with its status (Pending, "
                "Active, Completed), dates, course, offering, learner login and "
                "OrgProfileFieldValues as a map.",
            ),
            (
                "lms_courses",
                STATE_TABLES["lms_courses"],
                "LMS courses with a current registration: code, name and offerings.",
            ),
            (
                "lms_learners",
                STATE_TABLES["lms_learners"],
                "LMS learners with a current registration: logins, e-mail, names and the "
                "StudentId profile field.",
            ),
        )
    ],
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
)
def lms_current_state(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, lms: LmsResource
) -> Iterator[dg.MaterializeResult]:
    """Brings lms_registrations, lms_courses and lms_learners to this sync: the latest full
    sync overlaid with the later ones, deduplicated by RegistrationId (the latest fetched wins).
    An incremental sync after the one the tables hold applies only its own items (``build``:
    overlay); any other rebuilds. Rows this sync changed carry its key in changed_in_sync."""
    key = context.partition_key
    started = time.perf_counter()
    with warehouse.connection() as conn:
        changes, numbers = update_current_state(conn, key, lms.student_id_field)
    seconds = round(time.perf_counter() - started, 3)
    build = numbers.pop("build")
    for table, change in changes.items():
        metadata: dict[str, Any] = {
            "dagster/row_count": change.rows,
            "inserted": change.inserted,
            "updated": change.updated,
            "deleted": change.deleted,
            "build": build,
            "duration_s": seconds,
        }
        if table == "lms_registrations":
            metadata.update(numbers)
        yield dg.MaterializeResult(asset_key=table, metadata=metadata)


LMS_ASSETS = [lms_registration_pages, lms_current_state]
