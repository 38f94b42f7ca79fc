"""The sandbox Marine LMS: its OAuth2 token endpoint and the ExternalRegistration data API.

Simulates what hubsync reads from the LMS (seed ``003``; reference ``hub-lms-standards.md`` §B):

* ``POST /services/api/oauth2/token`` (OWIN OAuth server, form-encoded): the ``password`` grant
  (``username``, ``password``, ``scope`` = org path) and the ``refresh_token`` grant, answering
  ``{"access_token", "token_type": "bearer", "expires_in", "refresh_token"}``;
* ``POST /Services/api/ExternalRegistration/GetActiveRegistrationData`` and
  ``.../GetCompletedRegistrationData`` (ASP.NET Web API on IIS): ``orgPath``, ``fromDate`` and
  ``suppressCourseCodeFiltering`` in the URL, optional paging body ``{"PageSize", "StartIndex"}``,
  answer ``{"Items", "TotalItems", "PageSize", "FirstIndexOfNextPage"}``.

The documented quirks are all here: ``fromDate`` is a fence post compared (strictly greater) with
the registration's *modified* date minus 5 minutes, so items come back twice across syncs; late
"vessel" completions have an old ``CompletionDate`` but a new modified date; ``TotalItems`` is the
size of the selection *now*, so it shifts while a client pages (``churn_per_request`` completes
open registrations before each data request to show it); ``expires_in`` is the lifetime of both
the access and the refresh token.

Admin routes besides the shared ``/_sandbox/faults`` and ``/_sandbox/requests``:

* ``GET|POST /_sandbox/lms/churn`` read or set ``{"per_request": k}``;
* ``POST /_sandbox/lms/tokens/expire`` expire every access token now (``{"refresh": true}``
  expires the refresh tokens too), to drive a client's "refresh on 401" path without a clock.

Behaviours the documents do not fix, chosen here:

* Paths match case-insensitively (IIS; the server replaces the base class's router with an
  :class:`IisRouter`, so routes added later, like the world admin routes, match the same way),
  as do query parameter names and paging body keys (Web API model binding and Json.NET); the
  first of repeated query parameters wins. A path that exists with another method answers Web
  API's 405 ``{"Message": "The requested resource does not support http method 'GET'."}``; an
  unknown path answers Web API's 404 ``{"Message": "No HTTP resource was found that matches the
  request URI '<uri>'."}``.
* Token endpoint (OWIN): ``grant_type`` is compared exactly; a missing or unknown one (also a
  body that is not a form) is 400 ``{"error": "unsupported_grant_type"}``. Every other failure is
  400 ``{"error": "invalid_grant", "error_description": ...}``: wrong user or password (the user
  name is compared case-insensitively, the password exactly), a missing or different ``scope``
  (the one account is an org login id, for which the document makes ``scope`` mandatory; the org
  path is compared case-insensitively like a SQL Server lookup), and a missing, unknown, expired
  or already used refresh token. Token answers carry OWIN's no-cache headers.
* Tokens: both tokens of a pair expire ``token_ttl`` world-clock seconds after issue (invalid
  from that instant on). A refresh issues a new pair and invalidates the old refresh token; the
  old access token stays valid until it expires (bearer tokens are self-contained in OWIN).
* Data requests are checked in Web API's pipeline order: the bearer token first (401 with
  ``WWW-Authenticate: Bearer``), then parameter binding (400 ``{"Message": "The request is
  invalid.", "MessageDetail": ...}`` for a malformed ``fromDate`` or
  ``suppressCourseCodeFiltering``, a body that is not JSON or not a JSON object, or a paging
  value that is not an integer), then the action (400 ``{"Message": ...}`` for a missing or
  different ``orgPath``, a ``PageSize`` outside ``page_size_range`` and a negative
  ``StartIndex``). A non-empty body with a Content-Type other than JSON is 415 (the sandbox
  reads no XML request bodies).
* ``fromDate``: ``yyyy-mm-dd``, optionally ``Thh:mm``, ``:ss`` and up to 7 fractional digits,
  then ``Z``, an offset (``+00:00``, ``+0000``, converted to UTC) or nothing (taken as UTC, the
  document says the value is UTC). A ``+`` that was not percent-encoded arrives as a space and
  makes the value malformed, as on IIS. No ``fromDate`` selects from the beginning of time.
* Paging: no body (or a JSON ``null``) returns every item with ``PageSize`` 0 and
  ``FirstIndexOfNextPage`` 0. A body object is a PageInfo: its ``PageSize`` must lie in
  ``page_size_range`` (a missing ``PageSize`` is 0, Json.NET's default, hence out of range, as
  since 4.9.0) and ``StartIndex`` (default 0) must not be negative; a ``StartIndex`` past the end
  returns no items and ``FirstIndexOfNextPage`` = ``StartIndex``. Items are ordered by
  (``RegistrationDate``, ``RegistrationId``); the sorted order is cached and rebuilt when the
  number of registrations changes or the world steps.
* ``suppressCourseCodeFiltering`` must be ``true``/``false`` when given; it changes nothing,
  because every sandbox course has a course code.
* Items follow the seed's key order; completed items add ``CompletionDate`` (after
  ``OfferingShortId``) and ``CompletionLocation`` after it: the learner's ``Vessel`` profile
  value, else for a completion synced over an hour after it happened a vessel picked by the
  registration id, else ``"Shore"``. ``OrgProfileFieldValues`` are sorted by name (the seed shows
  ``Rank`` before ``Vessel``). A learner without a person record gets empty names.
* Datetimes are written like the seed (``2017-07-07T22:13:49.3670000Z``) but keep the world's
  microseconds (the seed's values look like SQL ``datetime`` ticks; the sandbox does not round,
  so a parsed value equals the world's).
* ``Accept`` is negotiated like Web API (JSON unless XML has the higher quality, e.g. a browser's
  Accept); ``respond_xml`` forces XML. The XML is a minimal DataContract-like document
  (``PagedResultOfRegistrationData`` > ``Items`` > ``RegistrationData``). Error bodies are
  always JSON.
* Injected faults: ``error`` with status 503 is HTTP.sys's HTML "Service Unavailable" page, other
  5xx Web API's ``{"Message": "An error has occurred."}``; ``rate_limit`` is 429 with
  ``Retry-After`` and a WebApiThrottle-style ``{"Message": "API calls quota exceeded! ..."}``.
* Churn picks registrations with a RNG seeded from the world's seed and stamps them completed
  (``completion_date`` = ``modified_at`` = now); it runs only for data requests that passed every
  check.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

from sandbox.http import FaultConfig, Handler, HttpError, Request, Response, Router, SandboxServer
from sandbox.world import VESSELS, LmsLearner, LmsRegistration, World

TOKEN_PATH = "/services/api/oauth2/token"
ACTIVE_PATH = "/Services/api/ExternalRegistration/GetActiveRegistrationData"
COMPLETED_PATH = "/Services/api/ExternalRegistration/GetCompletedRegistrationData"

ACTIVE_STATUSES = (0, 1)
COMPLETED_STATUSES = (2,)
LATE_SYNC = timedelta(hours=1)
DENIED = "Authorization has been denied for this request."
INVALID = "The request is invalid."
XML_NAMESPACE = "http://schemas.datacontract.org/2004/07/MarineLMS.Services.Models"
WILDCARDS = ("*/*", "application/*", "text/*")
NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1"}
SERVICE_UNAVAILABLE = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
    "<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n"
    '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
    "<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>"
    "\r\n</BODY></HTML>\r\n"
)

_FROM_DATE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,7}))?)?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?"
)


# --------------------------------------------------------------------------------------------
# Parsing and formatting


def parse_from_date(text: str) -> datetime:
    """``fromDate`` as an aware UTC datetime; raises ``ValueError`` when it is malformed."""
    found = _FROM_DATE.fullmatch(text.strip())
    if not found:
        raise ValueError(f"'{text}' is not an ISO 8601 date and time")
    year, month, day = (int(part) for part in found["date"].split("-"))
    fraction = (found["fraction"] or "").ljust(6, "0")[:6]
    moment = datetime(
        year,
        month,
        day,
        int(found["hour"] or 0),
        int(found["minute"] or 0),
        int(found["second"] or 0),
        int(fraction),
        tzinfo=UTC,
    )
    return moment - _zone_offset(found["zone"] or "Z")


def _zone_offset(zone: str) -> timedelta:
    if zone in ("Z", "z"):
        return timedelta(0)
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if offset >= timedelta(hours=15) or int(digits[2:]) >= 60:
        raise ValueError(f"'{zone}' is not a valid UTC offset")
    return offset if zone[0] == "+" else -offset


def format_datetime(moment: datetime) -> str:
    """The seed's format: ``2017-07-07T22:13:49.3670000Z`` (7 fractional digits, UTC)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"'{text}' is not a valid Boolean")
    return lowered == "true"


