"""The HUB (Hub Educacional) Sync API: batched events out, asynchronous ``getLog`` results in.

``POST {HUB_API_URL}/sync/v1`` takes an envelope of insert/update/delete events and answers
``{"messageId"}``; the objects are validated later, and ``GET {HUB_API_URL}/instituicao/getLog/
<messageId>`` reports per item, in pages, with an overall status: 1 processing without errors,
2 processing with errors, 3 finished with errors, 4 finished without errors. The paging travels
in the JSON body of the GET, ``{"limit": 25, "offset": 0}`` (the defaults when absent), and the
answer's ``qtdeRegistros`` is the total: seed document, "Data Consultation".

A POST is retried only when it provably did not arrive: the connection was refused or timed out
before it was made, or the HUB answered 429 or 5xx without a ``messageId``. When the request
went out and no usable answer came back (dropped connection, read timeout, a 2xx without a
``messageId`` or with ``"messageId": null``) the outcome is *unknown*: the batch may be queued
at the HUB, so it is never sent blindly again; the next sync re-diffs its objects and a repeated
insert comes back as "already exists", which the delivery reconciles. A 4xx is a refusal
(*rejected*, with the HUB's answer); the delivery isolates the objects it refuses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from resources.http import ApiError, HttpClient, RedirectRefused, RetryPolicy, body_excerpt
from resources.settings import resource_config, secret_config, setting_field

if TYPE_CHECKING:
    from resources.settings import HubSettings

# -- the objects the HUB takes (names as the API names them) ----------------------------------


class HubModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRef(HubModel):
    code: str


class Role(HubModel):
    code: Literal[
        "aluno",
        "professor",
        "responsavel",
        "diretor",
        "coordenador",
        "administrador",
        "colaborador",
    ]


class Term(HubModel):
    code: str
    name: str
    start_date: str
    end_date: str


class Subject(HubModel):
    code: str
    name: str
    status: str | None = None


class Section(HubModel):
    code: str
    name: str
    sis_id: str | None = None
    term_code: str | None = None
    status: str | None = None


class User(HubModel):
    code: str
    sis_id: str | None = None
    name: str
    dob: str
    gender: Literal["M", "F", "O"] | None = None
    email: str | None = None
    cpf: str | None = None
    status: Literal["active", "arquived", "suspended"] | None = None
    roles: list[Role] = Field(min_length=1)


class SectionStudent(HubModel):
    sis_id: str
    section: CodeRef
    student: CodeRef
    term_code: str


class SectionTeacher(HubModel):
    sis_id: str
    section: CodeRef
    teacher: CodeRef
    subject: CodeRef
    term_code: str


class StudentParent(HubModel):
    student: CodeRef
    parent: CodeRef


@dataclass(frozen=True)
class ObjectType:
    """One HUB object type: the one place that says what the diff, the checks, delivery and the
    warehouse views need to know of it."""

    name: str
    model: type[HubModel]
    already_exists: str  # the HUB's error for an insert of an object it holds
    not_found: str  # the HUB's error for an update or delete of an object it lacks
    references: tuple[tuple[str, str], ...] = ()  # (JSON path in the payload, type it names)

    @property
    def is_link(self) -> bool:
        """A link joins other objects and has no code of its own: inserted or deleted, never
        updated (a changed link is a delete and an insert)."""
        return "code" not in self.model.model_fields

    def optional(self, path: str) -> bool:
        """Whether the field at ``path`` may be absent (then it references nothing)."""
        field = self.model.model_fields[path.removeprefix("$.").split(".")[0]]
        return not field.is_required()


# In dependency order: inserts go in this order, deletes in reverse. The texts are those of the
# HUB's prototype (reference §A.5); delivery reconciles them, every other error leaves the object
# to be sent again.
OBJECT_TYPES: tuple[ObjectType, ...] = (
    ObjectType("term", Term, "Período já cadastrado no HUB", "Período não cadastrado"),
    ObjectType("subject", Subject, "Disciplina já cadastrada no HUB", "Disciplina não cadastrada"),
    ObjectType("user", User, "Perfil já cadastrado no HUB", "Perfil não cadastrado"),
    ObjectType(
        "section", Section, "Turma já cadastrada no HUB", "Turma não cadastrada",
        (("$.term_code", "term"),),
    ),
    ObjectType(
        "studentparent", StudentParent, "Relação Aluno x Responsável já cadastrada",
        "Relação Aluno x Responsável não cadastrada",
        (("$.student.code", "user"), ("$.parent.code", "user")),
    ),
    ObjectType(
        "sectionstudent", SectionStudent, "Relação Turma x Aluno já cadastrada",
        "Relação Turma x Aluno não cadastrada",
        (("$.section.code", "section"), ("$.student.code", "user"), ("$.term_code", "term")),
    ),
    ObjectType(
        "sectionteacher", SectionTeacher, "Relação Turma x Professor já cadastrada",
        "Relação Turma x Professor não cadastrada",
        (("$.section.code", "section"), ("$.teacher.code", "user"),
         ("$.subject.code", "subject"), ("$.term_code", "term")),
    ),
)  # fmt: skip
OBJECT_MODELS: dict[str, type[HubModel]] = {t.name: t.model for t in OBJECT_TYPES}
LINK_TYPES = tuple(t.name for t in OBJECT_TYPES if t.is_link)
ALREADY_EXISTS = {t.name: t.already_exists for t in OBJECT_TYPES}
NOT_FOUND = {t.name: t.not_found for t in OBJECT_TYPES}


# -- getLog ---------------------------------------------------------------------------------


class LogMessage(BaseModel):
    dsc_error: str
    level_Error: Literal["i", "w", "e"]  # noqa: N815 - the API's name


class BaseItem(BaseModel):
    obj: str
    sis_id: str
    mensagem: list[LogMessage]


class LogEntry(BaseModel):
    baseItem: BaseItem  # noqa: N815 - the API's name


class SyncLogPage(BaseModel):
    qtdeRegistros: int  # noqa: N815 - the API's name
    status: int
    logs: list[LogEntry]
    # Not in the document's answer; a HUB that echoes the page size it used lets us ask for it.
    limit: int | None = None


# "Data Consultation": limit and offset go in the JSON body of the GET, 25 and 0 by default.
# The document names no maximum, so pages are asked for 25 at a time unless the HUB echoes a
# larger ``limit`` back; the offset advances by the items actually received.
LOG_PAGE_SIZE = 25


PROCESSING_STATUSES = frozenset({1, 2})
FINISHED_STATUSES = frozenset({3, 4})


@dataclass(frozen=True)
class SyncLog:
    """A message's whole log, all pages read."""

    message_id: str
    status: int
    items: list[BaseItem]
    total: int = 0  # qtdeRegistros
    pages: int = 1

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class MessageNotFound(ApiError):
    """getLog answered 404: the HUB does not know the messageId (e.g. restored from a backup)."""


