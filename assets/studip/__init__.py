"""Stud.IP: the crawl with its raw landing, and the current state built from it.

``STUDIP_API_MODE`` (default ``auto``) may make a sync list Stud.IP through its JSON:API
instead of crawling (``assets/studip/listing.py``): the listing lands with the same ``Stager``
and builds the same ``studip_*`` tables, and being a snapshot it is merged like a full sync.

``studip_raw_pages`` (partitioned by ``sync_runs``) checks ``/discovery`` for the routes hubsync
needs, reads the semesters and course types, resolves the semesters to sync, and crawls the
user–course graph (see ``resources/studip/``). Every response lands in ``raw_studip_pages`` as
it arrives; its validated records land in the ``stg_studip_*`` tables of the sync key
(invalid ones in ``quarantine``), all in one transaction: a failed crawl leaves nothing behind
and a re-run replaces the key's pages.

* Full sync: the crawl starts from the API account (``/user``) and ``STUDIP_SEED_USERS`` and runs
  to closure, so its snapshot depends on Stud.IP alone: a user no selected course connects to
  the seeds any more drops out (seeding from earlier syncs' users kept such users, and the
  identities they joined, forever).
* Incremental sync: it starts from the Stud.IP users of the persons CAMPUSonline or the LMS
  changed in this sync (``changed_studip_user_ids``, which reads ``co_students``,
  ``lms_learners`` and ``studip_users``), re-reads their courses (current ones, and the ones
  they were members of, so ended memberships disappear) and those courses' members, and expands
  only users not known yet. With no Stud.IP state yet it crawls like a full sync.

``studip_current_state`` merges the key's staged records into the current-state tables in DuckDB SQL
(``studip_users``, ``studip_semesters``, ``studip_courses``, ``studip_memberships``,
``studip_institutes``, ``studip_user_institutes``); ``changed_in_sync`` is the key of the sync
that last inserted or changed a row. Only a full sync deletes (rows absent from its snapshot);
an incremental one replaces the memberships of the courses whose members it re-read.
"""

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol

import dagster as dg
import duckdb

from assets.partitions import SyncKey, parse_sync_key, sync_runs_partitions
from assets.studip.listing import (
    JSONAPI_KEY,
    LISTING_KEY,
    LISTING_RAW_TABLE,
    RefreshSlice,
    choose_api_mode,
    list_semesters,
    list_studip,
)
from assets.sync import sync_run
from resources.change_detection import row_hash_sql
from resources.graph_changes import REBUILD, note_changed_rows, note_changes, note_rebuild
from resources.quarantine import quarantine
from resources.studip import (
    CRAWL_ROUTES,
    SEARCH_ROUTE,
    Rejected,
    SemesterSelectionError,
    StudipClient,
    StudipPage,
    StudIPResource,
    StudipRoutesMissing,
    StudipSemester,
    is_user_id,
    select_semesters,
)
from resources.warehouse import WAREHOUSE_POOL, PageWriter, WarehouseResource, deflate, transaction

RAW_TABLE = "raw_studip_pages"
GROUP = "studip"
SOURCE = "studip"  # the quarantine's source

STAGED_TABLES = (
    "stg_studip_users",
    "stg_studip_semesters",
    "stg_studip_sem_types",
    "stg_studip_courses",
    "stg_studip_memberships",
    "stg_studip_user_institutes",
)


# -- staging -----------------------------------------------------------------------------------


def _insert_columns(
    writer: PageWriter, table: str, columns: dict[str, tuple[str, list[Any]]]
) -> None:
    """Insert rows given column-wise (name -> (DuckDB type, values)) in one statement."""
    values = list(columns.values())
    if not values or not values[0][1]:
        return
    names = ", ".join(columns)
    selects = ", ".join(
        f"unnest(?::{'JSON' if kind.startswith('MAP') else kind}[])"
        + (f"::{kind}" if kind.startswith("MAP") else "")
        for kind, _ in values
    )
    writer.execute(
        f"INSERT INTO {table} (sync_key, {names}) SELECT ?, {selects}",
        [writer.sync_key, *(column for _, column in values)],
    )


@dataclass
class CrawlCounts:
    users: int = 0
    courses: int = 0
    memberships: int = 0
    quarantined: int = 0


# Pages are written in batches: one INSERT per page and table costs DuckDB a few milliseconds
# each, which would cap the crawl at about 200 pages a second; a batch is bounded in memory.
FLUSH_PAGES = 200
FLUSH_BYTES = 8_000_000