def _invalid(detail: str) -> HttpError:
    return HttpError(400, {"Message": INVALID, "MessageDetail": detail})


def _message(status: int, message: str) -> HttpError:
    return HttpError(status, {"Message": message})


def _query_value(request: Request, name: str) -> str | None:
    """A query parameter by case-insensitive name (the first one when repeated)."""
    for key, value in request.query_list:
        if key.lower() == name.lower():
            return value
    return None


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _prefers_xml(accept: str) -> bool:
    """Web API content negotiation: XML only when it has a higher quality than JSON."""
    json_q = xml_q = 0.0
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media, quality = media.strip().lower(), _quality(params)
        if media in ("application/json", "text/json", *WILDCARDS):
            json_q = max(json_q, quality)
        if media in ("application/xml", "text/xml", *WILDCARDS):
            xml_q = max(xml_q, quality)
    return xml_q > json_q


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


# --------------------------------------------------------------------------------------------
# Paging body


@dataclass(frozen=True, slots=True)
class PageInfo:
    page_size: int
    start_index: int


def parse_page_info(request: Request) -> PageInfo | None:
    """The optional paging body; ``None`` when there is none. Raises 400/415 like Web API."""
    if not request.body.strip():
        return None
    media = _media_type(request.header("content-type"))
    if media not in ("application/json", "text/json"):
        shown = media or "application/octet-stream"
        raise _message(
            415, f"The request entity's media type '{shown}' is not supported for this resource."
        )
    try:
        data = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"The request body is not valid JSON: {exc}") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _invalid(
            'The request body must be a JSON object like {"PageSize": n, "StartIndex": i}.'
        )
    keys = {key.lower(): value for key, value in data.items()}
    return PageInfo(_body_int(keys, "PageSize"), _body_int(keys, "StartIndex"))


