"""HTTP plumbing shared by the API clients: sessions, timeouts, retries, errors, counters.

Each client (CAMPUSonline, Stud.IP, LMS, HUB) owns an :class:`HttpClient`. Retrying is the
caller's decision per request (``retry=True``), because only requests that are safe to repeat
may be repeated: reads, and writes that provably did not arrive. A retried request waits the
server's ``Retry-After`` when it sends one, else an exponential backoff with jitter.

Errors are :class:`ApiError` with a message that names the system, the method, the URL (without
its query string, which may carry filters or tokens) and the status, never a credential.

Upstreams are not trusted to behave: a redirect is refused, not followed (the client would send
its API key, credentials or personal data on to wherever ``Location`` points); a body is read in
chunks and refused once it decodes to more than ``max_response_bytes`` (a small gzip bomb
decodes to gigabytes); JSON nested too deeply to parse is a bad page, not a ``RecursionError``.
"""

from __future__ import annotations

import functools
import gc
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError

from resources.settings import setting_default

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MB = 1024 * 1024
# For clients made directly; resources take their settings (the same defaults).
DEFAULT_MAX_RESPONSE_MB: int = setting_default("HUBSYNC_MAX_RESPONSE_MB")
DEFAULT_MAX_PAGES: int = setting_default("CO_MAX_PAGES")  # each *_MAX_PAGES
# Bytes read from the socket at a time. urllib3 decodes at most this much per read, so a
# compressed body cannot balloon in memory between two checks of the limit.
READ_CHUNK_BYTES = 64 * 1024
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class ApiError(RuntimeError):
    """A request failed for good. ``status`` is None when no response arrived."""

    def __init__(
        self,
        system: str,
        method: str,
        url: str,
        message: str,
        status: int | None = None,
        body: str = "",
        transport_error: requests.RequestException | None = None,
    ) -> None:
        self.system, self.method, self.url = system, method, safe_url(url)
        self.status, self.body = status, body
        self.transport_error = transport_error  # why no response arrived, if none did
        where = f"{system}: {method} {self.url}"
        super().__init__(f"{where} -> {status}: {message}" if status else f"{where}: {message}")


def safe_url(url: str) -> str:
    """The URL without query, fragment or user info: safe for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def body_excerpt(response: requests.Response, limit: int = 300) -> str:
    text = response.text if response.content else ""
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, response: requests.Response | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after_s)
            except ValueError:
                pass  # an HTTP date: fall back to the backoff
        backoff = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return backoff * (0.5 + random.random() / 2)


@dataclass
class RequestStats:
    """Counters for a client's materialisation metadata (thread-safe)."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    parse_seconds: float = 0.0  # turning bodies into Python objects (HttpClient.json)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, response: requests.Response | None, seconds: float, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += int(retry)
            self.seconds += seconds
            if response is not None:
                self.bytes_received += len(response.content)

    def record_parse(self, seconds: float) -> None:
        with self._lock:
            self.parse_seconds += seconds

    def as_metadata(self) -> dict[str, float]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "bytes": self.bytes_received,
                "http_seconds": round(self.seconds, 3),
                "parse_seconds": round(self.parse_seconds, 3),
            }


class RedirectRefused(ApiError):
    """The server answered with a redirect, which hubsync never follows."""