# -- posting --------------------------------------------------------------------------------


class PostOutcome(StrEnum):
    ACCEPTED = "accepted"  # the HUB answered with a messageId
    REJECTED = "rejected"  # the HUB answered 4xx: it refused the envelope; resending won't help
    NOT_ARRIVED = "not_arrived"  # retries exhausted, and provably not queued
    UNKNOWN = "unknown"  # it went out and no usable answer came back: maybe queued


@dataclass(frozen=True)
class PostResult:
    outcome: PostOutcome
    message_id: str | None = None
    status: int | None = None
    body: str = ""  # the HUB's answer for a rejected or failed post (no secrets in it)
    attempts: int = 1


def _not_sent(exc: requests.RequestException) -> bool:
    """True when the request provably never reached the HUB (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


class HubClient:
    """A typed client of the Sync API; see the module docstring for the retry rules."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = (5, 60),
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = HttpClient(
            "HUB", api_url, timeout=timeout, retry_policy=retry_policy, sleep=sleep
        )
        self._headers = {"x-api-key": api_key, "Accept": "application/json"}
        self._sleep = sleep

    def post_batch(self, envelope_json: str) -> PostResult:
        """POST one envelope (the exact JSON text that was stored before sending)."""
        policy = self.http.retry_policy
        headers = {**self._headers, "Content-Type": "application/json"}
        response: requests.Response | None = None
        for attempt in range(1, policy.attempts + 1):
            try:
                response = self.http.request(
                    "POST", "/sync/v1", data=envelope_json.encode(), headers=headers
                )
            except RedirectRefused:
                raise  # not sent on, nothing queued: HUB_API_URL is wrong, so fail loudly
            except ApiError as exc:
                cause = exc.transport_error
                if cause is None or not _not_sent(cause):
                    return PostResult(PostOutcome.UNKNOWN, body=str(exc), attempts=attempt)
                if attempt < policy.attempts:
                    self._sleep(policy.delay(attempt, None))
                continue
            result = self._classify(response, attempt)
            if result is not None:
                return result
            if attempt < policy.attempts:
                self._sleep(policy.delay(attempt, response))
        return PostResult(
            PostOutcome.NOT_ARRIVED,
            status=response.status_code if response is not None else None,
            body=body_excerpt(response) if response is not None else "",
            attempts=policy.attempts,
        )

    @staticmethod
    def _classify(response: requests.Response, attempt: int) -> PostResult | None:
        """The outcome of an answer, or None when it is worth another attempt."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                message_id = response.json()["messageId"]
                if message_id is None or not str(message_id).strip():
                    raise ValueError("no messageId")  # 200 {"messageId": null}: maybe queued
            except (ValueError, KeyError, TypeError):
                return PostResult(
                    PostOutcome.UNKNOWN,
                    status=status,
                    body=body_excerpt(response),
                    attempts=attempt,
                )
            return PostResult(PostOutcome.ACCEPTED, str(message_id), status, attempts=attempt)
        if status == 429 or status >= 500:
            return None
        return PostResult(
            PostOutcome.REJECTED, status=status, body=body_excerpt(response), attempts=attempt
        )

    def log_page(
        self, message_id: str, *, limit: int = LOG_PAGE_SIZE, offset: int = 0
    ) -> SyncLogPage:
        """One page of a message's log; paging in the JSON body ("Data Consultation")."""
        response = self.http.request(
            "GET",
            f"/instituicao/getLog/{message_id}",
            retry=True,
            headers={**self._headers, "Content-Type": "application/json"},
            data=json.dumps({"limit": limit, "offset": offset}).encode(),
        )
        if response.status_code == 404:
            raise MessageNotFound(
                self.http.system,
                "GET",
                response.url,
                "getLog does not know this messageId",
                404,
                body_excerpt(response),
            )
        if response.status_code != 200:
            raise self.http.error(response, "getLog failed")
        try:
            return SyncLogPage.model_validate(self.http.json(response))
        except ValidationError as exc:
            raise self.http.error(response, f"unexpected getLog answer: {exc}") from None

    def get_log(self, message_id: str, *, only_if_finished: bool = False) -> SyncLog:
        """A message's log with its current status: every item (all pages, until
        ``qtdeRegistros`` are read), or with ``only_if_finished`` just the first page while
        the message is still processing (its items are not used before it finishes)."""
        limit = LOG_PAGE_SIZE
        first = self.log_page(message_id, limit=limit)
        items = [entry.baseItem for entry in first.logs]
        status, total, pages = first.status, first.qtdeRegistros, 1
        limit = max(limit, first.limit or 0)
        if only_if_finished and status not in FINISHED_STATUSES:
            return SyncLog(message_id, status, items, total, pages)
        while len(items) < total:
            page = self.log_page(message_id, limit=limit, offset=len(items))
            pages += 1
            if not page.logs:
                break  # the count moved under us; the next poll reads the rest
            items.extend(entry.baseItem for entry in page.logs)
            status, total = page.status, page.qtdeRegistros
            limit = max(limit, page.limit or 0)
        return SyncLog(message_id, status, items, total, pages)

    def status(self, message_id: str) -> int:
        """The message's overall status (one small request; for sensors)."""
        return self.log_page(message_id, limit=1).status

    def close(self) -> None:
        self.http.close()