def _body_int(keys: dict[str, Any], name: str) -> int:
    value = keys.get(name.lower(), 0)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31 - 1:
        raise _invalid(
            f"Error converting value {json.dumps(value)} to type 'System.Int32'. Path '{name}'."
        )
    return value


# --------------------------------------------------------------------------------------------
# Tokens


@dataclass(slots=True)
class _Grant:
    username: str
    expires_at: datetime


class TokenStore:
    """Issued access and refresh tokens with their world-clock expiry."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._lock = threading.Lock()
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}

    def issue(self, username: str, ttl: int) -> dict[str, Any]:
        now = self._world.clock.now()
        grant = _Grant(username, now + timedelta(seconds=ttl))
        access, refresh = secrets.token_urlsafe(48), secrets.token_urlsafe(24)
        with self._lock:
            self._purge(now)
            self._access[access] = grant
            self._refresh[refresh] = grant
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": ttl,
            "refresh_token": refresh,
        }

    def access_valid(self, token: str) -> bool:
        with self._lock:
            grant = self._access.get(token)
        return grant is not None and self._world.clock.now() < grant.expires_at

    def redeem_refresh(self, token: str) -> str | None:
        """The user name of a valid refresh token, which is used up; ``None`` when invalid."""
        with self._lock:
            grant = self._refresh.pop(token, None)
        if grant is None or self._world.clock.now() >= grant.expires_at:
            return None
        return grant.username

    def expire(self, *, refresh: bool = False) -> int:
        with self._lock:
            count = len(self._access) + (len(self._refresh) if refresh else 0)
            self._access.clear()
            if refresh:
                self._refresh.clear()
        return count

    def _purge(self, now: datetime) -> None:
        for tokens in (self._access, self._refresh):
            for token in [t for t, grant in tokens.items() if now >= grant.expires_at]:
                del tokens[token]


def _oauth_error(error: str, description: str | None = None) -> HttpError:
    payload = (
        {"error": error}
        if description is None
        else {"error": error, "error_description": description}
    )
    return HttpError(
        400, json.dumps(payload), content_type="application/json;charset=UTF-8", headers=NO_CACHE
    )


# --------------------------------------------------------------------------------------------
# Routing


class IisRouter(Router):
    """Matches paths case-insensitively (IIS) and answers Web API's 405 message."""

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        super().add(method, pattern.lower(), handler)

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], str] | None:
        try:
            return super().match(method, path.lower())
        except HttpError as exc:
            if exc.response.status != 405:
                raise
            raise _message(
                405, f"The requested resource does not support http method '{method}'."
            ) from None


