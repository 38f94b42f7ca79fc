"""The CAMPUSonline (CO) "DMS" student API: OAuth2 client, paging, typed rows, CO timestamps.

Three ``pl/rest`` services (students, studies, applicants) share one envelope and one query
grammar (``/work/shared/reference/campusonline.md`` §1–§2): at most one filter, ``PageNr`` /
``PageSize`` paging that ends on a short page, ``LastSyncDate`` for the active pool's changes and
``SyncOnlyInactive=YES`` for the inactive pool. Unlike the reference connector this client pages
every list call (the active ones too), refreshes its token on a 401, sets timeouts and retries
GETs on 429/5xx/connection errors.

Rows keep CO's field names (``STPERSONNR``, ``DMSStudents`` …). CO timestamps are wall-clock
times in the CO server's zone (``CO_TIMEZONE``); they are parsed to UTC here and formatted back
for ``LastSyncDate``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo

import dagster as dg
import requests
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from resources.http import (
    DEFAULT_MAX_PAGES,
    MB,
    ApiError,
    HttpClient,
    RetryPolicy,
    field_names,
    page_errors,
    reject_bad_text,
)
from resources.settings import (
    CampusOnlineSettings,
    resource_config,
    secret_config,
    setting_field,
)

CO_TIMESTAMP_FORMAT = "%d.%m.%YT%H:%M:%S"
LIVE_SOURCE_PREFIX = "LiveSync"
TOKEN_PATH = "/wbOAuth2.token"
BROKEN_BYTE = b"\x18"
FILTERS = ("StPersonNr", "IdentNrObfuscated", "StStudiumNr")

_TIMESTAMP = re.compile(r"(\d{2})\.(\d{2})\.(\d{4})T(\d{2}):(\d{2}):(\d{2})")


# --------------------------------------------------------------------------------------------
# Timestamps


def parse_co_timestamp(text: str, zone: ZoneInfo) -> datetime:
    """``DD.MM.YYYYTHH:MI:SS`` in ``zone`` as an aware UTC datetime.

    Resolves like CO's PHP clients: an ambiguous autumn wall time is the later (standard-time)
    instant; a wall time in the spring gap keeps the offset before the gap. ``ValueError`` when
    the text does not have that shape or is no calendar date.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"not a CO timestamp (DD.MM.YYYYTHH:MI:SS): {text!r}")
    day, month, year, hour, minute, second = map(int, match.groups())
    try:
        naive = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValueError(f"not a valid CO timestamp {text!r}: {exc}") from None
    earlier, later = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if earlier.utcoffset() == later.utcoffset():
        return earlier.astimezone(UTC)
    round_trips = earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive
    return (later if round_trips else earlier).astimezone(UTC)  # ambiguous vs. gap


def format_co_timestamp(instant: datetime, zone: ZoneInfo) -> str:
    """An aware instant as CO writes it: wall-clock time in ``zone`` without an offset."""
    if instant.tzinfo is None:
        raise ValueError("format_co_timestamp needs a timezone-aware datetime")
    return instant.astimezone(zone).strftime(CO_TIMESTAMP_FORMAT)


# --------------------------------------------------------------------------------------------
# Rows (reference §2a–§2c): CO's field names and JSON types


# CO's numbers are Oracle NUMBERs; the warehouse keeps them as BIGINT, so a row with one beyond
# 64 bits is refused here instead of failing the whole staging insert.
CoInt = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]


class CoDate(BaseModel):
    """CO's date column: always an object, ``{"value": "YYYY-MM-DD"}`` or ``{"value": null}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: date | None


class CoRow(BaseModel):
    """Fields every row has. Missing optional keys (older API versions) read as null."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id_field: ClassVar[str]

    SOURCE: StrictStr
    TIMESTAMP: StrictStr = Field(pattern=_TIMESTAMP.pattern)

    @model_validator(mode="before")
    @classmethod
    def _reject_bad_text(cls, data: Any) -> Any:
        return reject_bad_text(data, field_names(cls))

    @property
    def is_live(self) -> bool:
        return self.SOURCE.startswith(LIVE_SOURCE_PREFIX)

    @property
    def record_id(self) -> int:
        return getattr(self, self.id_field)

    def timestamp(self, zone: ZoneInfo) -> datetime:
        return parse_co_timestamp(self.TIMESTAMP, zone)


