"""Stud.IP's JSON:API (``<studip>/jsonapi.php/v1``): a typed client for the listing mode.

The classic REST API can only reach users and courses by crawling; the JSON:API lists them
(``/work/shared/reference/studip.md``, last section): ``/users?include=course-memberships`` gives
every user with all their course memberships in ``included[]`` (ids ``<course_id>_<user_id>``,
no relationships of their own), ``/courses?filter[semester]=`` the courses running in a semester,
``/semesters`` and ``/institutes`` everything. Pages carry ``meta.page {offset, limit, total}``;
``page[limit]`` is not capped.

Paging is parallel: the first page gives the total, the other offsets are requested at most
``concurrency`` at a time and handed to the caller in offset order as they complete (never more
than ``concurrency`` pages wait in memory). Users created or deleted while the listing runs shift
the others: consecutive pages overlap by ``overlap`` items, the first page is read again at the end
and pages are added when the total grew, and every record is handed over once (deduplicated by
id). A change of more than ``overlap`` users during one listing cannot be told apart from a lost
user, so it fails the listing (the sync is retried, nothing is landed).

Every request asks for sparse fieldsets (``fields[<type>]``, ``FIELDSETS``): exactly the attributes
and relationships the models read. Stud.IP allows them for every type (its ``JsonApiTrait`` leaves
``$allowedFieldSetTypes`` at null); a user without its fifteen relationship links and a membership
without its unread attributes make a listing about 40 % smaller. A server that refuses them (400
on ``/users/me``, which is asked first) is asked for whole resources.

Errors are JSON:API documents (``{"errors": [{"status", "title", "detail"}]}``, JSON); a refused
login is a 401 with an empty ``text/html`` body; ``/users/:id/course-memberships`` is 403 even for
root.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, get_args

import requests
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from resources.http import DEFAULT_MAX_PAGES, HttpClient, gc_paused, reject_bad_text
from resources.quarantine import validation_reason
from resources.studip import (
    SYSTEM,
    Rejected,
    StudipAuthError,
    StudipError,
    StudipNotFound,
    get_ok,
)

HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
MembershipId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}_[0-9a-f]{32}$")]
Permission = Literal["user", "autor", "tutor", "dozent", "admin", "root"]
DEFAULT_PAGE_SIZE = 500


class JsonApiForbidden(StudipAuthError):
    """403: the account may not read this (``/users/:id/course-memberships`` even as root)."""


# -- resources (named as the JSON:API names them) ----------------------------------------------


class JsonApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class ResourceIdentifier(JsonApiModel):
    type: str
    id: str


class Relationship(JsonApiModel):
    data: ResourceIdentifier | list[ResourceIdentifier] | None = None

    @property
    def first_id(self) -> str | None:
        ids = self.ids
        return ids[0] if ids else None

    @property
    def ids(self) -> list[str]:
        if self.data is None:
            return []
        return [self.data.id] if isinstance(self.data, ResourceIdentifier) else [
            item.id for item in self.data
        ]  # fmt: skip


class Resource(JsonApiModel):
    """A resource whose relationships hubsync does not read."""

    id: str


class UserAttributes(JsonApiModel):
    username: Annotated[str, StringConstraints(min_length=1)]
    formatted_name: str = Field("", alias="formatted-name")
    family_name: str = Field("", alias="family-name")
    given_name: str = Field("", alias="given-name")
    permission: Permission
    email: str | None = None


class UserRelationships(JsonApiModel):
    """The one relationship of a user hubsync reads. A user carries about fifteen (activity
    stream, inbox, files, ...), each with links: validating them all was most of a listing's
    parsing time."""

    course_memberships: Relationship = Field(Relationship(), alias="course-memberships")


class User(JsonApiModel):
    type: Literal["users"]
    id: HexId
    attributes: UserAttributes
    relationships: UserRelationships = Field(default_factory=UserRelationships)

    @property
    def course_membership_ids(self) -> list[str]:
        return self.relationships.course_memberships.ids


class CourseMembershipAttributes(JsonApiModel):
    permission: Literal["user", "autor", "tutor", "dozent"]
    position: int | None = None
    group: int | None = None


class CourseMembership(Resource):
    """A course membership; its id is ``<course_id>_<user_id>`` (``included[]`` entries have no
    relationships)."""

    type: Literal["course-memberships"]
    id: MembershipId
    attributes: CourseMembershipAttributes

    @property
    def course_id(self) -> str:
        return self.id.split("_", 1)[0]

    @property
    def user_id(self) -> str:
        return self.id.split("_", 1)[1]


class Membership(NamedTuple):
    """A ``course-memberships`` resource of ``included[]`` as the listing keeps it. A listing
    carries one per membership (about two million at 100,000 students), so they are checked by
    ``parse_memberships`` against the rules of ``CourseMembership`` without building models."""

    id: str
    course_id: str
    user_id: str
    permission: str


MEMBERSHIP_PERMISSIONS = frozenset(
    get_args(CourseMembershipAttributes.model_fields["permission"].annotation)
)
_MEMBERSHIP_ID = re.compile(r"[0-9a-f]{32}_[0-9a-f]{32}")


def _plainly_valid_membership(raw: Any) -> bool:
    """Whether ``raw`` is a course membership ``CourseMembership`` accepts as it is (no
    coercion): the common case, checked without pydantic."""
    if not isinstance(raw, dict) or raw.get("type") != "course-memberships":
        return False
    rid, attributes = raw.get("id"), raw.get("attributes")
    return (
        isinstance(rid, str)
        and _MEMBERSHIP_ID.fullmatch(rid) is not None
        and isinstance(attributes, dict)
        and attributes.get("permission") in MEMBERSHIP_PERMISSIONS
        and type(attributes.get("position", 0)) in (int, type(None))
        and type(attributes.get("group", 0)) in (int, type(None))
        and isinstance(raw.get("relationships", {}), dict)
        and not raw.get("relationships")
    )


def parse_memberships(items: Any, record_type: str) -> tuple[list[Any], list[Rejected]]:
    """``included[]`` of a listing: course memberships as ``Membership`` rows, any other
    resource validated by its model. A membership that is not plainly valid goes through
    ``CourseMembership`` too, so the model alone decides what is accepted and why not."""
    if not isinstance(items, list):
        raise ValueError(f"expected a list of resources, got {type(items).__name__}")
    records: list[Any] = []
    others: list[Any] = []
    for raw in items:
        if _plainly_valid_membership(raw):
            rid = raw["id"]
            records.append(Membership(rid, rid[:32], rid[33:], raw["attributes"]["permission"]))
        else:
            others.append(raw)
    validated, rejected = parse_resources(others, record_type)
    for record in validated:
        if isinstance(record, CourseMembership):
            record = Membership(
                record.id, record.course_id, record.user_id, record.attributes.permission
            )
        records.append(record)
    return records, rejected


class CourseAttributes(JsonApiModel):
    course_number: str | None = Field(None, alias="course-number")
    title: str
    subtitle: str | None = None
    course_type: int = Field(alias="course-type")


class CourseRelationships(JsonApiModel):
    """The relationships of a course hubsync reads, of about twenty (see UserRelationships)."""

    start_semester: Relationship = Field(Relationship(), alias="start-semester")
    end_semester: Relationship = Field(Relationship(), alias="end-semester")
    institute: Relationship = Relationship()


class Course(JsonApiModel):
    type: Literal["courses"]
    id: HexId
    attributes: CourseAttributes
    relationships: CourseRelationships = Field(default_factory=CourseRelationships)

    @property
    def start_semester_id(self) -> str | None:
        return self.relationships.start_semester.first_id

    @property
    def end_semester_id(self) -> str | None:
        return self.relationships.end_semester.first_id

    @property
    def institute_id(self) -> str | None:
        return self.relationships.institute.first_id


class SemesterAttributes(JsonApiModel):
    title: str
    token: str = ""
    start: datetime
    end: datetime
    start_of_lectures: datetime | None = Field(None, alias="start-of-lectures")
    end_of_lectures: datetime | None = Field(None, alias="end-of-lectures")
    visible: bool = True


class Semester(Resource):
    type: Literal["semesters"]
    id: HexId
    attributes: SemesterAttributes


class InstituteAttributes(JsonApiModel):
    name: str
    city: str = ""
    is_faculty: bool = Field(False, alias="is-faculty")


class Institute(Resource):
    type: Literal["institutes"]
    id: HexId
    attributes: InstituteAttributes


class InstituteMembershipAttributes(JsonApiModel):
    permission: Permission


class InstituteMembership(Resource):
    type: Literal["institute-memberships"]
    attributes: InstituteMembershipAttributes


RESOURCE_MODELS: dict[str, type[JsonApiModel]] = {
    "users": User,
    "course-memberships": CourseMembership,
    "courses": Course,
    "semesters": Semester,
    "institutes": Institute,
    "institute-memberships": InstituteMembership,
}


# -- pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonApiPage:
    """One response as received, with its new (not yet handed over) records."""

    route: str  # the JSON:API route template, e.g. /users
    request_key: str  # the path with its filters (paging excluded)
    params: Mapping[str, Any]  # every query parameter sent, paging included
    page_nr: int
    offset: int
    body: bytes
    total: int
    records: list[Any]  # data[] resources, each once per listing
    included: list[Any]  # included[] resources (memberships as Membership), each once
    rejected: list[Rejected]
    fetched_at: datetime
    subject: str = ""
    item_count: int = 0  # data[] items in the body, duplicates and rejected ones included


def _attribute_names(model: type[JsonApiModel]) -> tuple[str, ...]:
    """The names the JSON:API gives the attributes ``model`` reads (``given-name``, …)."""
    attributes = model.model_fields["attributes"].annotation
    assert isinstance(attributes, type) and issubclass(attributes, JsonApiModel)
    return tuple(field.alias or name for name, field in attributes.model_fields.items())


# What the text checks (invalid UTF-8, oversized values) read per type: the attributes as sent.
ATTRIBUTE_NAMES = {model: _attribute_names(model) for model in RESOURCE_MODELS.values()}


def _read_relationship_names(model: type[JsonApiModel]) -> tuple[str, ...]:
    """The relationships ``model`` reads."""
    if "relationships" not in model.model_fields:
        return ()
    relationships = model.model_fields["relationships"].annotation
    assert isinstance(relationships, type) and issubclass(relationships, JsonApiModel)
    return tuple(field.alias or name for name, field in relationships.model_fields.items())


# JSON:API sparse fieldsets: ask each type for exactly what its model reads. A user carries about
# fifteen relationships with links and a membership seven attributes; without them a listing page
# is a fraction of the size, for the server to encode and for us to parse and land.
FIELDSETS = {
    kind: ",".join(_attribute_names(model) + _read_relationship_names(model))
    for kind, model in RESOURCE_MODELS.items()
}


def parse_resources(items: Any, record_type: str) -> tuple[list[JsonApiModel], list[Rejected]]:
    """Validate JSON:API resource objects with the model of their ``type``."""
    if not isinstance(items, list):
        raise ValueError(f"expected a list of resources, got {type(items).__name__}")
    records: list[JsonApiModel] = []
    rejected: list[Rejected] = []
    for raw in items:
        kind = raw.get("type") if isinstance(raw, dict) else None
        model = RESOURCE_MODELS.get(kind) if isinstance(kind, str) else None
        key = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        if model is None:
            rejected.append(Rejected(record_type, key, f"unknown resource type {kind!r}", raw))
            continue
        try:
            reject_bad_text(raw.get("attributes"), ATTRIBUTE_NAMES[model])
            records.append(model.model_validate(raw))
        except (ValidationError, ValueError) as exc:
            reason = validation_reason(exc)
            rejected.append(Rejected(kind or record_type, key, reason, raw))
    return records, rejected


# -- the client --------------------------------------------------------------------------------


@dataclass
class _Seen:
    records: set[str] = field(default_factory=set)
    included: set[str] = field(default_factory=set)


class JsonApiClient:
    """Typed access to the Stud.IP JSON:API (thread-safe: pages are fetched from a pool)."""

    def __init__(
        self,
        http: HttpClient,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        concurrency: int = 8,
        overlap: int | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        sparse_fieldsets: bool = True,
    ) -> None:
        self.http = http
        self.page_size = page_size
        self.concurrency = concurrency
        self.overlap = overlap
        self.max_pages = max_pages
        self.sparse_fieldsets = sparse_fieldsets

    def fields(self, *kinds: str) -> dict[str, str]:
        """The ``fields[<type>]`` parameters for resources of ``kinds`` (none when the server
        refused sparse fieldsets)."""
        if not self.sparse_fieldsets:
            return {}
        return {f"fields[{kind}]": FIELDSETS[kind] for kind in kinds}

    # -- low level -----------------------------------------------------------------------------

    def _get(
        self, route: str, path: str, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        return get_ok(self.http, route, path, params, self.error, label="JSON:API ")

    def error(self, route: str, response: requests.Response) -> StudipError:
        """The StudipError for a JSON:API error response, saying what the operator must do."""
        status = response.status_code
        detail = _error_detail(response)
        args = (SYSTEM, "GET", response.url)
        if status == 401:
            return StudipAuthError(
                *args,
                f"the Stud.IP JSON:API refused the login for {route}: check STUDIP_USERNAME/"
                "STUDIP_PASSWORD (the JSON:API takes HTTP Basic; the account must be root)",
                status,
            )
        if status == 403:
            return JsonApiForbidden(
                *args,
                f"the Stud.IP JSON:API forbids {route} for this account"
                + (f": {detail}" if detail else "")
                + "; the listing needs a root account (STUDIP_USERNAME)",
                status,
            )
        if status == 404 and "json" not in response.headers.get("Content-Type", ""):
            return StudipError(
                *args, f"no such JSON:API route {route}: is STUDIP_JSONAPI_URL the "
                ".../jsonapi.php/v1 URL?", status,
            )  # fmt: skip
        if status == 404:
            return StudipNotFound(*args, f"{route}: {detail or 'not found'}", status)
        if status == 400:
            return StudipError(*args, f"{route} refused the request: {detail}", status)
        return StudipError(
            *args, f"{route} failed with status {status} after retries: {detail}", status
        )

    def _document(self, route: str, response: requests.Response) -> dict[str, Any]:
        body = self.http.json(response)
        if not isinstance(body, dict) or "data" not in body:
            raise self.http.error(response, f"JSON:API {route}: not a JSON:API document")
        return body

    # -- single resources ----------------------------------------------------------------------

    def me(self) -> User:
        """``/users/me``: the API account (its ``permission`` says whether it is root).

        It is asked with sparse fieldsets, as the listings are: Stud.IP accepts them for every
        type, but should a server refuse them (400), the listings ask for whole resources."""
        try:
            response = self._get("/users/me", "/users/me", self.fields("users"))
        except StudipError as exc:
            if exc.status != 400 or not self.sparse_fieldsets:
                raise
            self.sparse_fieldsets = False
            response = self._get("/users/me", "/users/me")
        records, rejected = parse_resources([self._document("/users/me", response)["data"]], "user")
        if rejected or not records:
            raise self.http.error(response, f"/users/me: {rejected[0].reason if rejected else ''}")
        user = records[0]
        assert isinstance(user, User)
        return user

    # -- listings ------------------------------------------------------------------------------

    def users(self, *, include_memberships: bool = True) -> Iterator[JsonApiPage]:
        if include_memberships:
            return self.listing(
                "/users", "/users", {"include": "course-memberships"},
                fields=self.fields("users", "course-memberships"),
            )  # fmt: skip
        return self.listing("/users", "/users", fields=self.fields("users"))

    def courses(self, semester_id: str | None = None) -> Iterator[JsonApiPage]:
        filters = {"filter[semester]": semester_id} if semester_id else {}
        return self.listing(
            "/courses",
            "/courses",
            filters,
            fields=self.fields("courses"),
            subject=semester_id or "",
        )

    def semesters(self) -> Iterator[JsonApiPage]:
        return self.listing("/semesters", "/semesters", fields=self.fields("semesters"))

    def institutes(self) -> Iterator[JsonApiPage]:
        return self.listing("/institutes", "/institutes", fields=self.fields("institutes"))

    def course_memberships(self, course_id: str) -> Iterator[JsonApiPage]:
        path = f"/courses/{course_id}/memberships"
        return self.listing(
            "/courses/:course_id/memberships", path,
            fields=self.fields("course-memberships"), subject=course_id,
        )  # fmt: skip

    def institute_memberships(self, user_id: str) -> Iterator[JsonApiPage]:
        path = f"/users/{user_id}/institute-memberships"
        return self.listing(
            "/users/:user_id/institute-memberships", path,
            fields=self.fields("institute-memberships"), subject=user_id,
        )  # fmt: skip

    def listing(
        self,
        route: str,
        path: str,
        filters: Mapping[str, str] | None = None,
        *,
        fields: Mapping[str, str] | None = None,
        limit: int | None = None,
        subject: str = "",
    ) -> Iterator[JsonApiPage]:
        """Every page of a collection, each record handed over once (see the module doc).
        ``filters`` choose the records (they make the ``request_key``), ``fields`` only how much
        of each is sent."""
        filters = dict(filters or {})
        shown = {**filters, **(fields or {})}
        limit = limit or self.page_size
        overlap = self.overlap if self.overlap is not None else max(1, limit // 10)
        overlap = min(overlap, limit - 1)
        step = limit - overlap
        request_key = path + ("?" + "&".join(f"{k}={v}" for k, v in filters.items()) if filters
                              else "")  # fmt: skip
        seen = _Seen()
        page_nr = 0

        def params_at(offset: int) -> dict[str, Any]:
            return {**shown, "page[offset]": offset, "page[limit]": limit}

        def fetch(offset: int) -> tuple[int, requests.Response, datetime]:
            fetched_at = datetime.now(UTC)
            return offset, self._get(route, path, params_at(offset)), fetched_at

        def page_of(offset: int, response: requests.Response, fetched_at: datetime) -> JsonApiPage:
            nonlocal page_nr
            try:
                body = self._document(route, response)
                total = int(body["meta"]["page"]["total"])
                with gc_paused():
                    records, rejected = parse_resources(body["data"], route.strip("/"))
                    included, rejected_included = parse_memberships(body.get("included", []), route)
            except (KeyError, TypeError, ValueError) as exc:
                raise self.http.error(
                    response, f"JSON:API {route}: not a listing page ({exc}) [offset {offset}]"
                ) from None
            new = [r for r in records if r.id not in seen.records]
            seen.records.update(r.id for r in new)
            new_included = [r for r in included if r.id not in seen.included]
            seen.included.update(r.id for r in new_included)
            page = JsonApiPage(
                route, request_key, params_at(offset), page_nr, offset, response.content, total,
                new, new_included, [*rejected, *rejected_included], fetched_at, subject,
                len(body["data"]),
            )  # fmt: skip
            page_nr += 1
            return page

        first = page_of(*fetch(0))
        yield first
        total = first.total
        if first.item_count >= total:
            return
        offsets = range(step, total, step)
        self._check_page_count(route, path, total, 2 + len(offsets))  # +1: the first page again
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="studip-jsonapi") as pool:
            try:
                yield from self._in_order(pool, fetch, list(offsets), page_of)
                # read the first page again: users created meanwhile make the total grow
                again = page_of(*fetch(0))
                yield again
                if abs(again.total - total) > overlap:
                    raise StudipError(
                        SYSTEM, "GET", self.http.url(path),
                        f"{route}: the total changed from {total} to {again.total} while "
                        f"listing, more than the {overlap} items pages overlap by; sync again",
                    )  # fmt: skip
                # the tail again, after the re-read: users appended while listing are there
                tail = list(range(max(step, total - overlap), again.total, step))
                self._check_page_count(route, path, again.total, 2 + len(offsets) + len(tail))
                yield from self._in_order(pool, fetch, tail, page_of)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _check_page_count(self, route: str, path: str, total: int, pages: int) -> None:
        """A ``total`` needing more than ``max_pages`` pages means a listing that never ends."""
        if pages > self.max_pages:
            raise StudipError(
                SYSTEM, "GET", self.http.url(path),
                f"JSON:API {route}: paging does not end: a total of {total} needs {pages} pages, "
                f"more than {self.max_pages} (STUDIP_MAX_PAGES)",
            )  # fmt: skip

    def _in_order(
        self,
        pool: ThreadPoolExecutor,
        fetch: Any,
        offsets: list[int],
        page_of: Any,
    ) -> Iterator[JsonApiPage]:
        """Fetch ``offsets`` with ``concurrency`` requests in flight; pages in offset order."""
        pending: deque[Future[Any]] = deque()
        try:
            for offset in offsets:
                pending.append(pool.submit(fetch, offset))
                if len(pending) >= self.concurrency:
                    yield page_of(*pending.popleft().result())
            while pending:
                yield page_of(*pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()


def _error_detail(response: requests.Response) -> str:
    """``title: detail`` of the first JSON:API error, or a note on a non-JSON body."""
    if not response.content:
        return ""
    try:
        body = response.json()
    except ValueError:
        return "the server sent a non-JSON error page"
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return str(first.get("detail") or first.get("title") or "")[:300]
    return str(body)[:200]