class HubResource(dg.ConfigurableResource):
    """The HUB Sync API (``HUB_API_URL`` includes the environment, e.g. ``…/prod``)."""

    api_url: str = Field(description="HUB_API_URL: base URL including the environment.")
    api_key: str = Field(description="HUB_API_KEY (secret, via dagster.EnvVar).")
    org_id: str = Field(description="HUB_ORG_ID: the organisation key sent in every envelope.")
    who: str = Field(description="HUB_WHO: the source identifier sent in every envelope.")
    batch_size: int = setting_field("HUB_BATCH_SIZE", "Objects per POST")
    max_delete_share: float = setting_field(
        "HUB_MAX_DELETE_SHARE", "Deletes above this share of an object type's state block delivery"
    )
    ack_timeout_s: float = setting_field(
        "HUB_ACK_TIMEOUT",
        "How long a sync waits for the HUB to finish a phase's messages before leaving them to "
        "the next run or the log sensor",
    )
    poll_interval_s: float = setting_field(
        "HUB_POLL_INTERVAL", "First wait between getLog polls; it doubles up to 5 s"
    )
    message_max_age_s: float = setting_field(
        "HUB_MESSAGE_MAX_AGE",
        "A message still processing this long after it was posted is given up as an unknown "
        "outcome and its objects are sent again",
    )

    def client(self) -> HubClient:
        return HubClient(self.api_url, self.api_key)


def envelope(
    events: list[dict[str, Any]], *, org_id: str, who: str, doo: str, ver: str = "1.0.0"
) -> dict[str, Any]:
    """The Sync API envelope around ``dat`` events (``doo`` ISO-8601 UTC)."""
    return {"doo": doo, "ver": ver, "who": who, "org_id": org_id, "dat": events}


def hub_resource(settings: HubSettings) -> HubResource:
    """The resource from settings; the API key goes through ``dagster.EnvVar`` when set."""
    return HubResource(
        **resource_config(settings), api_key=secret_config("HUB_API_KEY", settings.api_key)
    )
