"""The Stud.IP REST API (``<studip>/api.php``): a typed client and the user–course crawl.

Stud.IP has no route listing all courses or users, so the client enumerates them by a crawl over
the user–course graph (``/work/shared/reference/studip.md``): from seed users, each user's courses
(per selected semester), each course's members, each new member's courses, until closure. Requests
run on a bounded thread pool; each page is handed to the caller as it arrives, in the caller's
thread, so the DuckDB writes stay in one thread.

The API's quirks handled here: collections read by value (the keys are ``/api.php/...`` paths) and
``[]`` for an empty one; paging with ``offset``/``limit`` that stops on ``offset + items >=
total`` (the reported offset is rounded down and ``next`` is clamped, so the links are never
followed); the institutes' ``{"work": [...], "study": [...]}`` collection; ``/users?q=`` as a
*list* of short records (id, href, name: a hit is followed with ``/user/:id``); ids and course types
as strings, semester times as ints, ``group`` an int or null (the API account's colour group in the
course: null where it is no member, i.e. always for root); errors as HTML pages, JSON strings or
JSON objects. ``?semester=`` returns every course that *runs* in the semester: a course from an
earlier semester, and every course without end (``start_semester`` null), come back too.

Only root may read other users' courses (``have_perm("root")`` in the route): any other account
gets a 401 with body ``""`` there, which is told apart from a refused login (HTML 401).
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args
from urllib.parse import urlencode

import dagster as dg
import orjson
import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth1

from resources.http import (
    DEFAULT_MAX_PAGES,
    MB,
    ApiError,
    HttpClient,
    RetryPolicy,
    bad_text,
    field_names,
    page_errors,
    reject_bad_text,
)
from resources.quarantine import validation_reason
from resources.settings import (
    StudipSettings,
    resource_config,
    secret_config,
    setting_field,
)

SYSTEM = "Stud.IP"
_Item = TypeVar("_Item")  # what StudipClient._in_order reads by
_Read = TypeVar("_Read")  # what StudipClient._in_order reads per item

# The routes hubsync reads, as /discovery names them. /users (the search) is only needed to
# resolve seed users given by username.
CRAWL_ROUTES = (
    "/user",
    "/user/:user_id",
    "/user/:user_id/courses",
    "/user/:user_id/institutes",
    "/course/:course_id/members",
    "/semesters",
    "/studip/settings",
)
SEARCH_ROUTE = "/users"

MEMBER_STATUSES = ("user", "autor", "tutor", "dozent")
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_SEMESTER_PATH = re.compile(r"(?:/api\.php)?/semester/([0-9a-f]{32})")


# -- errors ------------------------------------------------------------------------------------


class StudipError(ApiError):
    """A Stud.IP request failed for good."""


class StudipAuthError(StudipError):
    """401, or a rejected OAuth1 signature: the credentials are wrong or lack the rights."""


class StudipNotRoot(StudipAuthError):
    """401 with a JSON body on a route the account may not read: it is not root."""


class StudipRouteNotActivated(StudipError):
    """403 ``Route not activated``: an administrator has to enable ``route`` for the REST API."""

    def __init__(self, route: str, *args: Any, **kwargs: Any) -> None:
        self.route = route
        super().__init__(*args, **kwargs)


class StudipNotFound(StudipError):
    """404: the object does not exist (any more). Callers treat this as data, not a crash."""


class StudipRoutesMissing(RuntimeError):
    """``/discovery`` does not list routes hubsync needs."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            "Stud.IP does not offer these REST routes hubsync needs: "
            + ", ".join(f"GET {route}" for route in self.missing)
            + ". Ask a Stud.IP administrator to activate them for the REST API "
            "(Admin > System > API), then sync again."
        )


# -- records (named as the API names them) -----------------------------------------------------

HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
MemberStatus = Literal["user", "autor", "tutor", "dozent"]


class StudipModel(BaseModel):
    # Stud.IP mixes strings and ints for the same kind of value: numbers become strings where
    # the model says str, numeric strings ints where it says int.
    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_bad_text(cls, data: Any) -> Any:
        return reject_bad_text(data, field_names(cls))


class StudipName(StudipModel):
    username: str
    formatted: str = ""
    family: str = ""
    given: str = ""
    prefix: str = ""
    suffix: str = ""


class StudipDatafield(StudipModel):
    id: str
    name: str
    type: str = ""
    value: str | None = None


class StudipUserRef(StudipModel):
    """A short user record (a ``/users?q=`` hit, a course member): no perms, e-mail or
    datafields."""

    id: HexId
    name: StudipName | None = None

    @property
    def username(self) -> str:
        return self.name.username if self.name else ""


class StudipUser(StudipModel):
    user_id: HexId
    username: Annotated[str, StringConstraints(min_length=1)]
    name: StudipName
    perms: Literal["user", "autor", "tutor", "dozent", "admin", "root"]
    email: str = ""
    datafields: list[StudipDatafield] = Field(default_factory=list)

    @field_validator("datafields", mode="before")
    @classmethod
    def _datafields_by_value(cls, value: Any) -> Any:
        return list(value.values()) if isinstance(value, dict) else value

    @property
    def datafield_map(self) -> dict[str, str]:
        return {f.name: f.value for f in self.datafields if f.value is not None}