class CoStudent(CoRow):
    """One ``DMSStudents`` row."""

    id_field: ClassVar[str] = "STPERSONNR"

    STPERSONNR: CoInt
    STUDID: StrictStr | None = None
    GIVENNAME: StrictStr
    FAMILYNAME: StrictStr
    BIRTHDATE: CoDate
    IDENTNROBFUSCATED: StrictStr = Field(min_length=1)
    NATIONALITYNR: CoInt
    NATIONALITY: StrictStr | None = None
    NATIONALITYSECONDARYNR: CoInt | None = None
    NATIONALITYSECONDARY: StrictStr | None = None
    ADMISSIONQUALIFICATIONTYPENR: StrictStr
    ADMISSIONQUALIFICATIONTYPE: StrictStr | None = None
    SCHOOLCERTIFICATEDATE: CoDate = CoDate(value=None)
    ADMISSIONQUALIFICATIONSTATENR: CoInt | None = None
    ADMISSIONQUALIFICATIONSTATE: StrictStr | None = None
    TELEPHONE: StrictStr | None = None
    HOMEADDRESSNOTE: StrictStr | None = None
    HOMEADDRESSSTREET: StrictStr | None = None
    HOMEADDRESSPLACE: StrictStr | None = None
    HOMEADDRESSPOSTCODE: StrictStr | None = None
    HOMEADDRESSREGION: StrictStr | None = None
    HOMEADDRESSCOUNTRYNR: CoInt | None = None
    HOMEADDRESSCOUNTRY: StrictStr | None = None
    HOMEADDRESSTELEPHONE: StrictStr | None = None
    STUDADDRESSNOTE: StrictStr | None = None
    STUDADDRESSSTREET: StrictStr | None = None
    STUDADDRESSPLACE: StrictStr | None = None
    STUDADDRESSPOSTCODE: StrictStr | None = None
    STUDADDRESSREGION: StrictStr | None = None
    STUDADDRESSCOUNTRYNR: CoInt | None = None
    STUDADDRESSCOUNTRY: StrictStr | None = None
    STUDADDRESSTELEPHONE: StrictStr | None = None
    EMAILADDRESSTU: StrictStr | None = None
    EMAILADDRESSCONFIRMED: StrictStr | None = None
    EMAILADDRESSTEMPORARY: StrictStr | None = None
    PERSSTATUS: StrictStr
    STUDSTATUSKEY: StrictStr
    STUDSTATUS: StrictStr | None = None
    TUITIONSTATUS: StrictStr | None = None
    TUITIONEXEMPTIONTYPE: StrictStr | None = None
    IMMATRICULATIONDATE: CoDate
    IMMATRICULATIONSEMESTER: StrictStr | None = None
    EXMATRICULATIONSTATUSKEY: StrictStr | None = None
    EXMATRICULATIONSTATUS: StrictStr | None = None
    EXMATRICULATIONDATE: CoDate = CoDate(value=None)
    EXMATRICULATIONSEMESTER: StrictStr | None = None
    TERMSTART: StrictStr | None = None
    TERMEND: StrictStr | None = None
    ACADEMICTITLEPRECEDING: StrictStr | None = None
    ACADEMICTITLEFOLLOWING: StrictStr | None = None
    FORMERFAMILYNAME: StrictStr | None = None
    SOCIALSECURITYNR: StrictStr | None = None
    BPK: StrictStr | None = None
    GENDERKEY: StrictStr
    GENDER: StrictStr | None = None
    NOTE: StrictStr | None = None

    @property
    def is_active(self) -> bool:
        return self.EXMATRICULATIONDATE.value is None


class CoStudy(CoRow):
    """One ``DMSStudies`` row."""

    id_field: ClassVar[str] = "STSTUDIUMNR"

    STSTUDIUMNR: CoInt
    STPERSONNR: CoInt
    STUDYKEY: StrictStr
    STUDYTYPE: StrictStr
    STUDYNAME: StrictStr
    STUDYSEMESTER: CoInt
    STUDYSTATUSKEY: StrictStr
    STUDYSTATUS: StrictStr | None = None
    STUDYCURRICULUMVERSION: StrictStr | None = None
    STUDYIMMATRICULATIONDATE: CoDate = CoDate(value=None)
    STUDYIMMATRICULATIONSEMESTER: StrictStr | None = None
    STUDYEXMATRICULATIONDATE: CoDate = CoDate(value=None)
    STUDYEXMATRICULATIONSEMESTER: StrictStr | None = None
    STUDYEXMATRICULATIONTYPEKEY: StrictStr | None = None
    STUDYEXMATRICULATIONTYPE: StrictStr | None = None
    STUDYQUALIFICATIONTYPENR: StrictStr | None = None
    STUDYQUALIFICATIONTYPE: StrictStr | None = None
    STUDYQUALIFICATIONDATE: CoDate = CoDate(value=None)
    STUDYQUALIFICATIONSTATENR: CoInt | None = None
    STUDYQUALIFICATIONSTATE: StrictStr | None = None
    ADDITIONALCERTIFICATE: StrictStr | None = None

    @property
    def is_active(self) -> bool:
        return self.STUDYEXMATRICULATIONDATE.value is None