class Stager:
    """Lands pages in the raw table and their records in the staging tables, in batches of at
    most FLUSH_PAGES pages, inside the PageWriter's transaction (call from one thread; ``flush``
    before the transaction ends)."""

    def __init__(self, writer: PageWriter) -> None:
        self.writer = writer
        self.counts = CrawlCounts()
        self.pages = 0
        self.records = 0
        self._users: set[str] = set()
        self._courses: set[str] = set()
        self._course_semesters: set[tuple[str, str | None]] = set()
        self._quarantined: set[tuple[str, str, str]] = set()
        # table -> columns (name -> (DuckDB type, values)): raw pages and staged records
        self._buffered: dict[str, dict[str, tuple[str, list[Any]]]] = {}
        self._buffered_pages = 0
        self._buffered_bytes = 0

    def _buffer(self, table: str, columns: dict[str, tuple[str, list[Any]]]) -> None:
        buffered = self._buffered.setdefault(
            table, {n: (kind, []) for n, (kind, _) in columns.items()}
        )
        for name, (_, values) in columns.items():
            buffered[name][1].extend(values)

    def flush(self) -> None:
        """Write the buffered pages and records."""
        for table, columns in self._buffered.items():
            _insert_columns(self.writer, table, columns)
        self._buffered = {}
        self._buffered_pages = self._buffered_bytes = 0

    def clear(self) -> None:
        for table in (*STAGED_TABLES, LISTING_RAW_TABLE):
            self.writer.execute(f"DELETE FROM {table} WHERE sync_key = ?", [self.writer.sync_key])
        self.writer.execute(
            "DELETE FROM quarantine WHERE source = ? AND sync_key = ?",
            [SOURCE, self.writer.sync_key],
        )

    def land(self, page: StudipPage, *, stage: bool = True) -> None:
        """Land ``page`` as received; with ``stage``, its records too (a ``/user/:id`` read only
        to check a search hit is landed without them)."""
        record_count = len(page.records) + len(page.rejected)
        params = json.dumps({"route": page.route, **page.params}, sort_keys=True)
        row: dict[str, tuple[str, list[Any]]] = {
            "request_key": ("VARCHAR", [page.request_key]),
            "page_nr": ("INTEGER", [page.page_nr]),
            "request_params": ("JSON", [params]),
            "fetched_at": ("TIMESTAMPTZ", [page.fetched_at]),
            "record_count": ("INTEGER", [record_count]),
        }
        if page.request_key.startswith(JSONAPI_KEY):  # the listing's: large, compressed
            packed = deflate(page.body)
            self._buffer(
                LISTING_RAW_TABLE,
                row | {"body_zlib": ("BLOB", [packed]), "body_bytes": ("BIGINT", [len(page.body)])},
            )
        else:
            text = page.body.decode("utf-8", errors="replace")
            self._buffer(RAW_TABLE, row | {"body": ("JSON", [text])})
        self.pages += 1
        self.records += record_count
        self._buffered_pages += 1
        self._buffered_bytes += len(page.body)
        self._quarantine(page.rejected)
        stage_records = {
            "/user": self._users_page,
            "/user/:user_id": self._users_page,
            SEARCH_ROUTE: self._users_page,
            "/semesters": self._semesters_page,
            "/studip/settings": self._settings_page,
            "/user/:user_id/courses": self._courses_page,
            "/course/:course_id/members": self._members_page,
            "/user/:user_id/institutes": self._institutes_page,
        }.get(page.route)
        if stage_records is not None and stage:
            stage_records(page)
        if self._buffered_pages >= FLUSH_PAGES or self._buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def stage_users(self, users: Iterable[Any]) -> None:
        new = [u for u in users if u.user_id not in self._users]
        self._users.update(u.user_id for u in new)
        self.counts.users += len(new)
        self._buffer(
            "stg_studip_users",
            {
                "user_id": ("VARCHAR", [u.user_id for u in new]),
                "username": ("VARCHAR", [u.username for u in new]),
                "perms": ("VARCHAR", [u.perms for u in new]),
                "email": ("VARCHAR", [u.email for u in new]),
                "given": ("VARCHAR", [u.name.given for u in new]),
                "family": ("VARCHAR", [u.name.family for u in new]),
                "formatted": ("VARCHAR", [u.name.formatted for u in new]),
                "datafields": (
                    "MAP(VARCHAR, VARCHAR)",
                    [json.dumps(u.datafield_map) for u in new],
                ),
            },
        )

    def _users_page(self, page: StudipPage) -> None:
        if page.route != SEARCH_ROUTE:  # search hits are short records: /user/:id follows
            self.stage_users(page.records)

    def _semesters_page(self, page: StudipPage) -> None:
        semesters: list[StudipSemester] = page.records
        self._buffer(
            "stg_studip_semesters",
            {
                "semester_id": ("VARCHAR", [s.id for s in semesters]),
                "title": ("VARCHAR", [s.title for s in semesters]),
                "token": ("VARCHAR", [s.token for s in semesters]),
                "begin_at": ("TIMESTAMPTZ", [_utc(s.begin) for s in semesters]),
                "end_at": ("TIMESTAMPTZ", [_utc(s.end) for s in semesters]),
                "seminars_begin_at": ("TIMESTAMPTZ", [_utc(s.seminars_begin) for s in semesters]),
                "seminars_end_at": ("TIMESTAMPTZ", [_utc(s.seminars_end) for s in semesters]),
                "visible": ("INTEGER", [s.visible for s in semesters]),
            },
        )

    def _settings_page(self, page: StudipPage) -> None:
        self._buffer(
            "stg_studip_sem_types",
            {
                "type": ("VARCHAR", [key for key, _ in page.records]),
                "name": ("VARCHAR", [t.name for _, t in page.records]),
                "class": ("VARCHAR", [t.class_ for _, t in page.records]),
                "studygroup": ("BOOLEAN", [t.studygroup for _, t in page.records]),
            },
        )

    def _courses_page(self, page: StudipPage) -> None:
        self.stage_courses(page.records, page.params.get("semester"))

    def stage_courses(self, courses: Sequence[Any], semester_id: str | None) -> None:
        """Every course, once per selected semester it came back for (``?semester=`` returns the
        courses running in it; none when every semester is read unfiltered): the earliest one
        is an unlimited course's HUB term."""
        new = [c for c in courses if (c.course_id, semester_id) not in self._course_semesters]
        self._course_semesters.update((c.course_id, semester_id) for c in new)
        self.counts.courses += len({c.course_id for c in new} - self._courses)
        self._courses.update(c.course_id for c in new)
        self._buffer(
            "stg_studip_courses",
            {
                "course_id": ("VARCHAR", [c.course_id for c in new]),
                "number": ("VARCHAR", [c.number for c in new]),
                "title": ("VARCHAR", [c.title for c in new]),
                "subtitle": ("VARCHAR", [c.subtitle for c in new]),
                "type": ("VARCHAR", [c.type for c in new]),
                "start_semester_id": ("VARCHAR", [c.start_semester_id for c in new]),
                "end_semester_id": ("VARCHAR", [c.end_semester_id for c in new]),
                "group_nr": ("INTEGER", [c.group for c in new]),
                "semester_id": ("VARCHAR", [semester_id] * len(new)),
            },
        )

    def _members_page(self, page: StudipPage) -> None:
        self.stage_memberships([(page.subject, m.user_id, m.status) for m in page.records])

    def stage_memberships(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(course_id, user_id, status) rows."""
        self.counts.memberships += len(rows)
        self._buffer(
            "stg_studip_memberships",
            {
                "course_id": ("VARCHAR", [course_id for course_id, _, _ in rows]),
                "user_id": ("VARCHAR", [user_id for _, user_id, _ in rows]),
                "status": ("VARCHAR", [status for _, _, status in rows]),
            },
        )

    def _institutes_page(self, page: StudipPage) -> None:
        rows = page.records
        self._buffer(
            "stg_studip_user_institutes",
            {
                "user_id": ("VARCHAR", [page.subject] * len(rows)),
                "institute_id": ("VARCHAR", [i.institute_id for _, i in rows]),
                "relation": ("VARCHAR", [relation for relation, _ in rows]),
                "perms": ("VARCHAR", [i.perms for _, i in rows]),
                "name": ("VARCHAR", [i.name for _, i in rows]),
                "faculty_name": ("VARCHAR", [i.faculty_name for _, i in rows]),
                "city": ("VARCHAR", [i.city for _, i in rows]),
            },
        )

    def _quarantine(self, rejected: Sequence[Rejected]) -> None:
        """Quarantine each rejected record once per sync (a bad course comes back on every
        semester page and on every member's course list)."""
        for record in rejected:
            seen = (
                record.record_type,
                record.record_key or json.dumps(record.raw, default=str, sort_keys=True),
                record.reason,
            )
            if seen in self._quarantined:
                continue
            self._quarantined.add(seen)
            self.counts.quarantined += 1
            quarantine(
                self.writer, SOURCE, self.writer.sync_key, record.record_type,
                record.record_key, record.reason, json.dumps(record.raw, default=str),
            )  # fmt: skip


def _utc(timestamp: int | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


# -- who to crawl ------------------------------------------------------------------------------


class Sql(Protocol):
    """A DuckDB connection, or a PageWriter (which runs SQL in its open transaction)."""

    def execute(self, sql: str, parameters: Any = None, /) -> duckdb.DuckDBPyConnection: ...


def _columns(conn: Sql, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT lower(column_name) FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    return {name for (name,) in rows}


UNSYNCED = "(SELECT key FROM unsynced)"  # filled by note_unsynced_keys


def note_unsynced_keys(conn: Sql, sync_key: str) -> list[str]:
    """Temp table ``unsynced``: ``sync_key`` and every sync started after the last
    successful one. A failed sync leaves the rows it changed marked with its key (a re-read
    that finds them unchanged keeps the mark), so the next crawl must take those keys too or
    it misses every change since the last successful sync."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE unsynced AS
        SELECT $sync_key AS key
        UNION
        SELECT key FROM sync_runs
        WHERE key <> $sync_key AND started_at > (
            SELECT coalesce(max(started_at), '-infinity'::TIMESTAMPTZ) FROM sync_runs
            WHERE status = 'success' AND key <> $sync_key)
        """,
        {"sync_key": sync_key},
    )
    return [k for (k,) in conn.execute("SELECT key FROM unsynced ORDER BY 1").fetchall()]


def changed_studip_user_ids(
    conn: Sql, sync_key: str, student_id_field: str = "Matrikelnummer"
) -> list[str]:
    """Stud.IP user ids of the persons CAMPUSonline or the LMS changed in sync ``sync_key`` or
    in a sync after the last successful one (``note_unsynced_keys``).

    Reads ``co_students`` (STUDID, EMAILADDRESSTU; also of students whose ``co_studies`` or
    ``co_applications`` rows changed) and ``lms_learners`` (StudentId, EmailAddress,
    OrganizationLoginId) rows whose ``changed_in_sync`` is the key, and matches them to
    ``studip_users`` by the identity rules of ``assets/graph/``: the ``student_id_field``
    datafield = STUDID, the e-mail (case-insensitive), the login = username; and the Stud.IP user
    the last graph build joined to a changed person (``person_links``), found even when the change
    is what no longer matches. Every rule's matches count (re-reading one user too many is
    harmless; missing one is not). A source whose table does not exist yet has no changes.
    """
    note_unsynced_keys(conn, sync_key)
    # The changed records first, then one equi-join per rule: an OR of join conditions (or an
    # OR-ed IN filter) makes DuckDB compare every student with every user, O(N²) per sync.
    matches: list[str] = []
    co = _columns(conn, "co_students")
    if {"studid", "emailaddresstu", "changed_in_sync"} <= co:
        # a study or application change changes the person's courses too (e.g. a leave)
        related = [
            f"SELECT STPERSONNR FROM {table} WHERE changed_in_sync IN {UNSYNCED}"
            for table in ("co_studies", "co_applications")
            if {"stpersonnr", "changed_in_sync"} <= _columns(conn, table)
        ]
        persons = " UNION ".join(
            [
                f"SELECT STPERSONNR FROM co_students WHERE changed_in_sync IN {UNSYNCED}",
                *related,
            ]
        )
        changed = (
            "(SELECT CAST(STUDID AS VARCHAR) AS studid, lower(EMAILADDRESSTU) AS email "
            f"FROM co_students WHERE STPERSONNR IN ({persons}))"
        )
        matches += [
            f"SELECT u.user_id FROM {changed} c JOIN studip_users u "
            "ON u.datafields[$field] = c.studid",
            f"SELECT u.user_id FROM {changed} c JOIN studip_users u ON lower(u.email) = c.email",
        ]
    lms = _columns(conn, "lms_learners")
    if {"studentid", "emailaddress", "organizationloginid", "changed_in_sync"} <= lms:
        changed = (
            "(SELECT CAST(StudentId AS VARCHAR) AS studid, lower(EmailAddress) AS email, "
            "OrganizationLoginId AS login FROM lms_learners "
            f"WHERE changed_in_sync IN {UNSYNCED})"
        )
        matches += [
            f"SELECT u.user_id FROM {changed} l JOIN studip_users u "
            "ON u.datafields[$field] = l.studid",
            f"SELECT u.user_id FROM {changed} l JOIN studip_users u ON lower(u.email) = l.email",
            f"SELECT u.user_id FROM {changed} l JOIN studip_users u ON u.username = l.login",
        ]
    if {"system", "source_id", "person_key"} <= _columns(conn, "person_links"):
        # the Stud.IP user the last graph build joined to a changed person: found even when the
        # change (a new e-mail, say) is what would no longer match
        for system, changed_ids in _changed_source_ids(conn, co, lms):
            matches.append(
                "SELECT u.source_id AS user_id FROM person_links c JOIN person_links u "
                "ON u.person_key = c.person_key AND u.system = 'studip' "
                f"WHERE c.system = '{system}' AND c.source_id IN ({changed_ids})"
            )
    if not matches:
        return []
    sql = " UNION ".join(matches)
    rows = conn.execute(
        f"SELECT DISTINCT user_id FROM ({sql}) ORDER BY 1", {"field": student_id_field}
    )
    return [user_id for (user_id,) in rows.fetchall()]


def _changed_source_ids(conn: Sql, co: set[str], lms: set[str]) -> list[tuple[str, str]]:
    """(system, SQL of the ids this sync changed) for the person_links of CO and the LMS."""
    changed = []
    if {"stpersonnr", "changed_in_sync"} <= co:
        changed.append(
            ("co", "SELECT CAST(STPERSONNR AS VARCHAR) FROM co_students "
                   f"WHERE changed_in_sync IN {UNSYNCED}")
        )  # fmt: skip
    if {"organizationloginid", "changed_in_sync"} <= lms:
        changed.append(
            ("lms", "SELECT OrganizationLoginId FROM lms_learners "
                    f"WHERE changed_in_sync IN {UNSYNCED}")
        )  # fmt: skip
    return changed


@dataclass(frozen=True)
class UnlinkedPerson:
    """A person CO or the LMS changed in this sync with no Stud.IP user yet (new, most often):
    found by a ``/users?q=`` search for ``search`` and kept if a rule matches."""

    search: str
    student_id: str | None
    email: str | None
    login: str | None

    def matches(self, user: Any, student_id_field: str) -> bool:
        return bool(
            (self.student_id and user.datafield_map.get(student_id_field) == self.student_id)
            or (self.email and (user.email or "").lower() == self.email)
            or (self.login and user.username == self.login)
        )


def unlinked_changed_persons(conn: Sql, sync_key: str) -> list[UnlinkedPerson]:
    """The persons changed in ``sync_key`` that the last graph build joined to no Stud.IP user:
    CO students (searched by full name: a family name alone matches thousands at a large
    university, each result page a request) and LMS learners (searched by login)."""
    if not {"system", "source_id", "person_key"} <= _columns(conn, "person_links"):
        return []
    note_unsynced_keys(conn, sync_key)
    no_studip = (
        "NOT EXISTS (SELECT 1 FROM person_links c JOIN person_links u ON u.person_key = "
        "c.person_key AND u.system = 'studip' WHERE c.system = '{system}' AND c.source_id = {id})"
    )
    parts = []
    if {"givenname", "familyname", "studid", "emailaddresstu", "changed_in_sync"} <= _columns(
        conn, "co_students"
    ):
        parts.append(
            "SELECT trim(coalesce(GIVENNAME, '') || ' ' || FAMILYNAME), "
            "CAST(STUDID AS VARCHAR), lower(EMAILADDRESSTU), NULL "
            f"FROM co_students WHERE changed_in_sync IN {UNSYNCED} AND FAMILYNAME IS NOT NULL AND "
            + no_studip.format(system="co", id="CAST(STPERSONNR AS VARCHAR)")
        )
    if {"organizationloginid", "studentid", "changed_in_sync"} <= _columns(conn, "lms_learners"):
        parts.append(
            "SELECT OrganizationLoginId, CAST(StudentId AS VARCHAR), lower(EmailAddress), "
            f"OrganizationLoginId FROM lms_learners WHERE changed_in_sync IN {UNSYNCED} AND "
            + no_studip.format(system="lms", id="OrganizationLoginId")
        )
    if not parts:
        return []
    rows = conn.execute(" UNION ".join(parts) + " ORDER BY 1, 2")
    return [UnlinkedPerson(*row) for row in rows.fetchall()]


def known_studip_user_ids(conn: Sql) -> list[str]:
    """The Stud.IP users of earlier syncs."""
    return [u for (u,) in conn.execute("SELECT user_id FROM studip_users ORDER BY 1").fetchall()]


@dataclass(frozen=True)
class CrawlPlan:
    mode: str  # what the crawl does: 'full' | 'incremental'
    seeds: list[str]
    fetched_users: list[str]  # their record came from /user or /users?q= already
    known_users: list[str]  # reached only as seeds (incremental)
    # (incremental) each seed's stored courses of the selected semesters: the crawl reads the
    # members of those whose membership changed
    stored_courses: dict[str, list[str]]


def stored_courses(
    conn: Sql, user_ids: Sequence[str], semester_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The courses of the selected semesters each user was a member of at the last sync. An
    incremental crawl reads the members of a course the user no longer lists (so a membership
    that ended disappears) and of one it newly lists, not of those both have."""
    if not user_ids or not semester_ids:
        return {}
    # a course runs from its start to its end semester; one without a start has no end either
    rows = conn.execute(
        """
        SELECT m.user_id, list(DISTINCT m.course_id ORDER BY m.course_id)
        FROM studip_memberships m
        JOIN studip_courses c USING (course_id)
        LEFT JOIN studip_semesters s ON s.semester_id = c.start_semester_id
        LEFT JOIN studip_semesters e ON e.semester_id = c.end_semester_id
        WHERE list_contains($users, m.user_id) AND (c.start_semester_id IS NULL OR EXISTS (
            SELECT 1 FROM studip_semesters x WHERE list_contains($semesters, x.semester_id)
              AND x.begin_at BETWEEN s.begin_at AND coalesce(e.begin_at, s.begin_at)))
        GROUP BY m.user_id ORDER BY 1
        """,
        {"users": list(user_ids), "semesters": list(semester_ids)},
    )
    return dict(rows.fetchall())


def plan_crawl(
    client: StudipClient,
    stager: Stager,
    seed_users: Sequence[str],
    semester_ids: Sequence[str],
    *,
    incremental: bool,
    student_id_field: str = "Matrikelnummer",
) -> CrawlPlan:
    """The seeds of this sync's crawl (landing the /user and /users?q= pages it reads).

    An incremental sync with no Stud.IP state yet crawls like a full one.
    """
    known = known_studip_user_ids(stager.writer)
    if incremental and known:
        changed = changed_studip_user_ids(stager.writer, stager.writer.sync_key, student_id_field)
        known_ids = set(known)
        found = find_new_users(client, stager, student_id_field, known_ids)
        seeds = [*changed, *(u for u in found if u not in changed)]
        fetched = [u for u in found if u not in known_ids]  # known hits were not read
        courses = stored_courses(stager.writer, seeds, semester_ids)
        return CrawlPlan("incremental", seeds, fetched, known, courses)
    me = client.user_page()
    stager.land(me)
    seeds = [u.user_id for u in me.records]
    fetched = list(seeds)
    for entry in seed_users:
        if is_user_id(entry):
            seeds.append(entry)
            continue
        user_id = None
        for found in client.search_users(entry):  # short records: the username is in name
            stager.land(found)
            user_id = next(
                (u.id for u in found.records if u.username.lower() == entry.lower()), None
            )
            if user_id:
                break
        if not user_id:
            raise dg.Failure(f"STUDIP_SEED_USERS: Stud.IP has no user with the username {entry!r}")
        if user_id not in fetched:
            stager.land(client.user_page(user_id))
            fetched.append(user_id)
        seeds.append(user_id)
    return CrawlPlan("full", seeds, fetched, [], {})


@dataclass(frozen=True)
class StoredUser:
    """A Stud.IP user as the last sync stored it (what ``UnlinkedPerson.matches`` reads)."""

    user_id: str
    username: str
    email: str | None
    datafield_map: dict[str, str]


def stored_users(conn: Sql, user_ids: Sequence[str]) -> dict[str, StoredUser]:
    rows = conn.execute(
        "SELECT user_id, username, email, datafields FROM studip_users "
        "WHERE list_contains($ids, user_id)",
        {"ids": list(user_ids)},
    ).fetchall()
    return {row[0]: StoredUser(row[0], row[1], row[2], dict(row[3] or {})) for row in rows}


def find_new_users(
    client: StudipClient, stager: Stager, student_id_field: str, known: set[str]
) -> list[str]:
    """Stud.IP users of the persons changed in this sync that no Stud.IP user was joined to:
    one ``/users?q=`` search each. A hit is a short record, without the e-mail and datafields
    the rules need: a hit the last syncs stored (in ``known``) is checked against its stored
    record, any other is read with ``/user/:id``. Searches and reads run
    ``STUDIP_CONCURRENCY`` at a time. Kept, and staged, where a rule matches. Everything read is
    landed.

    At 100,000 students a changed student's full name had about 30 namesakes, nearly all
    stored: reading each took 470 of an incremental crawl's 1,208 requests. A stored user whose
    record changed in Stud.IP alone is matched as stored until the next listing or full sync,
    as every Stud.IP-only change is."""
    by_search: dict[str, list[UnlinkedPerson]] = defaultdict(list)
    for person in unlinked_changed_persons(stager.writer, stager.writer.sync_key):
        by_search[person.search].append(person)  # one search per name, however many share it
    found: list[str] = []
    seen: set[str] = set()
    unknown: dict[str, str] = {}  # a hit no earlier sync stored -> the search that found it

    def keep(users: Iterable[Any], persons: list[UnlinkedPerson]) -> bool:
        matching = [u for u in users if any(p.matches(u, student_id_field) for p in persons)]
        found.extend(u.user_id for u in matching if u.user_id not in found)
        return bool(matching)

    texts = list(by_search)
    for text, pages in zip(texts, client.searches(texts), strict=True):
        for page in pages:
            stager.land(page)
            hits = list(dict.fromkeys(hit.id for hit in page.records if hit.id not in seen))
            seen.update(hits)
            stored = stored_users(stager.writer, [h for h in hits if h in known])
            keep(stored.values(), by_search[text])
            unknown.update((h, text) for h in hits if h not in known)
    hits = list(unknown)
    for user_id, hit_page in zip(hits, client.user_pages(hits), strict=True):
        # the crawl may read this user again: this read is landed as the search's
        text = unknown[user_id]
        user_page = replace(hit_page, request_key=f"/user/{user_id}?q={text}")
        stager.land(user_page, stage=keep(user_page.records, by_search[text]))
    return found


# -- raw landing -------------------------------------------------------------------------------


def crawl_semesters(
    semester_ids: Sequence[str], semesters: Sequence[StudipSemester]
) -> list[str | None]:
    """What each user's courses are read for: the selected semesters, or, when every semester
    is selected, one unfiltered read (one request per user instead of one per semester)."""
    if semesters and set(semester_ids) == {s.id for s in semesters}:
        return [None]
    return list(semester_ids)


def _needed_routes(seed_users: Sequence[str]) -> tuple[str, ...]:
    by_username = any(not is_user_id(entry) for entry in seed_users)
    return CRAWL_ROUTES + ((SEARCH_ROUTE,) if by_username else ())


@dg.asset(
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
    group_name=GROUP,
    kinds={"api", "duckdb"},
    # an incremental crawl re-reads the persons the other sources changed in this sync
    deps=[sync_run, "co_students", "lms_learners"],
)
def studip_raw_pages(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, studip: StudIPResource
) -> dg.MaterializeResult:
    """Stud.IP crawl of this sync: every response as received in raw_studip_pages, its
    validated records in the stg_studip_* tables (invalid ones quarantined).

    First checks /discovery for the routes hubsync needs (fails naming the missing ones, before
    any crawling). Then semesters, course types (/studip/settings) and the user–course crawl:
    full syncs from the API account and STUDIP_SEED_USERS, to closure;
    incremental syncs from the Stud.IP users of the persons CO or the LMS changed in this sync.
    Semesters: STUDIP_SEMESTERS (default current and next, as of the sync key's time).
    """
    key = parse_sync_key(context.partition_key)
    client = studip.client()
    jsonapi = studip.jsonapi_client()
    started = time.perf_counter()
    try:
        choice = choose_api_mode(studip, jsonapi)
        context.log.info(f"Stud.IP {choice.mode} mode: {choice.reason}")
        listing, why = choice.mode == "jsonapi", ""
        if listing:
            with warehouse.connection() as conn:
                listing, why = listing_due(conn, key, studip.relist_every)
            if not listing:
                context.log.info(f"Stud.IP: no listing in this sync: {why}")
        try:
            client.check_routes(LISTING_ROUTES if listing else _needed_routes(studip.seed_users))
        except StudipRoutesMissing as exc:
            raise dg.Failure(str(exc)) from exc
        with warehouse.page_writer(RAW_TABLE, context.partition_key) as writer:
            stager = Stager(writer)
            stager.clear()
            semesters: list[StudipSemester] = []
            if listing:
                semesters = list_semesters(jsonapi, stager)
            else:
                for page in client.semesters():
                    stager.land(page)
                    semesters.extend(page.records)
            try:
                semester_ids = select_semesters(semesters, studip.semesters, key.started_at)
            except SemesterSelectionError as exc:
                raise dg.Failure(str(exc)) from exc
            stager.land(client.settings())
            planning, plan_s = time.perf_counter(), 0.0
            if listing:
                plan = listing_plan(jsonapi, client, stager, studip, semester_ids, semesters, key)
                context.log.info(
                    f"Stud.IP {plan.mode}: {plan.listed_users} users listed, "
                    f"{len(plan.seeds)} kept, {plan.details_read} read in full"
                )
            else:
                plan = plan_crawl(
                    client,
                    stager,
                    studip.seed_users,
                    semester_ids,
                    incremental=key.mode == "incremental",
                    student_id_field=studip.student_id_field,
                )
                context.log.info(
                    f"Stud.IP {plan.mode} crawl from {len(plan.seeds)} seed users over "
                    f"{len(semester_ids)} semesters, {studip.concurrency} requests at a time"
                )
                plan_s = time.perf_counter() - planning
                for page in client.crawl(
                    plan.seeds,
                    crawl_semesters(semester_ids, semesters),
                    fetched_users=plan.fetched_users,
                    known_users=plan.known_users,
                    stored_courses=plan.stored_courses,
                ):
                    stager.land(page)
            stager.flush()
            pages, records = stager.pages, stager.records
    finally:
        client.http.close()
        jsonapi.http.close()
    duration = time.perf_counter() - started
    stats = client.http.stats.as_metadata()
    listing_stats = jsonapi.http.stats.as_metadata()
    requests_made = int(stats["requests"] + listing_stats["requests"])
    counts = stager.counts
    return dg.MaterializeResult(
        metadata={
            "api_mode": choice.mode,
            "api_mode_reason": choice.reason,
            **({"listing": why} if why else {}),
            "crawl": plan.mode,
            "semesters": len(semester_ids),
            "seed_users": len(plan.seeds),
            **({"users_read_in_full": plan.details_read} if listing else {}),
            "requests": requests_made,
            "jsonapi_requests": int(listing_stats["requests"]),
            "retries": int(stats["retries"] + listing_stats["retries"]),
            "bytes": int(stats["bytes"] + listing_stats["bytes"]),
            "pages": pages,
            "records": records,
            "users": counts.users,
            "courses": counts.courses,
            "memberships": counts.memberships,
            "quarantined": counts.quarantined,
            "concurrency": studip.concurrency,
            # a crawl's planning (its changed users, and the searches for new ones); the
            # requests' time summed over the threads (more than the wall time when concurrent)
            **({} if listing else {"plan_s": round(plan_s, 3)}),
            "http_seconds": round(stats["http_seconds"] + listing_stats["http_seconds"], 3),
            "duration_s": round(duration, 3),
            "requests_per_s": round(requests_made / duration, 1) if duration else 0.0,
        }
    )


# The classic routes a listing still reads: course types, and per kept user the datafields and
# institutes the JSON:API does not carry.
LISTING_ROUTES = ("/user", "/user/:user_id", "/user/:user_id/institutes", "/studip/settings")


@dataclass(frozen=True)
class ListingPlan:
    mode: str  # listing-full | listing-incremental
    seeds: list[str]  # the kept users
    listed_users: int
    details_read: int


def listing_plan(
    jsonapi: Any,
    client: StudipClient,
    stager: Stager,
    studip: StudIPResource,
    semester_ids: Sequence[str],
    semesters: Sequence[StudipSemester],
    key: Any,
) -> ListingPlan:
    """Land the JSON:API listing of this sync (a snapshot: full and incremental alike). Users
    whose details (datafields, institutes) are stored are read in full only when their listed
    fields changed, CAMPUSonline or the LMS changed them, or (full syncs) ``RefreshSlice``."""
    known = bool(known_studip_user_ids(stager.writer))
    incremental = key.mode == "incremental" and known
    changed = (
        changed_studip_user_ids(stager.writer, stager.writer.sync_key, studip.student_id_field)
        if incremental
        else []
    )
    result = list_studip(
        jsonapi,
        client,
        stager,
        crawl_semesters(semester_ids, semesters),
        studip.seed_users,
        reuse_details=known,
        refresh=None
        if incremental
        else RefreshSlice(
            studip.details_refresh_days, (key.started_at.date() - date(1970, 1, 1)).days
        ),
        changed_user_ids=changed,
    )
    mode = "listing-incremental" if incremental else "listing-full"
    return ListingPlan(mode, result.kept, result.listed_users, result.details_read)


# -- current state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateTable:
    name: str
    keys: tuple[str, ...]
    values: tuple[str, ...]
    incoming: str  # the sync's rows: SELECT keys + values ... WHERE sync_key = $sync_key
    incremental_scope: str | None  # rows an incremental sync replaces (None: it only upserts)
    description: str
    graph_change: str | None = None  # the kind of graph change its rows note (by keys[0])


STATE_TABLES = (
    StateTable(
        "studip_users",
        ("user_id",),
        ("username", "perms", "email", "given", "family", "formatted", "datafields"),
        """SELECT DISTINCT ON (user_id) user_id, username, perms, email, given, family,
               formatted, datafields
           FROM stg_studip_users WHERE sync_key = $sync_key""",
        None,
        "Stud.IP users the crawl reached: username, perms, e-mail, name and datafields "
        "(a map name -> value: Matrikelnummer, Geburtsdatum, CPF, ...).",
        "studip_user",
    ),
    StateTable(
        "studip_semesters",
        ("semester_id",),
        (
            "title",
            "token",
            "begin_at",
            "end_at",
            "seminars_begin_at",
            "seminars_end_at",
            "visible",
        ),
        """SELECT DISTINCT ON (semester_id) semester_id, title, token, begin_at, end_at,
               seminars_begin_at, seminars_end_at, visible
           FROM stg_studip_semesters WHERE sync_key = $sync_key""",
        None,
        "Stud.IP semesters (all of them, from /semesters).",
        REBUILD,
    ),
    StateTable(
        "studip_courses",
        ("course_id",),
        (
            "number",
            "title",
            "subtitle",
            "type",
            "type_name",
            "type_class",
            "start_semester_id",
            "end_semester_id",
            "group_nr",
            "first_selected_semester_id",
            "studygroup",
        ),
        # first_selected_semester_id: the earliest selected semester the course came back for
        # (the earliest semester of all when the crawl read every semester unfiltered)
        """WITH returned AS (
               SELECT c.course_id, arg_min(s.semester_id, s.begin_at) AS first_selected
               FROM stg_studip_courses c JOIN stg_studip_semesters s
                 ON s.sync_key = c.sync_key AND s.semester_id = c.semester_id
               WHERE c.sync_key = $sync_key GROUP BY c.course_id
           ), earliest AS (
               SELECT arg_min(semester_id, begin_at) AS semester_id
               FROM stg_studip_semesters WHERE sync_key = $sync_key
           )
           SELECT DISTINCT ON (c.course_id) c.course_id, c.number, c.title, c.subtitle, c.type,
               t.name AS type_name, t.class AS type_class, c.start_semester_id,
               c.end_semester_id, c.group_nr,
               coalesce(r.first_selected, (SELECT semester_id FROM earliest))
                   AS first_selected_semester_id,
               coalesce(t.studygroup, false) AS studygroup
           FROM stg_studip_courses c
           LEFT JOIN stg_studip_sem_types t ON t.sync_key = c.sync_key AND t.type = c.type
           LEFT JOIN returned r ON r.course_id = c.course_id
           WHERE c.sync_key = $sync_key
           ORDER BY c.course_id""",
        None,
        "Stud.IP courses the crawl reached: every course Stud.IP returned for a selected "
        "semester (those running in it: started earlier, or unlimited with no start and end "
        "semester), with start and end semester, the earliest selected semester it came back "
        "for, the course type's name and class from /studip/settings SEM_TYPE, and whether "
        "that class is a study group's (SEM_CLASS studygroup_mode).",
        "studip_course",
    ),
    StateTable(
        "studip_memberships",
        ("course_id", "user_id"),
        ("status",),
        """SELECT DISTINCT ON (course_id, user_id) course_id, user_id, status
           FROM stg_studip_memberships WHERE sync_key = $sync_key""",
        # the courses whose members this sync read (their /course/<id>/members pages)
        f"""course_id IN (
            SELECT regexp_extract(request_key, '^/course/([0-9a-f]{{32}})/members$', 1)
            FROM {RAW_TABLE}
            WHERE sync_key = $sync_key AND request_key LIKE '/course/%/members')""",
        "Course members with their status (dozent, tutor, autor, user).",
        "studip_course",
    ),
    StateTable(
        "studip_institutes",
        ("institute_id",),
        ("name", "faculty_name", "city"),
        """SELECT DISTINCT ON (institute_id) institute_id, name, faculty_name, city
           FROM stg_studip_user_institutes WHERE sync_key = $sync_key""",
        None,
        "Stud.IP institutes (Einrichtungen) of the reached users.",
    ),
    StateTable(
        "studip_user_institutes",
        ("user_id", "institute_id", "relation"),
        ("perms",),
        """SELECT DISTINCT ON (user_id, institute_id, relation) user_id, institute_id,
               relation, perms
           FROM stg_studip_user_institutes WHERE sync_key = $sync_key""",
        "user_id IN (SELECT user_id FROM stg_studip_users WHERE sync_key = $sync_key)",
        "Which users belong to which institute: relation work (staff) or study, with perms.",
    ),
)


def crawls_since_refresh(conn: Sql, before: datetime) -> int | None:
    """How many incremental syncs before ``before`` landed Stud.IP by crawling the changed
    users since the latest sync that read all of Stud.IP (a listing, or a full crawl); None
    when none did."""
    crawls = 0
    for key in _landed_keys_newest_first(conn, before):
        if key.mode == "full" or listing_landed(conn, str(key)):
            return crawls
        crawls += 1
    return None


def _landed_keys_newest_first(conn: Sql, before: datetime) -> list[SyncKey]:
    keys = []
    for (key,) in conn.execute(f"SELECT DISTINCT sync_key FROM {RAW_TABLE}").fetchall():
        try:
            parsed = parse_sync_key(key)
        except ValueError:
            continue  # not a sync key (an operator's); it says nothing about the cadence
        if parsed.started_at < before:
            keys.append(parsed)
    return sorted(keys, key=lambda k: k.started_at, reverse=True)


def listing_due(conn: Sql, key: SyncKey, relist_every: int) -> tuple[bool, str]:
    """Whether this sync, in listing mode, lists (and why): a full sync always, an incremental
    one on every ``relist_every``-th incremental sync (STUDIP_RELIST_EVERY), else it crawls the
    users CO or the LMS changed."""
    if key.mode == "full" or relist_every == 1:
        return True, "every sync lists"
    crawls = crawls_since_refresh(conn, key.started_at)
    if crawls is None or crawls >= relist_every - 1:
        return True, f"one incremental sync in {relist_every} lists (STUDIP_RELIST_EVERY)"
    return False, (
        f"{crawls + 1} incremental sync(s) since the last listing; one in {relist_every} lists "
        "(STUDIP_RELIST_EVERY), the others crawl the users CO or the LMS changed"
    )


def listing_landed(conn: Sql, sync_key: str) -> bool:
    """Whether the sync's Stud.IP pages are a JSON:API listing (a snapshot), not a crawl."""
    # before raw_studip_listing_pages existed, listings landed in raw_studip_pages
    row = conn.execute(
        f"""SELECT (SELECT count(*) FROM {LISTING_RAW_TABLE}
                    WHERE sync_key = $key AND starts_with(request_key, $listing))
                 + (SELECT count(*) FROM {RAW_TABLE}
                    WHERE sync_key = $key AND starts_with(request_key, $listing))""",
        {"key": sync_key, "listing": LISTING_KEY},
    ).fetchone()
    return bool(row and row[0])


def merge_state(conn: Sql, table: StateTable, sync_key: str, *, full: bool) -> dict[str, int]:
    """Bring ``table`` up to the sync's staged rows; return inserted/updated/deleted counts.

    Changed and new rows get ``changed_in_sync = sync_key``. A full sync deletes the rows it did
    not see; an incremental one only those in the table's ``incremental_scope``.
    """
    params = {"sync_key": sync_key}
    conn.execute(f"CREATE OR REPLACE TEMP TABLE studip_incoming AS {table.incoming}", params)
    match = " AND ".join(f"t.{k} = i.{k}" for k in table.keys)
    columns = ", ".join((*table.keys, *table.values))
    differs = f"{row_hash_sql(table.values, 't')} <> {row_hash_sql(table.values, 'i')}"
    assignments = ", ".join(f"{v} = i.{v}" for v in table.values)

    def count(sql: str) -> int:
        row = conn.execute(sql, params if "$sync_key" in sql else None).fetchone()
        return int(row[0]) if row else 0

    updated = count(
        f"UPDATE {table.name} AS t SET {assignments}, changed_in_sync = $sync_key "
        f"FROM studip_incoming AS i WHERE {match} AND ({differs})"
    )
    inserted = count(
        f"INSERT INTO {table.name} ({columns}, changed_in_sync) "
        f"SELECT {columns}, $sync_key FROM studip_incoming AS i "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table.name} AS t WHERE {match})"
    )
    scope = "TRUE" if full else table.incremental_scope
    deleted = 0
    if scope is not None:
        gone = (
            f"FROM {table.name} AS t WHERE ({scope}) "
            f"AND NOT EXISTS (SELECT 1 FROM studip_incoming AS i WHERE {match})"
        )
        if table.graph_change not in (None, REBUILD):
            ids = f"SELECT t.{table.keys[0]} {gone}"
            note_changes(conn, table.graph_change, ids, params if "$sync_key" in ids else None)
        deleted = count(f"DELETE {gone}")
    conn.execute("DROP TABLE studip_incoming")
    if table.graph_change == REBUILD and inserted + updated + deleted:
        note_rebuild(conn, f"{table.name} changed")
    elif table.graph_change is not None:
        note_changed_rows(conn, table.graph_change, table.name, table.keys[0], sync_key)
    return {"inserted": inserted, "updated": updated, "deleted": deleted}


def _column_schema(conn: Sql, table: str) -> dg.TableSchema:
    rows = conn.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in rows])


@dg.multi_asset(
    name="studip_current_state",
    specs=[
        dg.AssetSpec(
            table.name,
            deps=[studip_raw_pages],
            group_name=GROUP,
            kinds={"duckdb"},
            description=table.description,
        )
        for table in STATE_TABLES
    ],
    partitions_def=sync_runs_partitions,
    pool=WAREHOUSE_POOL,
)
def studip_current_state(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.MaterializeResult]:
    """Merges the sync's staged Stud.IP records into the current-state tables, in one
    transaction: a full sync makes them its snapshot (absent rows deleted), an incremental one
    upserts what it re-read and replaces the memberships of the courses whose members it
    re-read."""
    sync_key = context.partition_key
    full = parse_sync_key(sync_key).mode == "full"
    results = []
    started = time.perf_counter()
    with warehouse.connection() as conn, transaction(conn):
        (pages,) = conn.execute(
            f"SELECT count(*) FROM {RAW_TABLE} WHERE sync_key = ?", [sync_key]
        ).fetchone() or (0,)
        if not pages:
            raise dg.Failure(
                f"no Stud.IP pages landed for {sync_key}; materialize studip_raw_pages first"
            )
        if full:
            note_rebuild(conn, f"a full Stud.IP sync ({sync_key})")
        # a listing is a snapshot of Stud.IP whatever the sync's mode: absent rows are gone
        full = full or listing_landed(conn, sync_key)
        for table in STATE_TABLES:
            changes = merge_state(conn, table, sync_key, full=full)
            (rows,) = conn.execute(f"SELECT count(*) FROM {table.name}").fetchone() or (0,)
            results.append(
                dg.MaterializeResult(
                    asset_key=table.name,
                    metadata={
                        "dagster/row_count": int(rows),
                        **changes,
                        "duration_s": round(time.perf_counter() - started, 3),
                        "dagster/column_schema": _column_schema(conn, table.name),
                    },
                )
            )
    yield from results


STUDIP_ASSETS = [studip_raw_pages, studip_current_state]