class StudipSemester(StudipModel):
    id: HexId
    title: str
    token: str = ""
    begin: int
    end: int
    seminars_begin: int | None = None
    seminars_end: int | None = None
    visible: int = 1


def semester_id_of(path: str | None) -> str | None:
    """The semester id in a ``/api.php/semester/<id>`` link (None for a study group)."""
    if path is None:
        return None
    match = _SEMESTER_PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"not a semester link: {path!r}")
    return match.group(1)


class StudipCourse(StudipModel):
    course_id: HexId
    number: str = ""
    title: str
    subtitle: str = ""
    type: str
    start_semester: str | None
    end_semester: str | None
    group: int | None = None  # the API account's colour group: null unless it is a member

    @field_validator("start_semester", "end_semester")
    @classmethod
    def _semester_link(cls, value: str | None) -> str | None:
        semester_id_of(value)
        return value

    @property
    def start_semester_id(self) -> str | None:
        return semester_id_of(self.start_semester)

    @property
    def end_semester_id(self) -> str | None:
        return semester_id_of(self.end_semester)


class StudipMember(StudipModel):
    member: StudipUserRef
    status: MemberStatus


class StudipInstitute(StudipModel):
    institute_id: HexId
    name: str
    perms: str = ""
    faculty_name: str = ""
    city: str = ""


class StudipSemType(StudipModel):
    name: str
    class_: str = Field(alias="class")
    studygroup: bool = False  # its SEM_CLASS has studygroup_mode 1 (set from SEM_CLASS)


# -- pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """A record that failed validation, for the quarantine."""

    record_type: str
    record_key: str | None
    reason: str
    raw: Any


@dataclass(frozen=True)
class StudipPage:
    """One response as received, with the records it holds (valid ones and rejected ones)."""

    route: str  # the /discovery template, e.g. /user/:user_id/courses
    request_key: str  # path plus its filter parameters: identifies the call within a sync
    params: Mapping[str, Any]  # every query parameter sent, paging included
    page_nr: int
    body: bytes
    total: int
    records: list[Any]
    rejected: list[Rejected]
    fetched_at: datetime
    subject: str = ""  # the user or course the call was about
    found: bool = True  # False when the object answered 404 (the body is then "null")
    digest: bytes = b""  # of a collection page's items: a page that repeats one ends paging