class CoApplication(CoRow):
    """One ``DMSApplicants`` row."""

    id_field: ClassVar[str] = "BEWERBUNGNR"

    BEWERBUNGNR: CoInt
    STPERSONNR: CoInt
    STSTUDIUMNR: CoInt | None = None
    APPLICANTSTARTOFSTUDY: StrictStr
    APPLICANTSTUDYTYPE: StrictStr
    APPLICANTSTUDYNAME: StrictStr
    APPLICANTSTUDYKEY: StrictStr
    APPLICANTQUALIFICATIONTYPE: StrictStr | None = Field(default=None, pattern=r"^\d+ - ")
    APPLICANTQUALIFICATIONDATE: CoDate = CoDate(value=None)
    APPLICANTQUALIFICATIONSTATENR: CoInt | None = None
    APPLICANTQUALIFICATIONSTATE: StrictStr | None = None


# --------------------------------------------------------------------------------------------
# Services


@dataclass(frozen=True)
class CoService:
    """One ``pl/rest`` data service: its name, row key, row model and allowed filters."""

    code: str  # students | studies | applications: our name (tables, request keys)
    name: str  # the CO service name in the URL
    row_key: str
    model: type[CoRow]
    filters: tuple[str, ...]
    has_inactive: bool


STUDENTS = CoService(
    "students", "loc_api-dms.dmsstudents", "DMSStudents", CoStudent,
    ("StPersonNr", "IdentNrObfuscated"), True,
)  # fmt: skip
STUDIES = CoService(
    "studies", "loc_api-dms.dmsstudies", "DMSStudies", CoStudy,
    ("StPersonNr", "StStudiumNr"), True,
)  # fmt: skip
APPLICATIONS = CoService(
    "applications", "loc_api-dms.dmsapplicants", "DMSApplicants", CoApplication,
    ("StPersonNr", "StStudiumNr"), False,
)  # fmt: skip
SERVICES = {service.code: service for service in (STUDENTS, STUDIES, APPLICATIONS)}


