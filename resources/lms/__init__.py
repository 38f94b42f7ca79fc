"""The LMS (Marine LMS ExternalRegistration API): OAuth2 tokens, paging and typed records.

``LmsResource`` (Dagster config) builds an ``LmsClient``. The client logs in with the password
grant (``scope`` = the org path), refreshes the token before ``expires_in`` runs out and on a
401, and falls back to one fresh login when the refresh is refused (refresh tokens are
single-use and expire with the access token). https URLs are held to TLS 1.2 or newer, as the
LMS requires.

``LmsClient.registration_pages`` pages one endpoint with ``{"PageSize", "StartIndex"}``,
re-reading ``TotalItems`` on every page and stopping once ``FirstIndexOfNextPage >=
TotalItems``. The selection changes while it is paged (registrations complete), so each page
after the first starts a little before the end of the previous one and must begin with a
registration already read; when it does not, items moved backwards past the cursor and the
client steps further back. Overlapping items come back twice: consumers deduplicate by
``RegistrationId``.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Annotated, Any, Literal, Self

import dagster as dg
import requests
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from requests.adapters import HTTPAdapter

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
from resources.quarantine import validation_reason
from resources.settings import LmsSettings, resource_config, secret_config, setting_field

SYSTEM = "LMS"
TOKEN_PATH = "/services/api/oauth2/token"
Endpoint = Literal["active", "completed"]
ENDPOINTS: tuple[Endpoint, ...] = ("active", "completed")  # the order a sync reads them in
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "active": "/Services/api/ExternalRegistration/GetActiveRegistrationData",
    "completed": "/Services/api/ExternalRegistration/GetCompletedRegistrationData",
}
# The seed's "JSON Result Property Mapping".
REGISTRATION_STATUS_NAMES: dict[int, str] = {0: "Pending", 1: "Active", 2: "Completed"}
REGISTRATION_CREATION_TYPE_NAMES: dict[int, str] = {
    0: "Unknown",
    1: "Historical",
    2: "Auto",
    3: "Imported",
    4: "Self",
    5: "Manual",
}
STUDENT_ID_FIELD = "StudentId"  # the OrgProfileFieldValue holding the matriculation number
MAX_REFRESH_MARGIN_S = 60.0
JSON_TYPES = ("application/json", "text/json")

NonEmpty = Annotated[str, Field(strict=True, min_length=1)]


# --------------------------------------------------------------------------------------------
# Records


class OrgProfileFieldValue(BaseModel):
    model_config = ConfigDict(frozen=True)

    Name: NonEmpty
    Value: str | None = None


class Registration(BaseModel):
    """One item of GetActiveRegistrationData / GetCompletedRegistrationData, as the API names
    it. Completed items add ``CompletionDate`` (and, since 4.9.0, ``CompletionLocation``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    CourseCode: str
    FirstName: str
    LastName: str
    OrganizationLoginId: NonEmpty
    UniqueLoginId: str
    EmailAddress: str
    ContactEmail: str | None = None
    CourseName: str
    CourseId: NonEmpty
    OfferingShortId: str
    CompletionDate: AwareDatetime | None = None
    CompletionLocation: str | None = None
    RegistrationDate: AwareDatetime
    RegistrationId: NonEmpty
    RegistrationStatus: Annotated[int, Field(strict=True)]
    OrgProfileFieldValues: list[OrgProfileFieldValue] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _reject_bad_text(cls, data: Any) -> Any:
        return reject_bad_text(data, field_names(cls))

    @model_validator(mode="after")
    def _status_is_known(self) -> Self:
        if self.RegistrationStatus not in REGISTRATION_STATUS_NAMES:
            raise ValueError(f"RegistrationStatus {self.RegistrationStatus} is not 0, 1 or 2")
        if self.RegistrationStatus == 2 and self.CompletionDate is None:
            raise ValueError("RegistrationStatus 2 (Completed) without a CompletionDate")
        names = [field.Name for field in self.OrgProfileFieldValues]
        if len(names) != len(set(names)):
            raise ValueError("OrgProfileFieldValues repeats a Name")
        return self

    @property
    def status_name(self) -> str:
        return REGISTRATION_STATUS_NAMES[self.RegistrationStatus]

    @property
    def profile(self) -> dict[str, str | None]:
        return {field.Name: field.Value for field in self.OrgProfileFieldValues}


class TokenResponse(BaseModel):
    access_token: NonEmpty
    refresh_token: NonEmpty
    expires_in: Annotated[int, Field(gt=0)]
    token_type: str = "bearer"


class PageEnvelope(BaseModel):
    """The paging fields of a registration page (its items are validated one by one)."""

    Items: list[Any]
    TotalItems: Annotated[int, Field(ge=0)]
    PageSize: Annotated[int, Field(ge=0)]
    FirstIndexOfNextPage: Annotated[int, Field(ge=0)]


def validate_registration(item: Any) -> Registration:
    """The item as a ``Registration``; raises ``ValueError`` with a readable reason."""
    if not isinstance(item, dict):
        raise ValueError(f"the item is a JSON {type(item).__name__}, not an object")
    try:
        return Registration.model_validate(item)
    except ValidationError as exc:
        raise ValueError(validation_reason(exc)) from None


def format_from_date(moment: datetime) -> str:
    """``fromDate`` as ISO 8601 UTC with milliseconds, truncated (never later than ``moment``)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------
# Transport


class Tls12Adapter(HTTPAdapter):
    """An adapter whose TLS connections refuse anything older than TLS 1.2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ssl_context = ssl.create_default_context()
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self.ssl_context
        return super().proxy_manager_for(*args, **kwargs)


@dataclass(frozen=True)
class RegistrationPage:
    """One page as received: what was asked, the body as sent and its paging fields."""

    endpoint: Endpoint
    page_nr: int  # 0, 1, … within the endpoint's pass
    params: dict[str, Any]  # query and paging parameters of the request
    body: bytes
    items: list[Any]  # raw; validate each with validate_registration
    total_items: int
    first_index_of_next_page: int
    fetched_at: datetime
    stepped_back: bool  # the page did not join the previous one, so it is read again earlier


@dataclass
class TokenStats:
    logins: int = 0
    refreshes: int = 0
    failed_refreshes: int = 0
    unauthorized: int = 0  # 401 answers to data requests


@dataclass
class _Token:
    access: str
    refresh: str
    refresh_at: float  # clock() value after which the token is renewed before use


class LmsClient:
    """Typed access to the ExternalRegistration API. Use as a context manager (or ``close``)."""

    def __init__(
        self,
        http: HttpClient,
        *,
        username: str,
        password: str,
        org_path: str,
        page_size: int = 10_000,
        max_pages: int = DEFAULT_MAX_PAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be at least 1")
        self.max_pages = max_pages
        self.http = http
        self.username = username
        self._password = password
        self.org_path = org_path
        self.page_size = page_size
        self.token_stats = TokenStats()
        self._clock = clock
        self._token: _Token | None = None
        if http.base_url.startswith("https://"):
            http.session.mount("https://", Tls12Adapter(max_retries=0))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- tokens ----------------------------------------------------------------------------------

    def login(self) -> None:
        """Password grant; the org path is the scope (mandatory for an org login id)."""
        form = {
            "grant_type": "password",
            "username": self.username,
            "password": self._password,
            "scope": self.org_path,
        }
        response = self.http.request("POST", TOKEN_PATH, retry=True, data=form)
        if response.status_code != 200:
            raise self._token_error(response, "login refused")
        self._store(response)
        self.token_stats.logins += 1

    def _refresh(self) -> bool:
        """Refresh grant; False when the LMS refuses it (used up, expired or unknown)."""
        if self._token is None:
            return False
        form = {"grant_type": "refresh_token", "refresh_token": self._token.refresh}
        # Not retried: a refresh token is single-use, so a repeat could only be refused; a
        # failed refresh falls back to a fresh login, which is retried.
        response = self.http.request("POST", TOKEN_PATH, data=form)
        if response.status_code != 200:
            self.token_stats.failed_refreshes += 1
            return False
        self._store(response)
        self.token_stats.refreshes += 1
        return True

    def renew(self) -> None:
        """A new token: the refresh grant, or one fresh login if the refresh is refused."""
        if not self._refresh():
            self.login()

    def _store(self, response: requests.Response) -> None:
        try:
            token = TokenResponse.model_validate(self.http.json(response))
        except ValidationError as exc:
            raise self.http.error(
                response, f"unexpected token answer: {validation_reason(exc)}"
            ) from None
        margin = min(MAX_REFRESH_MARGIN_S, token.expires_in / 10)
        self._token = _Token(
            token.access_token, token.refresh_token, self._clock() + token.expires_in - margin
        )

    def access_token(self) -> str:
        """A token that has time left: logs in first, renews when close to expiry."""
        if self._token is None:
            self.login()
        elif self._clock() >= self._token.refresh_at:
            self.renew()
        assert self._token is not None
        return self._token.access

    def _token_error(self, response: requests.Response, what: str) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            detail = str(body["error"])
            if body.get("error_description"):
                detail += f": {body['error_description']}"
            return self.http.error(response, f"{what}: {detail}")
        return self.http.error(response, what)

    # -- data ------------------------------------------------------------------------------------

    def _post_data(
        self, endpoint: Endpoint, query: dict[str, str], paging: dict[str, int]
    ) -> requests.Response:
        """One data request; a 401 renews the token and repeats it once."""
        for attempt in (1, 2):
            response = self.http.request(
                "POST",
                ENDPOINT_PATHS[endpoint],
                retry=True,  # a read, safe to repeat
                params=query,  # requests percent-encodes fromDate (a raw '+' would break it)
                json=paging,
                headers={
                    "Authorization": f"Bearer {self.access_token()}",
                    "Accept": "application/json",
                },
            )
            if response.status_code != 401:
                return response
            self.token_stats.unauthorized += 1
            if attempt == 1:
                self.renew()
        raise self.http.error(response, "the LMS refused a freshly issued token")

    def _page(
        self,
        endpoint: Endpoint,
        query: dict[str, str],
        start_index: int,
        page_nr: int,
    ) -> tuple[RegistrationPage, PageEnvelope]:
        paging = {"PageSize": self.page_size, "StartIndex": start_index}
        response = self._post_data(endpoint, query, paging)
        if response.status_code != 200:
            raise self.http.error(response, _message(response))
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            raise self.http.error(
                response,
                f"the LMS answered {content_type or 'without a Content-Type'} instead of JSON "
                "(hubsync asks for application/json and reads JSON only)",
            )
        try:
            envelope = PageEnvelope.model_validate(self.http.json(response))
        except ValidationError as exc:
            raise self.http.error(
                response, f"not a registration page: {validation_reason(exc)}"
            ) from None
        page = RegistrationPage(
            endpoint=endpoint,
            page_nr=page_nr,
            params={**query, **paging},
            body=response.content,
            items=envelope.Items,
            total_items=envelope.TotalItems,
            first_index_of_next_page=envelope.FirstIndexOfNextPage,
            fetched_at=datetime.now(UTC),
            stepped_back=False,
        )
        return page, envelope

    def registration_pages(
        self, endpoint: Endpoint, from_date: datetime | None
    ) -> Iterator[RegistrationPage]:
        """Every page of ``endpoint`` for registrations modified after ``from_date`` (minus the
        server's 5-minute overlap); ``None`` reads from the beginning of time.

        Pages overlap (see the module docstring), so an item can come twice. A page that
        repeats the previous one although the cursor moved on (a server ignoring
        ``StartIndex``), or more than ``max_pages`` pages (``LMS_MAX_PAGES``; a ``TotalItems``
        that keeps growing) mean the paging would never end: ``ApiError``.
        """
        query = {"orgPath": self.org_path}
        if from_date is not None:
            query["fromDate"] = format_from_date(from_date)
        overlap = min(self.page_size - 1, max(1, self.page_size // 100))
        seen: set[str] = set()
        start, page_nr = 0, 0
        previous: tuple[int, list[str]] = (-1, [])  # StartIndex and ids of the last page kept
        while True:
            if page_nr >= self.max_pages:
                raise self._endless(endpoint, f"more than {self.max_pages} pages (LMS_MAX_PAGES)")
            with page_errors(f"page {page_nr}, StartIndex {start}"):
                page, envelope = self._page(endpoint, query, start, page_nr)
            page_nr += 1
            joins = start == 0 or overlap == 0 or _first_id(envelope.Items) in seen
            if not joins:
                # Items moved backwards past the cursor (some before it left the selection):
                # read again from further back, and keep a wider overlap from now on.
                yield _stepped_back(page)
                start = max(0, start - 2 * overlap)
                overlap = min(self.page_size - 1, 2 * overlap)
                continue
            ids = list(_ids(envelope.Items))
            if ids and start > previous[0] and ids == previous[1]:
                raise self._endless(
                    endpoint, f"page {page_nr - 1} (StartIndex {start}) repeats the page before"
                )
            previous = (start, ids)
            yield page
            seen.update(ids)
            next_index = envelope.FirstIndexOfNextPage
            if next_index >= envelope.TotalItems:
                return
            if next_index <= start:
                raise self._paging_error(endpoint, start, envelope)
            start = max(start + 1, next_index - overlap)

    def _endless(self, endpoint: Endpoint, why: str) -> ApiError:
        url = self.http.url(ENDPOINT_PATHS[endpoint])
        return ApiError(SYSTEM, "POST", url, f"paging does not end: {why}")

    def _paging_error(self, endpoint: Endpoint, start: int, envelope: PageEnvelope) -> ApiError:
        return ApiError(
            SYSTEM,
            "POST",
            self.http.url(ENDPOINT_PATHS[endpoint]),
            f"paging does not advance: StartIndex {start} answered FirstIndexOfNextPage "
            f"{envelope.FirstIndexOfNextPage} with TotalItems {envelope.TotalItems}",
        )


def _first_id(items: list[Any]) -> str | None:
    if items and isinstance(items[0], dict):
        value = items[0].get("RegistrationId")
        return value if isinstance(value, str) else None
    return None


def _ids(items: list[Any]) -> Iterator[str]:
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("RegistrationId"), str):
            yield item["RegistrationId"]


def _stepped_back(page: RegistrationPage) -> RegistrationPage:
    return dataclasses.replace(page, stepped_back=True)


def _message(response: requests.Response) -> str:
    """Web API's ``{"Message", "MessageDetail"}`` error text, else a generic one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("Message"), str):
        detail = body.get("MessageDetail")
        return body["Message"] + (f" {detail}" if isinstance(detail, str) else "")
    return "request failed"


# --------------------------------------------------------------------------------------------
# Dagster resource


class LmsResource(dg.ConfigurableResource):
    """The LMS ExternalRegistration API (``LMS_*`` settings). ``client()`` returns a logged-out
    ``LmsClient``; it logs in on its first request."""

    api_url: str = Field(description="LMS base URL (LMS_API_URL).")
    username: str = Field(description="Password-grant user, an org login id (LMS_USERNAME).")
    password: str = Field(description="Its password (LMS_PASSWORD, secret).")
    org_path: str = Field(description="Org path, the token scope and orgPath (LMS_ORG_PATH).")
    page_size: int = setting_field("LMS_PAGE_SIZE", "Registrations per page")
    max_pages: int = setting_field("LMS_MAX_PAGES", "Pages per call at most")
    max_response_mb: int = setting_field(
        "HUBSYNC_MAX_RESPONSE_MB", "Decoded size of a response at most"
    )
    student_id_field: str = setting_field(
        "LMS_STUDENT_ID_FIELD", "The OrgProfileFieldValue holding the matriculation number"
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Read timeout per request.")
    retry_attempts: int = Field(default=5, ge=1, description="Tries per request on 429/5xx.")
    retry_backoff_s: float = Field(default=0.5, ge=0, description="First retry delay.")

    def client(self) -> LmsClient:
        http = HttpClient(
            SYSTEM,
            self.api_url,
            timeout=(10, self.timeout_s),
            retry_policy=RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s),
            max_response_bytes=self.max_response_mb * MB,
        )
        return LmsClient(
            http,
            username=self.username,
            password=self.password,
            org_path=self.org_path,
            page_size=self.page_size,
            max_pages=self.max_pages,
        )


def lms_resource(settings: LmsSettings) -> LmsResource:
    """The resource for the ``LMS_*`` settings; the password reaches runs as an ``EnvVar``."""
    return LmsResource(
        **resource_config(settings), password=secret_config("LMS_PASSWORD", settings.password)
    )