# --------------------------------------------------------------------------------------------
# Items


def registration_item(
    world: World, registration: LmsRegistration, completed: bool
) -> dict[str, Any]:
    """One registration as the API shows it (caller holds ``world.lock``)."""
    learner = world.lms_learners[registration.login]
    course = world.lms_courses[registration.course_id]
    person = world.persons.get(learner.pid)
    item: dict[str, Any] = {
        "CourseCode": course.code,
        "FirstName": person.given if person else "",
        "LastName": person.family if person else "",
        "OrganizationLoginId": learner.login,
        "UniqueLoginId": learner.unique_login,
        "EmailAddress": learner.email,
        "ContactEmail": learner.contact_email,
        "CourseName": course.name,
        "CourseId": course.course_id,
        "OfferingShortId": course.offering_short_id,
    }
    if completed:
        completion = registration.completion_date or registration.modified_at
        item["CompletionDate"] = format_datetime(completion)
        item["CompletionLocation"] = completion_location(registration, learner)
    item["RegistrationDate"] = format_datetime(registration.registration_date)
    item["RegistrationId"] = registration.registration_id
    item["RegistrationStatus"] = registration.status
    item["OrgProfileFieldValues"] = [
        {"Name": name, "Value": value} for name, value in sorted(learner.profile.items())
    ]
    return item


def completion_location(registration: LmsRegistration, learner: LmsLearner) -> str:
    """The learner's vessel, a vessel for a completion synced late, else ``Shore``."""
    vessel = learner.profile.get("Vessel")
    if vessel:
        return vessel
    completion = registration.completion_date
    if completion is not None and registration.modified_at - completion > LATE_SYNC:
        return VESSELS[zlib.crc32(registration.registration_id.encode()) % len(VESSELS)]
    return "Shore"