def envelope_rows(payload: Any) -> list[Any]:
    """The row objects of a ``pl/rest`` envelope.

    Like CO's own clients the row key is not hard-coded: it is the first key of ``content``
    other than ``type`` whose value is an object or array.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("resource"), list):
        raise ValueError("not a pl/rest envelope (no resource list)")
    rows = []
    for resource in payload["resource"]:
        content = resource.get("content") if isinstance(resource, dict) else None
        if not isinstance(content, dict):
            raise ValueError("resource without content")
        row = next(
            (v for k, v in content.items() if k != "type" and isinstance(v, dict | list)), None
        )
        if row is None:
            raise ValueError("content missing")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class CoPage:
    """One page as received: the query that produced it, its cleaned JSON body (UTF-8) and its
    rows."""

    service: CoService
    page_nr: int
    request_params: dict[str, Any]
    body: bytes
    rows: list[Any]
    fetched_at: datetime


# --------------------------------------------------------------------------------------------
# Client


class CampusOnlineClient:
    """A CO API session: token cached and refreshed on 401, every list call paged."""

    def __init__(
        self,
        http: HttpClient,
        *,
        client_id: str,
        client_secret: str,
        zone: ZoneInfo,
        page_size: int,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be at least 1")
        self.http = http
        self.zone = zone
        self.page_size = page_size
        self.max_pages = max_pages
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None

    # -- auth ------------------------------------------------------------------------------

    def _fetch_token(self) -> str:
        response = self.http.request(
            "POST",
            TOKEN_PATH,
            retry=True,  # a client-credentials grant is safe to repeat
            data={
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "grant_type": "client_credentials",
            },
        )
        if response.status_code != 200:
            raise self.http.error(response, f"token request refused ({_oauth_error(response)})")
        token = self.http.json(response).get("access_token")
        if not isinstance(token, str) or not token:
            raise self.http.error(response, "token response has no access_token")
        return token

    def _authorized_get(self, path: str, params: list[tuple[str, str]]) -> requests.Response:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._fetch_token()
            response = self.http.request(
                "GET",
                path,
                retry=True,
                params=params,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None  # expired or revoked: one fresh token, then give up
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    # -- data ------------------------------------------------------------------------------

    def query(
        self,
        service: CoService,
        *,
        filter: tuple[str, str | int] | None = None,
        last_sync: datetime | None = None,
        only_inactive: bool = False,
        page_nr: int = 1,
    ) -> list[tuple[str, str]]:
        """The query parameters of one page, in CO's order (filter, paging, delta, pool)."""
        params: list[tuple[str, str]] = [("$format", "json")]
        if filter is not None:
            name, value = filter
            if name not in service.filters:
                raise ValueError(f"{service.name} cannot be filtered by {name}")
            params.append((name, str(value)))
        params += [("PageNr", str(page_nr)), ("PageSize", str(self.page_size))]
        if last_sync is not None:
            if only_inactive:
                raise ValueError("LastSyncDate only works for the active pool")
            params.append(("LastSyncDate", format_co_timestamp(last_sync, self.zone)))
        if only_inactive:
            if not service.has_inactive:
                raise ValueError(f"{service.name} has no inactive pool")
            params.append(("SyncOnlyInactive", "YES"))
        return params

    def pages(
        self,
        service: CoService,
        *,
        filter: tuple[str, str | int] | None = None,
        last_sync: datetime | None = None,
        only_inactive: bool = False,
    ) -> Iterator[CoPage]:
        """Every page of one call; ends after the first short page.

        While the caller lands a full page, the next one is already being fetched: CO then
        builds page N+1 while we compress and store page N, instead of each waiting for the
        other. There is still one request in flight at a time, and no request more than
        without: the next page is asked for only once this one is known to be full.

        A page that repeats an earlier one (a server ignoring ``PageNr``) or more than
        ``max_pages`` pages (``CO_MAX_PAGES``) mean the paging would never end: ``ApiError``.
        """

        def fetch(page_nr: int) -> CoPage:
            params = self.query(
                service,
                filter=filter,
                last_sync=last_sync,
                only_inactive=only_inactive,
                page_nr=page_nr,
            )
            with page_errors(f"page {page_nr}"):
                return self._page(service, page_nr, params)

        earlier: dict[bytes, int] = {}  # digest of each full page's row ids -> its number
        with ThreadPoolExecutor(1, thread_name_prefix="co-next-page") as pool:
            coming: Future[CoPage] | None = pool.submit(fetch, 1)
            try:
                while coming is not None:
                    page = coming.result()
                    coming = None
                    if len(page.rows) < self.page_size:
                        yield page
                        return
                    first = earlier.setdefault(_row_ids_digest(service, page.rows), page.page_nr)
                    if first != page.page_nr:
                        raise self._endless(service, f"page {page.page_nr} repeats page {first}")
                    if page.page_nr < self.max_pages:
                        coming = pool.submit(fetch, page.page_nr + 1)
                    yield page
                raise self._endless(service, f"more than {self.max_pages} pages (CO_MAX_PAGES)")
            finally:
                if coming is not None:
                    coming.cancel()  # leaving the block waits for one already under way

    def _endless(self, service: CoService, why: str) -> ApiError:
        return ApiError(
            self.http.system,
            "GET",
            self.http.url(f"/pl/rest/{service.name}/"),
            f"paging does not end: {why}",
        )

    def rows(
        self,
        service: CoService,
        *,
        filter: tuple[str, str | int] | None = None,
        last_sync: datetime | None = None,
        only_inactive: bool = False,
    ) -> Iterator[Any]:
        """The raw row objects of every page of one call."""
        for page in self.pages(
            service, filter=filter, last_sync=last_sync, only_inactive=only_inactive
        ):
            yield from page.rows

    def _page(self, service: CoService, page_nr: int, params: list[tuple[str, str]]) -> CoPage:
        response = self._authorized_get(f"/pl/rest/{service.name}/", params)
        fetched_at = datetime.now(UTC)
        if response.status_code != 200:
            raise self.http.error(response, _error_message(response))
        # CO sometimes emits a raw U+0018 inside strings, which is not valid JSON.
        body = _utf8(response.content.replace(BROKEN_BYTE, b""))
        payload = self.http.json(response, content=body)
        try:
            rows = envelope_rows(payload)
        except ValueError as exc:
            raise self.http.error(response, f"unexpected response: {exc}") from None
        return CoPage(
            service=service,
            page_nr=page_nr,
            request_params={name: value for name, value in params if name != "$format"},
            body=body,
            rows=rows,
            fetched_at=fetched_at,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CampusOnlineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _utf8(body: bytes) -> bytes:
    """``body`` where it is valid UTF-8, else with each invalid sequence replaced by U+FFFD.
    Kept as bytes: a page's text beside its bytes and its parsed rows was 36 MB more at the
    fetch's peak (a 20,000-student page)."""
    try:
        body.decode("utf-8")  # checked, and dropped at once
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="replace").encode("utf-8")
    return body