def _digest(collection: Any) -> bytes:
    """What tells one page's items from another's (orjson, not ``repr``: 0.3 ms instead of
    1.7 ms for 500 members; a collection orjson cannot write is digested by its ``repr``)."""
    try:
        text = orjson.dumps(collection, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = repr(collection).encode()
    return hashlib.sha1(text).digest()


def collection_values(collection: Any) -> list[Any]:
    """The items of a ``collection``: the values of an object (keys are API paths), ``[]``
    when empty (PHP writes an empty array so)."""
    if isinstance(collection, dict):
        return list(collection.values())
    if isinstance(collection, list):
        return collection
    raise ValueError(f"collection is neither an object nor a list: {type(collection).__name__}")


def institute_entries(collection: Any) -> list[tuple[str, Any]]:
    """``(relation, entry)`` pairs of a ``/user/:id/institutes`` collection
    (``{"work": [...], "study": [...]}``, or ``[]`` when both are empty)."""
    if isinstance(collection, list) and not collection:
        return []
    if not isinstance(collection, dict):
        raise ValueError("institutes collection is not a {work, study} object")
    return [
        (relation, entry)
        for relation in ("work", "study")
        for entry in collection_values(collection.get(relation) or [])
    ]


def _validate(
    model: type[BaseModel], raw: Any, record_type: str, key_field: str
) -> tuple[Any | None, Rejected | None]:
    try:
        return model.model_validate(raw), None
    except ValidationError as exc:
        key = raw.get(key_field) if isinstance(raw, dict) else None
        reason = validation_reason(exc)
        return None, Rejected(record_type, key if isinstance(key, str) else None, reason, raw)


def _member_key(raw: Any) -> str | None:
    member = raw.get("member") if isinstance(raw, dict) else None
    key = member.get("id") if isinstance(member, dict) else None
    return key if isinstance(key, str) else None


# -- the client --------------------------------------------------------------------------------


class StudipClient:
    """Typed access to the Stud.IP REST API (thread-safe: the crawl calls it from a pool)."""

    def __init__(
        self,
        http: HttpClient,
        *,
        page_size: int = 500,
        concurrency: int = 8,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        self.http = http
        self.page_size = page_size
        self.concurrency = concurrency
        self.max_pages = max_pages
        # every request of this client, however its reads nest (the crawl's workers each
        # reading a course's pages ahead), waits for one of ``concurrency`` places
        self._in_flight = threading.BoundedSemaphore(concurrency)

    # -- low level -----------------------------------------------------------------------------

    def get(self, route: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (under /api.php) and return its JSON; errors mapped to StudipError."""
        return self.http.json(self._get(route, path, params))

    def _get(
        self, route: str, path: str, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        with self._in_flight:
            return get_ok(self.http, route, path, params, self._error)

    def _error(self, route: str, response: requests.Response) -> StudipError:
        status = response.status_code
        text = response.text.strip() if response.content else ""
        detail = _error_detail(response)
        args = (SYSTEM, "GET", response.url)
        if status == 401 and "json" in response.headers.get("Content-Type", ""):
            # a JSON 401 (body "") comes from the route's permission check, not the login
            return StudipNotRoot(
                *args,
                f"Stud.IP lets only root read {route} for other users (and study groups): the "
                "API account (STUDIP_USERNAME, or the owner of the STUDIP_OAUTH_* token) must "
                "be root; an admin account is not enough",
                status,
            )
        if status == 401:
            return StudipAuthError(
                *args,
                f"Stud.IP refused the login for {route}: check STUDIP_USERNAME/STUDIP_PASSWORD "
                "or the STUDIP_OAUTH_* credentials (the account must be root)",
                status,
            )
        if status == 403 and text.startswith("Route not activated"):
            return StudipRouteNotActivated(
                route,
                *args,
                f"the REST route GET {route} is not activated; ask a Stud.IP administrator to "
                "activate it (Admin > System > API)",
                status,
            )
        if status == 404 and "json" not in response.headers.get("Content-Type", ""):
            # Stud.IP answers an unknown route with text/html, a missing object with JSON.
            return StudipError(
                *args, f"no such route {route}: is STUDIP_API_URL the .../api.php URL?", status
            )
        if status == 404:
            return StudipNotFound(*args, f"{route}: {detail or 'not found'}", status)
        if status == 500 and "signature" in detail.lower():
            return StudipAuthError(
                *args, f"the OAuth1 signature was rejected; check STUDIP_OAUTH_*: {detail}", status
            )
        if status >= 500:
            return StudipError(
                *args, f"{route} failed with a server error after retries: {detail}", status
            )
        if status == 400:
            return StudipError(*args, f"{route} refused the request: {detail}", status)
        return StudipError(*args, f"{route}: {detail or 'unexpected status'}", status)

    def pages(
        self,
        route: str,
        path: str,
        filters: Mapping[str, str] | None = None,
        *,
        parse: Callable[[Any], tuple[list[Any], list[Rejected]]],
        limit: int | None = None,
        subject: str = "",
        read_ahead: bool = False,
    ) -> Iterator[StudipPage]:
        """The pages of a collection route, first to last.

        Stops when ``offset + items >= total`` (offset = the one sent; the reported one is
        rounded down) or a page is empty; ``links`` are ignored. A 404 yields one empty page
        with ``found=False`` (the object is gone: data, not a crash). A page that repeats an
        earlier one (a ``total`` that grows while the same items come back) or more than
        ``max_pages`` pages (``STUDIP_MAX_PAGES``) mean the paging would never end: ``ApiError``.

        ``read_ahead``: once a full first page gives the total, the other pages are asked for
        together (the client keeps at most ``concurrency`` requests in flight) and checked in
        order like the rest. A short page among them (the collection shrank meanwhile) drops
        the pages read after it and paging goes on one page after another from where it is, as
        it does when the total grew.
        """
        filters = dict(filters or {})
        limit = limit or self.page_size
        request_key = path + (
            "?" + "&".join(f"{k}={v}" for k, v in filters.items()) if filters else ""
        )

        def endless(why: str, params: Mapping[str, Any] | None = None) -> ApiError:
            url = self.http.url(path) + (f"?{urlencode(params)}" if params else "")
            return ApiError(SYSTEM, "GET", url, f"paging does not end: {why}")

        too_many = f"more than {self.max_pages} pages (STUDIP_MAX_PAGES)"

        def read(at: tuple[int, int]) -> StudipPage:
            page_nr, offset = at
            if page_nr >= self.max_pages:
                raise endless(too_many)
            params = {**filters, "offset": offset, "limit": limit}
            return self._collection_page(route, path, params, page_nr, request_key, parse, subject)

        offset = 0
        page_nr = 0
        ahead: Iterator[StudipPage] = iter(())
        earlier: dict[bytes, int] = {}  # digest of each page's collection -> its number
        while True:
            page = next(ahead, None) or read((page_nr, offset))
            if not page.found:
                yield page
                return
            count = len(page.records) + len(page.rejected)
            first = earlier.setdefault(page.digest, page_nr)
            if count and first != page_nr:
                raise endless(f"page {page_nr} repeats page {first}", page.params)
            yield page
            offset += count
            page_nr += 1
            if count == 0 or offset >= page.total:
                return
            if count != limit:  # the pages read ahead start elsewhere: go on from offset
                ahead = iter(())
            if read_ahead and page_nr == 1 and count == limit:
                rest = [(page_nr + i, at) for i, at in enumerate(range(offset, page.total, limit))]
                if rest[-1][0] >= self.max_pages:  # asks for no page more than it may read
                    raise endless(too_many)
                ahead = self._in_order(read, rest, "studip-pages")

    def _collection_page(
        self,
        route: str,
        path: str,
        params: dict[str, Any],
        page_nr: int,
        request_key: str,
        parse: Callable[[Any], tuple[list[Any], list[Rejected]]],
        subject: str,
    ) -> StudipPage:
        """One page of a collection route (a 404: an empty page with ``found=False``)."""
        fetched_at = datetime.now(UTC)
        try:
            response = self._get(route, path, params)
        except StudipNotFound:
            return StudipPage(
                route, request_key, params, page_nr, b"null", 0, [], [], fetched_at,
                subject=subject, found=False,
            )  # fmt: skip
        with page_errors(f"page {page_nr}, offset {params['offset']}"):
            body = self.http.json(response)
        try:
            collection = body["collection"]
            total = int(body["pagination"]["total"])
            records, rejected = parse(collection)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.http.error(
                response, f"{route}: not a Stud.IP collection ({exc}) [page {page_nr}]"
            ) from None
        return StudipPage(
            route, request_key, params, page_nr, response.content, total, records,
            rejected, fetched_at, subject=subject,
            digest=_digest(collection),
        )  # fmt: skip

    # -- routes --------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        body = self.get("/discovery", "/discovery")
        if isinstance(body, list) and not body:
            return {}
        if not isinstance(body, dict):
            raise StudipError(SYSTEM, "GET", self.http.url("/discovery"), "not a route map")
        return body

    def missing_routes(self, needed: Iterable[str]) -> list[str]:
        """The routes of ``needed`` that /discovery does not offer for GET."""
        offered = self.discovery()
        return [
            route
            for route in needed
            if not (isinstance(offered.get(route), dict) and "get" in offered[route])
        ]

    def check_routes(self, needed: Iterable[str]) -> None:
        missing = self.missing_routes(needed)
        if missing:
            raise StudipRoutesMissing(missing)

    def user_page(self, user_id: str | None = None) -> StudipPage:
        """``/user`` (the API account) or ``/user/:id``; a 404 gives a page with no record."""
        route, path = (
            ("/user", "/user") if user_id is None else ("/user/:user_id", f"/user/{user_id}")
        )
        fetched_at = datetime.now(UTC)
        try:
            response = self._get(route, path)
        except StudipNotFound:
            return StudipPage(
                route, path, {}, 0, b"null", 0, [], [], fetched_at,
                subject=user_id or "", found=False,
            )  # fmt: skip
        raw = self.http.json(response)
        user, rejected = _validate(StudipUser, raw, "user", "user_id")
        return StudipPage(
            route, path, {}, 0, response.content, 1, [user] if user else [],
            [rejected] if rejected else [], fetched_at, subject=user_id or "",
        )  # fmt: skip

    def user_pages(self, user_ids: Sequence[str]) -> Iterator[StudipPage]:
        """``/user/:id`` of each of ``user_ids``, in their order, with up to ``concurrency``
        requests in flight (one after another, the hits of a name search at a large university
        took seconds)."""
        return self._in_order(self.user_page, user_ids, "studip-users")

    def search_users(self, text: str) -> Iterator[StudipPage]:
        """``/users?q=`` (username, given or family name): pages of short records
        (``StudipUserRef``; ``collection`` is a list). Perms, e-mail and datafields need
        ``/user/:id`` for each hit."""
        return self.pages(
            SEARCH_ROUTE,
            "/users",
            {"q": text},
            parse=lambda c: _parse_all(collection_values(c), StudipUserRef, "user", "id"),
            subject=text,
        )

    def searches(self, texts: Sequence[str]) -> Iterator[list[StudipPage]]:
        """Every page of ``/users?q=`` for each of ``texts``, in their order, with up to
        ``concurrency`` searches in flight: each scans the user table on the server, and one
        after another, 16 of them took 0.85 s of a sandbox's time at 100,000 students."""
        return self._in_order(lambda text: list(self.search_users(text)), texts, "studip-search")

    def _in_order(
        self, read: Callable[[_Item], _Read], items: Sequence[_Item], thread_name: str
    ) -> Iterator[_Read]:
        """``read`` of each of ``items``, in their order, up to ``concurrency`` at a time."""
        if not items:
            return
        workers = min(self.concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
            yield from pool.map(read, items)

    def semesters(self) -> Iterator[StudipPage]:
        return self.pages(
            "/semesters",
            "/semesters",
            parse=lambda c: _parse_all(collection_values(c), StudipSemester, "semester", "id"),
        )

    def settings(self) -> StudipPage:
        """``/studip/settings``; ``records`` holds ``(type key, StudipSemType)`` pairs."""
        fetched_at = datetime.now(UTC)
        response = self._get("/studip/settings", "/studip/settings")
        body = self.http.json(response)
        sem_types = body.get("SEM_TYPE") if isinstance(body, dict) else None
        studygroup_classes = _studygroup_classes(body)
        records: list[tuple[str, StudipSemType]] = []
        rejected: list[Rejected] = []
        for key, raw in sem_types.items() if isinstance(sem_types, dict) else []:
            sem_type, problem = _validate(StudipSemType, raw, "sem_type", "name")
            if sem_type is not None:
                studygroup = sem_type.class_ in studygroup_classes
                records.append((str(key), sem_type.model_copy(update={"studygroup": studygroup})))
            elif problem is not None:
                rejected.append(Rejected("sem_type", str(key), problem.reason, raw))
        return StudipPage(
            "/studip/settings", "/studip/settings", {}, 0, response.content, len(records),
            records, rejected, fetched_at,
        )  # fmt: skip

    def user_courses(self, user_id: str, semester_id: str | None = None) -> Iterator[StudipPage]:
        filters = {"semester": semester_id} if semester_id else {}
        return self.pages(
            "/user/:user_id/courses",
            f"/user/{user_id}/courses",
            filters,
            parse=lambda c: _parse_all(collection_values(c), StudipCourse, "course", "course_id"),
            subject=user_id,
        )

    def course_members(self, course_id: str, *, read_ahead: bool = True) -> Iterator[StudipPage]:
        """A course's members, a big course's pages read ahead (at 100,000 students one course
        has 26,363 members, 53 pages, read again whenever one member joins or leaves)."""
        return self.pages(
            "/course/:course_id/members",
            f"/course/{course_id}/members",
            parse=_parse_members,
            subject=course_id,
            read_ahead=read_ahead,
        )

    def user_institutes(self, user_id: str) -> Iterator[StudipPage]:
        """Records are ``(relation, StudipInstitute)`` with relation ``work`` or ``study``."""
        return self.pages(
            "/user/:user_id/institutes",
            f"/user/{user_id}/institutes",
            parse=_parse_institutes,
            subject=user_id,
        )

    # -- the crawl -----------------------------------------------------------------------------

    def crawl(
        self,
        seed_ids: Iterable[str],
        semester_ids: Sequence[str | None],
        *,
        fetched_users: Iterable[str] = (),
        known_users: Iterable[str] = (),
        stored_courses: Mapping[str, Iterable[str]] | None = None,
    ) -> Iterator[StudipPage]:
        """Every page of the closure crawl from ``seed_ids``, in the caller's thread as they arrive.

        For each reached user: ``/user/:id`` (unless in ``fetched_users``: its record was read
        already), its courses for each of ``semester_ids`` (None: unfiltered) and its
        institutes; for each new course: its members; each member not reached yet and not in
        ``known_users`` is reached in turn. Seeds are always reached. Each user and course is
        requested once. At most ``concurrency`` requests are in flight.

        ``stored_courses`` (an incremental crawl) maps a user to the courses of the selected
        semesters an earlier sync stored the user as a member of. Of that user's courses, only
        those whose membership changed have their members read: a course the user's list has
        and the store has not (joined), and, once the list is complete, a stored course it no
        longer has (left). A course both have is not read: at 100,000 students the courses of
        the 12 users of ten changes took 364 member pages, nearly all of them unchanged.
        """
        crawl = _Crawl(
            self,
            semester_ids,
            set(fetched_users),
            set(known_users),
            {user: set(courses) for user, courses in (stored_courses or {}).items()},
        )
        yield from crawl.run(seed_ids)


def _parse_all(
    items: list[Any], model: type[BaseModel], record_type: str, key_field: str
) -> tuple[list[Any], list[Rejected]]:
    records, rejected = [], []
    for raw in items:
        record, problem = _validate(model, raw, record_type, key_field)
        if record is not None:
            records.append(record)
        elif problem is not None:
            rejected.append(problem)
    return records, rejected


class CourseMember(NamedTuple):
    """A member of a course as a members page gives it to the crawl: a ``StudipMember``
    without the name, which nothing reads."""

    user_id: str
    status: str


MEMBER_STATUSES = frozenset(get_args(MemberStatus))
NAME_FIELDS = field_names(StudipName)
_HEX_ID = re.compile(r"[0-9a-f]{32}")


def _plain_text(value: Any) -> bool:
    return type(value) is str and bad_text(value) is None


def plain_member(raw: Any) -> CourseMember | None:
    """``raw`` as a ``CourseMember``, without building models, when ``StudipMember`` takes it
    as it is (nothing to coerce or refuse); else None, and the model decides.

    A course's members are the most records the crawl parses (26,363 in one course at 100,000
    students): validating each as three nested models took 0.55 s of client CPU for that
    course, which the sandbox needed on the same two cores."""
    if not isinstance(raw, dict) or raw.get("status") not in MEMBER_STATUSES:
        return None
    ref = raw.get("member")
    if not isinstance(ref, dict):
        return None
    user_id, name = ref.get("id"), ref.get("name")
    if type(user_id) is not str or _HEX_ID.fullmatch(user_id) is None:
        return None
    if name is not None and not (
        isinstance(name, dict)
        and "username" in name
        and all(_plain_text(name[field]) for field in NAME_FIELDS if field in name)
    ):
        return None
    return CourseMember(user_id, raw["status"])


def _parse_members(collection: Any) -> tuple[list[Any], list[Rejected]]:
    """``CourseMember`` records of a members page; a member that is not plainly valid goes
    through ``StudipMember``, so the model alone decides what is accepted and why not."""
    records: list[Any] = []
    rejected: list[Rejected] = []
    for raw in collection_values(collection):
        if (plain := plain_member(raw)) is not None:
            records.append(plain)
            continue
        record, problem = _validate(StudipMember, raw, "membership", "")
        if record is not None:
            records.append(CourseMember(record.member.id, record.status))
        elif problem is not None:
            rejected.append(Rejected(problem.record_type, _member_key(raw), problem.reason, raw))
    return records, rejected


def _parse_institutes(collection: Any) -> tuple[list[Any], list[Rejected]]:
    records, rejected = [], []
    for relation, raw in institute_entries(collection):
        record, problem = _validate(StudipInstitute, raw, "institute", "institute_id")
        if record is not None:
            records.append((relation, record))
        elif problem is not None:
            rejected.append(problem)
    return records, rejected


def _studygroup_classes(settings: Any) -> set[str]:
    """The ``SEM_CLASS`` keys with ``studygroup_mode`` 1 (Stud.IP's study groups, class 99 by
    default)."""
    classes = settings.get("SEM_CLASS") if isinstance(settings, dict) else None
    return {
        str(key)
        for key, value in (classes.items() if isinstance(classes, dict) else [])
        if isinstance(value, dict) and str(value.get("studygroup_mode", "0")) == "1"
    }


def get_ok(
    http: HttpClient,
    route: str,
    path: str,
    params: Mapping[str, Any] | None,
    error: Callable[[str, requests.Response], StudipError],
    label: str = "",
) -> requests.Response:
    """GET ``path``: the 200 answer, else a StudipError naming the route (``label`` first): the
    transport's reason (retries spent, a redirect refused, a body too large), or ``error``'s
    reading of the answer."""
    try:
        response = http.request("GET", path, retry=True, params=dict(params or {}))
    except ApiError as exc:
        raise StudipError(
            SYSTEM, "GET", exc.url, f"{label}{route}: {_reason(exc)}", exc.status,
            transport_error=exc.transport_error,
        ) from None  # fmt: skip
    if response.status_code == 200:
        return response
    raise error(route, response)


def _reason(exc: ApiError) -> str:
    """An ApiError's message without its ``<system>: <method> <url>`` prefix (the wrapping
    StudipError writes that prefix again)."""
    prefix = f"{exc.system}: {exc.method} {exc.url}" + (f" -> {exc.status}" if exc.status else "")
    return str(exc).removeprefix(prefix).removeprefix(": ")


def _error_detail(response: requests.Response) -> str:
    """A short reason from an error body: a JSON string, a JSON object's message, or a note
    that the server sent an HTML page."""
    if not response.content:
        return ""
    content_type = response.headers.get("Content-Type", "")
    text = response.text.strip()
    if "html" in content_type or text.startswith("<"):
        return "the server sent an HTML error page" if text.startswith("<") else text[:200]
    try:
        body = response.json()
    except ValueError:
        return text[:200]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])[:300]
    return str(body)[:200]


PAGES_WAITING_PER_WORKER = 50


class _Crawl:
    """One closure crawl: a thread pool fetches, the calling thread consumes and expands."""

    def __init__(
        self,
        client: StudipClient,
        semester_ids: Sequence[str | None],
        fetched_users: set[str],
        known_users: set[str],
        stored_courses: dict[str, set[str]],
    ) -> None:
        self.client = client
        self.semester_ids = list(semester_ids)
        self.fetched_users = fetched_users
        self.known_users = known_users
        self.stored_courses = stored_courses
        self.users: set[str] = set()
        self.courses: set[str] = set()
        # a user with stored courses: the courses its list has so far, and its unread lists
        self.listed_courses: dict[str, set[str]] = {}
        self.unread_course_lists: dict[str, int] = {}
        # Bounded: when landing falls behind, fetching waits instead of piling up parsed pages
        # (at 10k students 20,000 of them waited).
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue(
            maxsize=PAGES_WAITING_PER_WORKER * client.concurrency
        )
        self._outstanding = 0
        self._stop = threading.Event()

    def run(self, seed_ids: Iterable[str]) -> Iterator[StudipPage]:
        with ThreadPoolExecutor(
            max_workers=self.client.concurrency, thread_name_prefix="studip-crawl"
        ) as self._pool:
            try:
                for user_id in seed_ids:
                    self._reach_user(user_id)
                while self._outstanding:
                    kind, value = self._events.get()
                    if kind == "done":
                        self._outstanding -= 1
                        if value is not None:
                            value()
                    elif kind == "error":
                        raise value
                    else:
                        yield value
                        self._expand(value)
            finally:
                self._stop.set()

    def _submit(
        self,
        fetch: Callable[[], Iterator[StudipPage] | StudipPage],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Fetch on the pool; ``then`` runs in the consuming thread after the last page."""
        self._outstanding += 1
        self._pool.submit(self._work, fetch, then)

    def _work(
        self,
        fetch: Callable[[], Iterator[StudipPage] | StudipPage],
        then: Callable[[], None] | None,
    ) -> None:
        try:
            if self._stop.is_set():
                return
            result = fetch()
            for page in [result] if isinstance(result, StudipPage) else result:
                self._put(("page", page))
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(("error", exc))
        finally:
            self._put(("done", then))

    def _put(self, event: tuple[str, Any]) -> None:
        """Hand an event to the consuming thread; give up once the crawl stopped (nobody
        consumes then, and a full queue must not keep the pool from shutting down)."""
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.1)
                return
            except queue.Full:
                continue

    def _reach_user(self, user_id: str) -> None:
        if user_id in self.users:
            return
        self.users.add(user_id)
        client = self.client
        if user_id not in self.fetched_users:
            self._submit(lambda: client.user_page(user_id))
        then = None
        if user_id in self.stored_courses:
            self.listed_courses[user_id] = set()
            self.unread_course_lists[user_id] = len(self.semester_ids)
            then = lambda: self._course_list_read(user_id)  # noqa: E731
        for semester_id in self.semester_ids:
            self._submit(lambda s=semester_id: client.user_courses(user_id, s), then)
        self._submit(lambda: client.user_institutes(user_id))

    def _course_list_read(self, user_id: str) -> None:
        self.unread_course_lists[user_id] -= 1
        if not self.unread_course_lists[user_id]:  # the list is complete: the courses left
            for course_id in sorted(self.stored_courses[user_id] - self.listed_courses[user_id]):
                self._read_members(course_id)

    def _read_members(self, course_id: str) -> None:
        if course_id not in self.courses:
            self.courses.add(course_id)
            self._submit(lambda: self.client.course_members(course_id))

    def _expand(self, page: StudipPage) -> None:
        if page.route == "/user/:user_id/courses":
            # everything ?semester= returns runs in a selected semester (or has no end)
            stored = self.stored_courses.get(page.subject)
            for course in page.records:
                if stored is None:
                    self._read_members(course.course_id)
                    continue
                self.listed_courses[page.subject].add(course.course_id)
                if course.course_id not in stored:  # joined
                    self._read_members(course.course_id)
        elif page.route == "/course/:course_id/members":
            for member in page.records:
                user_id = member.user_id
                if user_id not in self.users and user_id not in self.known_users:
                    self._reach_user(user_id)


# -- the resource ------------------------------------------------------------------------------


class StudIPResource(dg.ConfigurableResource):
    """The Stud.IP REST API (``STUDIP_*`` settings): HTTP Basic, or OAuth1 when its four
    values are set."""

    api_url: str = Field(description="Base URL ending in /api.php (STUDIP_API_URL).")
    username: str = Field(description="API account, must be root (STUDIP_USERNAME).")
    password: str = Field(description="Its password (STUDIP_PASSWORD).")
    oauth_consumer_key: str | None = Field(default=None, description="OAuth1 consumer key.")
    oauth_consumer_secret: str | None = Field(default=None, description="OAuth1 secret.")
    oauth_token: str | None = Field(default=None, description="OAuth1 access token.")
    oauth_token_secret: str | None = Field(default=None, description="OAuth1 token secret.")
    seed_users: list[str] = Field(
        default_factory=list,
        description="Usernames or user ids the crawl starts from (STUDIP_SEED_USERS).",
    )
    semesters: list[str] = setting_field(
        "STUDIP_SEMESTERS", "current, next, all, semester ids or titles"
    )
    concurrency: int = setting_field("STUDIP_CONCURRENCY", "Requests in flight")
    student_id_field: str = setting_field(
        "STUDIP_STUDENT_ID_FIELD", "The user datafield holding the matriculation number"
    )
    page_size: int = Field(
        default=500,
        ge=1,
        # a course of 26,000 members (one at 100,000 students) is 53 requests at 500, 264 at
        # 100, and an incremental crawl reads it whenever a member joins or leaves. A server
        # that caps ?limit= is paged on by the items it sent.
        description="Items requested per page of a REST collection.",
    )
    max_pages: int = setting_field("STUDIP_MAX_PAGES", "Pages per call at most")
    max_response_mb: int = setting_field(
        "HUBSYNC_MAX_RESPONSE_MB", "Decoded size of a response at most"
    )
    api_mode: Literal["auto", "jsonapi", "rest"] = setting_field(
        "STUDIP_API_MODE",
        "auto: the JSON:API listing when /users/me answers as root, else the classic crawl; "
        "jsonapi or rest force one",
    )
    jsonapi_url: str = Field(
        default="", description="The JSON:API base .../jsonapi.php/v1 (STUDIP_JSONAPI_URL)."
    )
    listing_page_size: int = setting_field("STUDIP_PAGE_SIZE", "Items per JSON:API listing page")
    details_refresh_days: int = setting_field(
        "STUDIP_DETAILS_REFRESH_DAYS",
        "A listing's full sync re-reads the datafields and institutes of the users whose day "
        "it is, so every user's once in N days",
    )
    relist_every: int = setting_field(
        "STUDIP_RELIST_EVERY",
        "In listing mode, an incremental sync lists on every N-th incremental sync and crawls "
        "the users CO or the LMS changed in the others",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Read timeout per request.")
    retry_attempts: int = Field(
        default=5, ge=1, description="Tries per request on 429, 5xx and dropped connections."
    )
    retry_backoff_s: float = Field(default=0.5, ge=0, description="First retry delay.")

    @property
    def uses_oauth1(self) -> bool:
        return bool(self.oauth_consumer_key)

    def client(self, *, retry_policy: RetryPolicy | None = None) -> StudipClient:
        http = HttpClient(
            SYSTEM,
            self.api_url,
            timeout=(10, self.timeout_s),
            retry_policy=retry_policy
            or RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s),
            pool_size=self.concurrency,
            max_response_bytes=self.max_response_mb * MB,
        )
        if self.uses_oauth1:
            http.session.auth = OAuth1(
                self.oauth_consumer_key,
                client_secret=self.oauth_consumer_secret,
                resource_owner_key=self.oauth_token,
                resource_owner_secret=self.oauth_token_secret,
                signature_method="HMAC-SHA1",
            )
        else:
            http.session.auth = HTTPBasicAuth(self.username, self.password)
        return StudipClient(
            http, page_size=self.page_size, concurrency=self.concurrency, max_pages=self.max_pages
        )

    def jsonapi_client(self, *, retry_policy: RetryPolicy | None = None) -> Any:
        """The JSON:API client (HTTP Basic: the JSON:API takes the same account)."""
        from resources.studip.jsonapi import JsonApiClient

        base = self.jsonapi_url or (
            self.api_url.rstrip("/").removesuffix("/api.php") + "/jsonapi.php/v1"
        )
        http = HttpClient(
            SYSTEM,
            base,
            timeout=(10, self.timeout_s),
            retry_policy=retry_policy
            or RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s),
            pool_size=self.concurrency,
            max_response_bytes=self.max_response_mb * MB,
        )
        http.session.auth = HTTPBasicAuth(self.username, self.password)
        return JsonApiClient(
            http,
            page_size=self.listing_page_size,
            concurrency=self.concurrency,
            max_pages=self.max_pages,
        )


def is_user_id(text: str) -> bool:
    return bool(_HEX_ID.fullmatch(text))


class SemesterSelectionError(ValueError):
    """``STUDIP_SEMESTERS`` names a semester Stud.IP does not have."""


def select_semesters(
    semesters: Sequence[StudipSemester], wanted: Sequence[str], now: datetime
) -> list[str]:
    """The ids of the semesters ``wanted`` names, in the order of their begin.

    ``current`` is the semester with ``begin <= now <= end``, ``next`` the one after it, ``all``
    every semester Stud.IP has; other entries are semester ids or titles (``WS 2026/2027``).
    """
    ordered = sorted(semesters, key=lambda s: s.begin)
    moment = int(now.timestamp())
    current = next((i for i, s in enumerate(ordered) if s.begin <= moment <= s.end), None)
    chosen: set[str] = set()
    problems: list[str] = []
    for entry in wanted:
        if entry.lower() == "all":
            chosen.update(s.id for s in ordered)
            continue
        if entry.lower() in ("current", "next"):
            position = None if current is None else current + (entry.lower() == "next")
            if position is None or position >= len(ordered):
                problems.append(
                    f"{entry} (Stud.IP has no {entry.lower()} semester on {now:%Y-%m-%d})"
                )
                continue
            chosen.add(ordered[position].id)
            continue
        match = [s.id for s in ordered if entry in (s.id, s.title)]
        if not match:
            problems.append(repr(entry))
        chosen.update(match)
    if problems:
        titles = ", ".join(s.title for s in ordered) or "none"
        raise SemesterSelectionError(
            f"STUDIP_SEMESTERS names semesters Stud.IP does not have: {', '.join(problems)}; "
            f"its semesters are: {titles}"
        )
    return [s.id for s in ordered if s.id in chosen]


def studip_resource(settings: StudipSettings) -> StudIPResource:
    """The resource for the ``STUDIP_*`` settings; secrets set in the environment reach the run
    as ``EnvVar``s (``secret_config``), never as run config."""

    oauth = settings.oauth1
    return StudIPResource(
        **resource_config(settings),
        password=secret_config("STUDIP_PASSWORD", settings.password),
        oauth_consumer_key=oauth.consumer_key if oauth else None,
        oauth_consumer_secret=(
            secret_config("STUDIP_OAUTH_CONSUMER_SECRET", oauth.consumer_secret) if oauth else None
        ),
        oauth_token=oauth.token if oauth else None,
        oauth_token_secret=(
            secret_config("STUDIP_OAUTH_TOKEN_SECRET", oauth.token_secret) if oauth else None
        ),
    )