def to_xml(payload: dict[str, Any]) -> bytes:
    """A minimal DataContract-like XML document of a registration page."""
    root = ElementTree.Element("PagedResultOfRegistrationData", xmlns=XML_NAMESPACE)
    items = ElementTree.SubElement(root, "Items")
    for item in payload["Items"]:
        element = ElementTree.SubElement(items, "RegistrationData")
        for key, value in item.items():
            child = ElementTree.SubElement(element, key)
            if key == "OrgProfileFieldValues":
                for field_value in value:
                    entry = ElementTree.SubElement(child, "OrgProfileFieldValue")
                    ElementTree.SubElement(entry, "Name").text = field_value["Name"]
                    ElementTree.SubElement(entry, "Value").text = field_value["Value"]
            else:
                child.text = str(value)
    for key in ("TotalItems", "PageSize", "FirstIndexOfNextPage"):
        ElementTree.SubElement(root, key).text = str(payload[key])
    return ElementTree.tostring(root, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The server


class LmsServer(SandboxServer):
    """The Marine LMS ExternalRegistration API over one :class:`World`."""

    name = "lms"

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        username: str = "hubsync",
        password: str = "sandbox-lms-password",
        org_path: str = "/Root/Sandbox",
        token_ttl: int = 3600,
        page_size_range: tuple[int, int] = (1, 60000),
        overlap_seconds: int = 300,
        respond_xml: bool = False,
        churn_per_request: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        _check_options(token_ttl, page_size_range, overlap_seconds, churn_per_request)
        self.world = world
        self.username = username
        self.password = password
        self.org_path = org_path
        self.token_ttl = int(token_ttl)
        self.page_size_range = (int(page_size_range[0]), int(page_size_range[1]))
        self.overlap = timedelta(seconds=overlap_seconds)
        self.respond_xml = respond_xml
        self.churn_per_request = int(churn_per_request)
        self.tokens = TokenStore(world)
        self._churn_rng = random.Random(f"lms-churn-{world.seed}")
        self._churn_lock = threading.Lock()
        self._order: list[LmsRegistration] = []
        self._order_key: tuple[int, int, int] | None = None
        self.router = IisRouter()
        self._add_admin_routes()
        self._add_routes()

    def _add_routes(self) -> None:
        self.router.add("POST", TOKEN_PATH, self._token)
        self.router.add("POST", ACTIVE_PATH, lambda r: self._registration_data(r, False))
        self.router.add("POST", COMPLETED_PATH, lambda r: self._registration_data(r, True))
        self.router.add("GET", "/_sandbox/lms/churn", self._get_churn)
        self.router.add("POST", "/_sandbox/lms/churn", self._set_churn)
        self.router.add("POST", "/_sandbox/lms/tokens/expire", self._expire_tokens)

    # -- shapes of the real system -------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        uri = self.origin + request.path + (f"?{request.raw_query}" if request.raw_query else "")
        return Response.json(
            {"Message": f"No HTTP resource was found that matches the request URI '{uri}'."}, 404
        )

    def fault_response(self, kind: str, config: FaultConfig) -> Response:
        if kind == "rate_limit":
            return Response.json(
                {"Message": "API calls quota exceeded! maximum admitted 60 per Minute."},
                429,
                headers={"Retry-After": str(config.retry_after)},
            )
        if config.error_status == 503:
            return Response.text(SERVICE_UNAVAILABLE, 503, "text/html; charset=us-ascii")
        return Response.json({"Message": "An error has occurred."}, config.error_status)

    # -- token endpoint ------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.form()
        grant_type = form.get("grant_type", "")
        if grant_type == "password":
            username = self._password_grant(form)
        elif grant_type == "refresh_token":
            username = self._refresh_grant(form)
        else:
            raise _oauth_error("unsupported_grant_type")
        payload = self.tokens.issue(username, self.token_ttl)
        return Response.json(
            payload, content_type="application/json;charset=UTF-8", headers=dict(NO_CACHE)
        )

    def _password_grant(self, form: dict[str, str]) -> str:
        username = form.get("username", "")
        password_ok = secrets.compare_digest(
            form.get("password", "").encode("utf-8"), self.password.encode("utf-8")
        )
        if username.lower() != self.username.lower() or not password_ok:
            raise _oauth_error("invalid_grant", "The user name or password is incorrect.")
        scope = form.get("scope", "")
        if not scope:
            raise _oauth_error(
                "invalid_grant",
                "The scope (organization path) is required for an organization login id.",
            )
        if scope.lower() != self.org_path.lower():
            raise _oauth_error(
                "invalid_grant", f"The organization path '{scope}' is not valid for this user."
            )
        return username

    def _refresh_grant(self, form: dict[str, str]) -> str:
        username = self.tokens.redeem_refresh(form.get("refresh_token", ""))
        if username is None:
            raise _oauth_error(
                "invalid_grant", "The refresh token is invalid, expired or has already been used."
            )
        return username

    # -- registration data ---------------------------------------------------------------------

    def _registration_data(self, request: Request, completed: bool) -> Response:
        self._authorize(request)
        from_date = self._from_date(request)
        suppress = _query_value(request, "suppressCourseCodeFiltering")
        if suppress is not None:
            try:
                _parse_bool(suppress)
            except ValueError as exc:
                raise _invalid(f"suppressCourseCodeFiltering: {exc}.") from None
        page = parse_page_info(request)
        self._check_org_path(_query_value(request, "orgPath"))
        self._check_page(page)
        self._churn()
        payload = self._page(completed, from_date, page)
        if self.respond_xml or _prefers_xml(request.header("accept")):
            return Response(200, to_xml(payload), "application/xml; charset=utf-8")
        return Response.json(payload)

    def _authorize(self, request: Request) -> None:
        scheme, _, token = request.header("authorization").strip().partition(" ")
        if scheme.lower() != "bearer" or not self.tokens.access_valid(token.strip()):
            raise HttpError(401, {"Message": DENIED}, headers={"WWW-Authenticate": "Bearer"})

    def _from_date(self, request: Request) -> datetime | None:
        text = _query_value(request, "fromDate")
        if text is None or not text.strip():
            return None
        try:
            return parse_from_date(text)
        except ValueError as exc:
            raise _invalid(f"The value '{text}' is not valid for fromDate: {exc}.") from None

    def _check_org_path(self, org_path: str | None) -> None:
        if not org_path:
            raise _message(400, "The orgPath parameter is required.")
        if org_path.lower() != self.org_path.lower():
            raise _message(400, f"The organization path '{org_path}' was not found.")

    def _check_page(self, page: PageInfo | None) -> None:
        if page is None:
            return
        low, high = self.page_size_range
        if not low <= page.page_size <= high:
            raise _message(400, f"PageSize must be between {low} and {high}")
        if page.start_index < 0:
            raise _message(400, "StartIndex must be greater than or equal to 0")

    def _page(
        self, completed: bool, from_date: datetime | None, page: PageInfo | None
    ) -> dict[str, Any]:
        with self.world.lock:
            selection = self._select(completed, from_date)
            rows = (
                selection
                if page is None
                else selection[page.start_index : page.start_index + page.page_size]
            )
            items = [registration_item(self.world, r, completed) for r in rows]
        return {
            "Items": items,
            "TotalItems": len(selection),
            "PageSize": page.page_size if page else 0,
            "FirstIndexOfNextPage": page.start_index + len(items) if page else 0,
        }

    def _select(self, completed: bool, from_date: datetime | None) -> list[LmsRegistration]:
        """The whole selection now, in a stable order (caller holds ``world.lock``)."""
        statuses = COMPLETED_STATUSES if completed else ACTIVE_STATUSES
        fence = None if from_date is None else from_date - self.overlap
        return [
            r
            for r in self._ordered()
            if r.status in statuses and (fence is None or r.modified_at > fence)
        ]

    def _ordered(self) -> list[LmsRegistration]:
        """Every registration by (RegistrationDate, RegistrationId), sorted again only when the
        world's registrations were added, removed or stepped (caller holds ``world.lock``)."""
        world = self.world
        key = (id(world.lms_registrations), len(world.lms_registrations), world.step_count)
        if key != self._order_key:
            self._order = sorted(
                (
                    r
                    for r in world.lms_registrations.values()
                    if r.login in world.lms_learners and r.course_id in world.lms_courses
                ),
                key=lambda r: (r.registration_date, r.registration_id),
            )
            self._order_key = key
        return self._order

    # -- churn ---------------------------------------------------------------------------------

    def _churn(self) -> None:
        with self._churn_lock:
            count = self.churn_per_request
            if not count:
                return
            with self.world.lock:
                now = self.world.clock.now()
                open_regs = [
                    r for r in self.world.lms_registrations.values() if r.status in ACTIVE_STATUSES
                ]
                for registration in self._churn_rng.sample(open_regs, min(count, len(open_regs))):
                    registration.status = 2
                    registration.completion_date = now
                    registration.modified_at = now

    # -- admin ---------------------------------------------------------------------------------

    def _get_churn(self, request: Request) -> Response:
        with self._churn_lock:
            return Response.json({"per_request": self.churn_per_request})

    def _set_churn(self, request: Request) -> Response:
        data = request.json()
        value = data.get("per_request") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HttpError(400, {"error": 'expected {"per_request": <integer >= 0>}'})
        with self._churn_lock:
            self.churn_per_request = value
        return Response.json({"per_request": value})

    def _expire_tokens(self, request: Request) -> Response:
        data = request.json()
        refresh = bool(data.get("refresh")) if isinstance(data, dict) else False
        return Response.json({"expired": self.tokens.expire(refresh=refresh)})


def _check_options(
    token_ttl: int, page_size_range: tuple[int, int], overlap_seconds: int, churn_per_request: int
) -> None:
    if token_ttl < 1:
        raise ValueError("token_ttl must be at least 1 second")
    low, high = page_size_range
    if not 1 <= low <= high:
        raise ValueError("page_size_range must be (low, high) with 1 <= low <= high")
    if overlap_seconds < 0:
        raise ValueError("overlap_seconds must not be negative")
    if churn_per_request < 0:
        raise ValueError("churn_per_request must not be negative")