def _row_ids_digest(service: CoService, rows: list[Any]) -> bytes:
    """What identifies a page's content: the ids of its rows, in order."""
    id_field = service.model.id_field
    ids = [row.get(id_field) if isinstance(row, dict) else None for row in rows]
    return hashlib.sha1(repr(ids).encode()).digest()


def _oauth_error(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else f"HTTP {response.status_code}"


def _error_message(response: requests.Response) -> str:
    """CO's ``{"type": "error", "message": …}`` text, else a generic one (5xx pages are HTML)."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        message = payload.get("message") or payload.get("error")
        if isinstance(message, str) and message:
            return message[:300]
    return "request failed"


# --------------------------------------------------------------------------------------------
# Resource


class CampusOnlineResource(dg.ConfigurableResource):
    """The CAMPUSonline DMS API (``CO_*`` settings); ``client()`` opens a session."""

    api_url: str = Field(description="CO base URL (CO_API_URL).")
    client_id: str = Field(description="OAuth2 client id (CO_CLIENT_ID).")
    client_secret: str = Field(description="OAuth2 client secret (CO_CLIENT_SECRET).")
    timezone: str = setting_field("CO_TIMEZONE", "CO's time zone")
    page_size: int = setting_field("CO_PAGE_SIZE", "Records per page")
    max_pages: int = setting_field("CO_MAX_PAGES", "Pages per call at most")
    max_response_mb: int = setting_field(
        "HUBSYNC_MAX_RESPONSE_MB", "Decoded size of a response at most"
    )
    incremental_threshold: int = setting_field(
        "CO_INCREMENTAL_THRESHOLD",
        "Changed students above which an incremental sync runs as a full one",
    )
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    retry_attempts: int = Field(default=5, ge=1)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def client(self, *, retry_policy: RetryPolicy | None = None) -> CampusOnlineClient:
        http = HttpClient(
            "CAMPUSonline",
            self.api_url,
            timeout=(self.connect_timeout_s, self.read_timeout_s),
            retry_policy=retry_policy or RetryPolicy(attempts=self.retry_attempts),
            max_response_bytes=self.max_response_mb * MB,
        )
        return CampusOnlineClient(
            http,
            client_id=self.client_id,
            client_secret=self.client_secret,
            zone=self.zone,
            page_size=self.page_size,
            max_pages=self.max_pages,
        )

    def web_url(self) -> str:
        return self.api_url.rstrip("/")


__all__ = [
    "APPLICATIONS",
    "STUDENTS",
    "STUDIES",
    "ApiError",
    "CampusOnlineClient",
    "CampusOnlineResource",
    "CoApplication",
    "CoDate",
    "CoPage",
    "CoRow",
    "CoService",
    "CoStudent",
    "CoStudy",
    "format_co_timestamp",
    "campusonline_resource",
    "parse_co_timestamp",
]


def campusonline_resource(
    settings: CampusOnlineSettings, *, in_process: bool = False
) -> CampusOnlineResource:
    """The resource for the ``CO_*`` settings.

    For Dagster runs the secret is an ``EnvVar`` (resolved inside the run, never stored in run
    config); ``in_process`` gives a resource with the secret's value, for direct use (the CLI).
    """
    secret = secret_config("CO_CLIENT_SECRET", settings.client_secret, in_process=in_process)
    return CampusOnlineResource(**resource_config(settings), client_secret=secret)