class HttpClient:
    """A session with a connection pool, default timeouts and opt-in retries; redirects are
    refused and bodies larger than ``max_response_bytes`` (decoded) are not read."""

    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        timeout: tuple[float, float] = (5, 60),
        retry_policy: RetryPolicy | None = None,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_MB * MB,
    ) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        self.system = system
        self.max_response_bytes = max_response_bytes
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.stats = RequestStats()
        self._sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def request(
        self, method: str, path: str, *, retry: bool = False, **kwargs: Any
    ) -> requests.Response:
        """Send a request; with ``retry``, repeat it on transient failures and 429/5xx.

        Returns the last response whatever its status (callers map statuses to their own
        errors), its body read; raises :class:`ApiError` when no response arrived at all, when
        the body is too large, and :class:`RedirectRefused` for a redirect.
        """
        url = self.url(path)
        kwargs.setdefault("timeout", self.timeout)
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True  # read by _read_body, which stops at max_response_bytes
        attempts = self.retry_policy.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                response = self.session.request(method, url, **kwargs)
                self._read_body(response, method)
            except TRANSIENT_ERRORS as exc:
                self.stats.record(None, time.perf_counter() - started, attempt > 1)
                if attempt == attempts or _unresolvable(exc):
                    raise ApiError(
                        self.system,
                        method,
                        url,
                        f"no response after {attempt} attempt(s): "
                        f"{type(exc).__name__}: {_reason(exc)}",
                        transport_error=exc,
                    ) from None
                self._sleep(self.retry_policy.delay(attempt, None))
                continue
            self.stats.record(response, time.perf_counter() - started, attempt > 1)
            if response.is_redirect:
                raise self._redirect_error(response, method)
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                self._sleep(self.retry_policy.delay(attempt, response))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_body(self, response: requests.Response, method: str) -> None:
        """Read the body in chunks, refusing it once it decodes to more than the limit."""
        limit = self.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(READ_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        self.system,
                        method,
                        response.url,
                        f"the response body is larger than {_megabytes(limit)} decoded "
                        "(HUBSYNC_MAX_RESPONSE_MB); refused without reading the rest",
                        response.status_code,
                    )
                chunks.append(chunk)
        except requests.exceptions.ContentDecodingError as exc:
            raise ApiError(
                self.system,
                method,
                response.url,
                f"the response body could not be decoded: {_reason(exc)}",
                response.status_code,
            ) from None
        finally:
            if size > limit:
                response.close()  # drop the connection instead of draining the rest
        # What Response.content would hold had requests read the body itself.
        response._content = b"".join(chunks)
        _guard_json(response)

    def _redirect_error(self, response: requests.Response, method: str) -> RedirectRefused:
        return RedirectRefused(
            self.system,
            method,
            response.url,
            f"redirected to {_location_host(response)}; hubsync does not follow redirects "
            "(they would carry credentials and data to another address): set the API URL to "
            "the address that answers itself",
            response.status_code,
        )

    def error(self, response: requests.Response, message: str) -> ApiError:
        """An :class:`ApiError` for a response the caller cannot use."""
        return ApiError(
            self.system,
            response.request.method or "?",
            response.url,
            message,
            response.status_code,
            body_excerpt(response),
        )

    def json(self, response: requests.Response, *, content: bytes | None = None) -> Any:
        """The response body as JSON, or an :class:`ApiError` naming the URL. ``content``: the
        body as the caller cleaned it, parsed instead of the response's own."""
        started = time.perf_counter()
        try:
            return self._json(response, response.content if content is None else content)
        finally:
            self.stats.record_parse(time.perf_counter() - started)

    def _json(self, response: requests.Response, content: bytes) -> Any:
        try:
            if len(content) < LARGE_BODY_BYTES:
                return orjson.loads(content)
            with gc_paused():
                return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass  # json below decides (and words the error): what orjson refuses, json may take
        try:
            try:
                return json.loads(content)
            except UnicodeDecodeError:
                # Bad bytes inside a record must not cost the whole page: they become U+FFFD,
                # which the record models refuse (reject_bad_text), so that record is quarantined.
                return json.loads(content.decode("utf-8", errors="replace"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.error(response, f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            message = f"the body is not usable JSON ({NESTED_TOO_DEEPLY})"
            raise self.error(response, message) from None

    def close(self) -> None:
        self.session.close()


LARGE_BODY_BYTES = 1_000_000  # parsed with the cyclic collector paused (gc_paused)


def loads(text: str | bytes) -> Any:
    """JSON text as Python objects: orjson, or json where orjson refuses (integers beyond 64
    bits, invalid UTF-8), so the result is json's whenever json would succeed."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a page is parsed into objects and
    validated. A parsed page is millions of small objects without reference cycles (reference
    counting frees them), but each allocation burst triggers collections that scan every live
    object, pages in flight included: a 6 MB Stud.IP listing page took 0.17 s with the collector
    on, 0.07 s with it paused. The collector is enabled again afterwards (by whichever caller had
    found it enabled). Keep the pause to one page: objects in reference cycles (a requests
    ``Response`` and the body it holds, for one) are freed only by the collector, so pausing it
    across a whole listing kept every page's response alive until the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def page_errors(page: str) -> Iterator[None]:
    """Name the page (``page 3``, with its offset) in any ApiError raised inside."""
    try:
        yield
    except ApiError as exc:
        exc.args = (f"{exc.args[0]} [{page}]",)
        raise


MAX_TEXT_CHARS = 10_000  # longer values of a record's fields are refused, not stored


def bad_text(value: str) -> str | None:
    """Why a record's text field is refused: invalid UTF-8 (decoded as U+FFFD) or more than
    ``MAX_TEXT_CHARS``; None when it is fine."""
    if "\ufffd" in value:
        return "holds invalid UTF-8 bytes"
    if len(value) > MAX_TEXT_CHARS:
        return f"is longer than {MAX_TEXT_CHARS} characters"
    return None


def reject_bad_text(data: Any, fields: Iterable[str]) -> Any:
    """For a record model's ``mode="before"`` validator: refuse the record when one of its
    ``fields`` (``field_names(cls)``) holds ``bad_text``."""
    if isinstance(data, dict):
        for name in fields:
            value = data.get(name)
            if isinstance(value, str) and (why := bad_text(value)):
                raise ValueError(f"{name} {why}")
    return data


@functools.cache
def field_names(model: type) -> tuple[str, ...]:
    """A pydantic model's field names, once per model: ``model_fields`` is a property that
    takes microseconds, and a record validator asked for it 79,089 times for the 26,363
    members of one course (0.18 s of the 0.8 s it took to parse them)."""
    return tuple(model.model_fields)  # type: ignore[attr-defined]


NESTED_TOO_DEEPLY = "it nests arrays or objects too deeply to parse"


def _guard_json(response: requests.Response) -> None:
    """Make ``response.json()`` raise a ``ValueError`` for JSON nested too deeply to parse.

    Python's parser raises ``RecursionError`` there, which the clients' ``except ValueError``
    around ``response.json()`` (error bodies, token answers, the HUB's messageId) would miss.
    """
    parse = response.json

    def json_or_value_error(**kwargs: Any) -> Any:
        try:
            return parse(**kwargs)
        except RecursionError:
            raise requests.exceptions.JSONDecodeError(NESTED_TOO_DEEPLY, "", 0) from None

    response.json = json_or_value_error  # type: ignore[method-assign]


def _location_host(response: requests.Response) -> str:
    """The host (and port) a redirect points at; never its path or query, which may hold
    tokens."""
    try:
        target = urlsplit(urljoin(response.url, response.headers.get("Location", "")))
        port = target.port
    except ValueError:  # a malformed Location
        return "an unusable Location"
    host = target.hostname or "?"
    return f"{host}:{port}" if port else host


def _megabytes(size: int) -> str:
    return f"{size / MB:g} MB"


def _unresolvable(exc: Exception) -> bool:
    """The host name does not resolve: a configuration error, so retrying only delays the
    message (a refused connection is still retried: the server may be restarting)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NameResolutionError)


def _reason(exc: Exception) -> str:
    """A short cause without the full URL (which the ApiError names safely already)."""
    text = str(exc)
    return text.split("Caused by ")[-1][:200] if "Caused by" in text else text[:200]
