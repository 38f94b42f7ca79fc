"""Stud.IP's listing mode: the JSON:API lists what the classic API can only crawl.

``choose_api_mode`` picks the mode of a sync (``STUDIP_API_MODE``: ``auto`` lists when
``/jsonapi.php/v1/users/me`` answers for the account and it is root, else crawls; ``jsonapi`` and
``rest`` force one) and says why. ``list_studip`` lands a listing with the crawl's ``Stager``, so
the ``studip_*`` tables come out the same whichever mode fetched them:

* ``/semesters`` (JSON:API) → the semesters; ``/studip/settings`` (classic: the course types);
* ``/courses?filter[semester]=`` per selected semester (unfiltered when every semester is
  selected, like the crawl) → the courses running in them;
* ``/users?include=course-memberships`` → every user with every membership; memberships of
  courses outside the selected semesters are dropped (the crawl never reaches them);
* kept users: the members of a selected course, the API account and ``STUDIP_SEED_USERS`` (the
  crawl's seeds). Courses nobody is a member of are dropped (the crawl reaches a course only
  through a member);
* per kept user, the classic ``/user/:id`` and ``/user/:id/institutes``: the JSON:API has no user
  datafields (matriculation number, birth date, CPF) and no work/study institute relation. An
  incremental listing reads them only for users that are new or whose listed name, username,
  e-mail or perms changed (and the users CO or the LMS changed in the sync); the others keep
  their stored rows. A change of a datafield alone waits for the next full sync.

Every page lands raw as it arrives, one row per page with its request parameters (``route`` =
``jsonapi:<route>``): the JSON:API pages zlib-compressed in ``raw_studip_listing_pages`` (read
them with ``listing_pages``; uncompressed, a 100,000-user listing held over 2 GB in the landing
transaction), the classic ones in ``raw_studip_pages``. Pages come from the client in bounded
batches and records are buffered per ``FLUSH_PAGES``, never the whole listing in Python (only the
id sets).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from resources.studip import (
    StudipClient,
    StudipCourse,
    StudipError,
    StudipPage,
    StudIPResource,
    StudipSemester,
    is_user_id,
)
from resources.studip.jsonapi import (
    Course,
    JsonApiClient,
    JsonApiPage,
    Membership,
    Semester,
    User,
)
from resources.warehouse import raw_page_bodies

if TYPE_CHECKING:
    from assets.studip import Stager

JSONAPI_KEY = "/jsonapi.php/v1"
LISTING_KEY = JSONAPI_KEY + "/users?include=course-memberships"
# Where the JSON:API pages land: compressed (a listing is large), one row per page as received.
LISTING_RAW_TABLE = "raw_studip_listing_pages"


def listing_pages(conn: Any, sync_key: str) -> Iterator[tuple[str, int, str]]:
    """(request_key, page_nr, body as JSON text) of each listing page of ``sync_key``."""
    return raw_page_bodies(conn, LISTING_RAW_TABLE, sync_key)


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # jsonapi | rest
    reason: str


def choose_api_mode(studip: StudIPResource, jsonapi: JsonApiClient) -> ModeChoice:
    """The API this sync reads and why (see the module doc)."""
    if studip.api_mode == "rest":
        return ModeChoice("rest", "STUDIP_API_MODE=rest")
    forced = studip.api_mode == "jsonapi"
    try:
        me = jsonapi.me()
    except StudipError as exc:
        if forced:
            raise dg.Failure(f"STUDIP_API_MODE=jsonapi, but the JSON:API failed: {exc}") from exc
        status = f"status {exc.status}" if exc.status else "no answer"
        return ModeChoice(
            "rest", f"the JSON:API /users/me gave {status} for the account, so the classic crawl"
        )
    permission = me.attributes.permission
    if permission != "root":
        reason = f"the account is {permission!r} on the JSON:API; the listing needs root"
        if forced:
            raise dg.Failure(f"STUDIP_API_MODE=jsonapi, but {reason} (STUDIP_USERNAME)")
        return ModeChoice("rest", reason + ", so the classic crawl")
    if forced:
        return ModeChoice("jsonapi", "STUDIP_API_MODE=jsonapi and the account is root")
    return ModeChoice("jsonapi", "STUDIP_API_MODE=auto and /users/me answers as root")


def as_studip_page(page: JsonApiPage, route: str, records: Sequence[Any] = ()) -> StudipPage:
    """A JSON:API page for the Stager: landed raw under its JSON:API path and parameters."""
    return StudipPage(
        route, JSONAPI_KEY + page.request_key, dict(page.params), page.page_nr, page.body,
        page.total, list(records), page.rejected, page.fetched_at, subject=page.subject,
    )  # fmt: skip


def classic_semester(semester: Semester) -> StudipSemester:
    a = semester.attributes

    def stamp(moment: Any) -> int | None:
        return None if moment is None else int(moment.timestamp())

    return StudipSemester(
        id=semester.id, title=a.title, token=a.token, begin=stamp(a.start), end=stamp(a.end),
        seminars_begin=stamp(a.start_of_lectures), seminars_end=stamp(a.end_of_lectures),
        visible=1 if a.visible else 0,
    )  # fmt: skip


def classic_course(course: Course) -> StudipCourse:
    """The course as the classic API shows it to root (no colour group: root is no member)."""
    a = course.attributes

    def link(semester_id: str | None) -> str | None:
        return f"/api.php/semester/{semester_id}" if semester_id else None

    return StudipCourse(
        course_id=course.id, number=a.course_number or "", title=a.title,
        subtitle=a.subtitle or "", type=str(a.course_type),
        start_semester=link(course.start_semester_id), end_semester=link(course.end_semester_id),
        group=None,
    )  # fmt: skip


def list_semesters(jsonapi: JsonApiClient, stager: Stager) -> list[StudipSemester]:
    semesters: list[StudipSemester] = []
    for page in jsonapi.semesters():
        records = [classic_semester(s) for s in page.records if isinstance(s, Semester)]
        stager.land(as_studip_page(page, "/semesters", records))
        semesters.extend(records)
    return semesters


@dataclass(frozen=True)
class RefreshSlice:
    """The users whose details a full listing re-reads although nothing listed changed: those
    whose day it is (a hash of the id modulo ``days`` = the sync's day modulo ``days``), so each
    user's datafields and institutes are read at least once in ``days`` daily full syncs."""

    days: int
    day: int  # days since 1970-01-01 of the sync

    def covers(self, user_id: str) -> bool:
        return zlib.crc32(user_id.encode()) % self.days == self.day % self.days


@dataclass
class ListingResult:
    kept: list[str] = field(default_factory=list)  # the kept users
    details_read: int = 0  # users whose /user/:id and institutes were read
    listed_users: int = 0  # every user the listing returned


def list_studip(
    jsonapi: JsonApiClient,
    client: StudipClient,
    stager: Stager,
    course_semesters: Sequence[str | None],
    seed_users: Sequence[str],
    *,
    reuse_details: bool,
    refresh: RefreshSlice | None = None,
    changed_user_ids: Iterable[str] = (),
) -> ListingResult:
    """Land a listing of Stud.IP (see the module doc); semesters and settings already landed."""
    result = ListingResult()
    courses_by_semester: list[tuple[str | None, list[StudipCourse]]] = []
    selected: set[str] = set()
    for semester_id in course_semesters:
        kept: list[StudipCourse] = []
        for page in jsonapi.courses(semester_id):
            stager.land(as_studip_page(page, "jsonapi:/courses", page.records))
            kept += [classic_course(c) for c in page.records if isinstance(c, Course)]
        courses_by_semester.append((semester_id, kept))
        selected.update(c.course_id for c in kept)

    me = jsonapi.me()
    seed_ids = {entry for entry in seed_users if is_user_id(entry)}
    seed_names = {entry.lower() for entry in seed_users if not is_user_id(entry)}
    found_names: set[str] = set()
    members: set[str] = set()
    with_members: set[str] = set()
    listed: dict[str, tuple[str, str, str, str, str]] = {}  # id -> compared attributes
    for page in jsonapi.users(include_memberships=True):
        stager.land(as_studip_page(page, "jsonapi:/users", page.records))
        rows = [
            (m.course_id, m.user_id, m.permission)
            for m in page.included
            if isinstance(m, Membership) and m.course_id in selected
        ]
        stager.stage_memberships(rows)
        members.update(user_id for _, user_id, _ in rows)
        with_members.update(course_id for course_id, _, _ in rows)
        for user in page.records:
            if not isinstance(user, User):
                continue
            a = user.attributes
            listed[user.id] = (a.username, a.email or "", a.permission, a.given_name,
                               a.family_name)  # fmt: skip
            if a.username.lower() in seed_names:
                seed_ids.add(user.id)
                found_names.add(a.username.lower())
    result.listed_users = len(listed)
    missing = sorted(seed_names - found_names)
    if missing:
        raise dg.Failure(f"STUDIP_SEED_USERS: Stud.IP has no user with the username {missing[0]!r}")
    for semester_id, courses in courses_by_semester:
        stager.stage_courses([c for c in courses if c.course_id in with_members], semester_id)

    kept_users = members | seed_ids | {me.id}
    kept_users &= set(listed) | {me.id}
    result.kept = sorted(kept_users)
    to_read = sorted(kept_users)
    if reuse_details:
        to_read = users_to_reread(stager, kept_users, listed, set(changed_user_ids), refresh)
        keep_stored_users(stager, sorted(kept_users - set(to_read)))
    result.details_read = len(to_read)
    fetches: list[Callable[[], Any]] = []
    for user_id in to_read:
        if user_id == me.id:
            fetches.append(lambda: client.user_page())
        else:
            fetches.append(lambda u=user_id: client.user_page(u))
        fetches.append(lambda u=user_id: list(client.user_institutes(u)))
    for fetched in in_order(fetches, client.concurrency):
        for page in fetched if isinstance(fetched, list) else [fetched]:
            stager.land(page)
    return result


def in_order(fetches: Sequence[Callable[[], Any]], concurrency: int) -> Iterator[Any]:
    """Run ``fetches`` with ``concurrency`` in flight; results in order, at most
    ``concurrency`` waiting."""
    pending: deque[Future[Any]] = deque()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="studip-details") as pool:
        try:
            for fetch in fetches:
                pending.append(pool.submit(fetch))
                if len(pending) >= concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def users_to_reread(
    stager: Stager,
    kept: set[str],
    listed: dict[str, tuple[str, str, str, str, str]],
    changed: set[str],
    refresh: RefreshSlice | None = None,
) -> list[str]:
    """The kept users a listing reads in full (``/user/:id``, ``/user/:id/institutes``): new
    ones, those whose listed username, e-mail, perms or name differ from ``studip_users``,
    ``changed`` (by CAMPUSonline or the LMS in this sync) and those ``refresh`` covers."""
    stored = {
        row[0]: tuple(row[1:])
        for row in stager.writer.execute(
            "SELECT user_id, username, coalesce(email, ''), perms, given, family FROM studip_users"
        ).fetchall()
    }
    return sorted(
        u
        for u in kept
        if u not in stored
        or u in changed
        or (u in listed and listed[u] != stored[u])
        or (refresh is not None and refresh.covers(u))
    )


def keep_stored_users(stager: Stager, user_ids: list[str]) -> None:
    """Stage the stored rows of users an incremental listing did not re-read (a listing is a
    snapshot: whatever is not staged is deleted)."""
    if not user_ids:
        return
    stager.flush()
    params = {"sync_key": stager.writer.sync_key, "ids": user_ids}
    stager.writer.execute(
        """
        INSERT INTO stg_studip_users (sync_key, user_id, username, perms, email, given,
            family, formatted, datafields)
        SELECT $sync_key, user_id, username, perms, email, given, family, formatted, datafields
        FROM studip_users WHERE user_id IN (SELECT unnest($ids::VARCHAR[]))
        """,
        params,
    )
    stager.writer.execute(
        """
        INSERT INTO stg_studip_user_institutes (sync_key, user_id, institute_id, relation,
            perms, name, faculty_name, city)
        SELECT $sync_key, ui.user_id, ui.institute_id, ui.relation, ui.perms, i.name,
            i.faculty_name, i.city
        FROM studip_user_institutes ui JOIN studip_institutes i USING (institute_id)
        WHERE ui.user_id IN (SELECT unnest($ids::VARCHAR[]))
        """,
        params,
    )
    stager.counts.users += len(user_ids)
