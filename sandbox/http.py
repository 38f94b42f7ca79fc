"""The HTTP layer shared by the four sandbox servers: routing, faults, request log.

Built on the standard library's ``ThreadingHTTPServer`` rather than a web framework because the
faults need the raw socket: a dropped connection closes it without a response, and a truncated
body is a valid HTTP response whose JSON stops half way.

Every server answers ``/_sandbox/...`` admin routes (never subject to faults):

* ``GET|POST /_sandbox/faults`` read or replace this server's :class:`FaultConfig` (JSON body
  with any of its fields; ``{}`` switches faults off);
* ``GET /_sandbox/requests`` the request counters (by route) and the last requests;
* ``POST /_sandbox/requests/reset`` zero them;
* ``POST /_sandbox/requests/capture`` ``{"enabled": true}`` start keeping every API request
  (method, path, query, body) from now on, ``{"enabled": false}`` stop and forget them (off by
  default; the benchmarks replay what a sync requested);
* ``GET /_sandbox/requests/captured`` the requests kept since capturing started.

Tests that run the sandbox in their own process can also add request hooks
(:meth:`SandboxServer.add_request_hook`): a function called with every API request and its number
(1, 2, ... per server; admin routes excluded), before the request is handled or, with
``after=True``, after it was handled and before its answer goes out. Hooks drive faults at an exact
point of a sync: expire tokens at the n-th request, kill the syncing process at the n-th POST.
A hook that runs before and returns ``"drop"`` drops the connection instead of handling it.
Response filters (:meth:`SandboxServer.add_response_filter`) may rewrite an API answer before it
goes out: to serve malformed records or a page that is not JSON.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

log = logging.getLogger("sandbox")

FAULT_KINDS = ("error", "rate_limit", "drop", "truncate", "slow")


# --------------------------------------------------------------------------------------------
# Requests and responses


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    query_list: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw_query: str = ""
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    client: str = ""

    def json(self) -> Any:
        """The body parsed as JSON; raises :class:`HttpError` 400 when it is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(
                400, {"Message": f"The request body is not valid JSON: {exc}"}
            ) from None

    def form(self) -> dict[str, str]:
        try:
            return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise HttpError(400, {"error": "invalid_request"}) from None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON; orjson where it can (pages of 100,000-student worlds are large), json
    for what it refuses (lone surrogates planted by fault tests, integers beyond 64 bits)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, **kwargs: Any) -> Response:
        return cls(status=status, body=json_bytes(payload), **kwargs)

    @classmethod
    def text(
        cls,
        text: str,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        **kwargs: Any,
    ) -> Response:
        return cls(status=status, body=text.encode("utf-8"), content_type=content_type, **kwargs)


class HttpError(Exception):
    """Raised by a handler to answer with an error response of the real system's shape."""

    def __init__(
        self,
        status: int,
        payload: Any = None,
        *,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}")
        if isinstance(payload, bytes | str) and content_type:
            body = payload.encode("utf-8") if isinstance(payload, str) else payload
            self.response = Response(status, body, content_type, dict(headers or {}))
        else:
            self.response = Response.json(payload, status, headers=dict(headers or {}))


Handler = Callable[[Request], Response]
RequestHook = Callable[[Request, int], str | None]
ResponseFilter = Callable[[Request, Response], Response]


class Router:
    """Routes ``(method, path)`` to handlers; patterns use ``:name`` segments."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = "^" + re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern.rstrip("/") or "/") + "/?$"
        self._routes.append((method.upper(), re.compile(regex), pattern, handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return decorator

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], str] | None:
        """The handler, path parameters and route pattern; ``None`` when no route matches.

        A path that matches a route with another method raises a 405 :class:`HttpError`.
        """
        other_method = False
        for route_method, regex, pattern, handler in self._routes:
            found = regex.match(path)
            if found:
                if route_method == method:
                    return handler, found.groupdict(), pattern
                other_method = True
        if other_method:
            raise HttpError(405, {"Message": f"The requested resource does not support {method}"})
        return None

    @property
    def patterns(self) -> list[tuple[str, str]]:
        return [(method, pattern) for method, _, pattern, _ in self._routes]


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class FaultConfig:
    """Faults a server injects, off by default.

    Rates are probabilities per request (drawn from a seeded RNG, so a run is repeatable);
    ``script`` lists faults for the next requests in order (deterministic, for tests), each one of
    ``error``, ``rate_limit``, ``drop``, ``truncate``, ``slow`` or ``ok``. ``path_filter`` limits
    faults to paths containing that text. ``latency_ms`` is added to every request;
    ``latency_floor_ms`` makes every request take at least that long (realistic round trips).
    """

    error_rate: float = 0.0
    error_status: int = 503
    rate_limit_rate: float = 0.0
    retry_after: int = 1
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: int = 5000
    latency_ms: int = 0
    latency_floor_ms: int = 0
    script: list[str] = field(default_factory=list)
    path_filter: str = ""
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "drop_rate", "truncate_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (got {value})")
        for name in ("retry_after", "slow_ms", "latency_ms", "latency_floor_ms"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must not be negative")
        bad = [kind for kind in self.script if kind not in (*FAULT_KINDS, "ok")]
        if bad:
            raise ValueError(f"unknown fault kinds in script: {', '.join(bad)}")
        if not 500 <= int(self.error_status) <= 599:
            raise ValueError("error_status must be a 5xx status")


class FaultInjector:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        config.validate()
        with self._lock:
            self.config = config
            self._script = deque(config.script)
            self._rng = random.Random(config.seed)

    def draw(self, path: str) -> str | None:
        with self._lock:
            config = self.config
            if config.path_filter and config.path_filter not in path:
                return None
            if self._script:
                kind = self._script.popleft()
                return None if kind == "ok" else kind
            for kind, rate in (
                ("drop", config.drop_rate),
                ("error", config.error_rate),
                ("rate_limit", config.rate_limit_rate),
                ("truncate", config.truncate_rate),
                ("slow", config.slow_rate),
            ):
                if rate and self._rng.random() < rate:
                    return kind
            return None


# --------------------------------------------------------------------------------------------
# Server


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    status: int
    duration_ms: float
    fault: str | None


class SandboxServer:
    """One simulated API on one port. Subclasses register routes on :attr:`router`."""

    name = "sandbox"

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, faults: FaultConfig | None = None
    ) -> None:
        self.router = Router()
        self.faults = FaultInjector(faults)
        self.host = host
        self.requested_port = port
        self.counts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()  # faults injected, by kind
        self.recent: deque[RequestRecord] = deque(maxlen=500)
        self.captured: list[dict[str, str]] | None = None  # None: not capturing
        # Wall-clock time (epoch seconds) the first request to an API route since the last reset
        # arrived (a reachability probe of the base URL matches none): a benchmark subtracts its
        # client's start to see the time spent before the first request.
        self.first_request_at: float | None = None
        self._stats_lock = threading.Lock()
        self._hooks: list[tuple[RequestHook, bool]] = []
        self._filters: list[ResponseFilter] = []
        self._api_requests = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._add_admin_routes()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"the {self.name} server is not running")
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL a client is configured with (subclasses add a path prefix)."""
        return self.origin

    def start(self) -> None:
        handler = type(f"{type(self).__name__}Handler", (_RequestHandler,), {"server_app": self})
        self._httpd = _HTTPServer((self.host, self.requested_port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[Response, str]:
        """The response for a request and the route pattern it matched (for the counters)."""
        try:
            found = self.router.match(request.method, request.path)
            if found is None:
                return self.not_found(request), "(unknown)"
            handler, params, pattern = found
            request.params = params
            return handler(request), pattern
        except HttpError as exc:
            return exc.response, "(error)"

    def fault_response(self, kind: str, config: FaultConfig) -> Response:
        """The injected ``error`` or ``rate_limit`` answer (servers override with their shape)."""
        if kind == "rate_limit":
            return Response.json(
                {"Message": "Too many requests"},
                429,
                headers={"Retry-After": str(config.retry_after)},
            )
        return Response.json({"Message": "An error has occurred."}, config.error_status)

    def not_found(self, request: Request) -> Response:
        """The system's answer to an unknown route (servers override with their own shape)."""
        return Response.json({"Message": f"No route for {request.method} {request.path}"}, 404)

    def record(
        self, request: Request, pattern: str, status: int, started: float, fault: str | None
    ) -> None:
        duration = (time.perf_counter() - started) * 1000
        with self._stats_lock:
            self.counts[f"{request.method} {pattern}"] += 1
            routed = not pattern.startswith("(") and not request.path.startswith("/_sandbox")
            if self.first_request_at is None and routed:
                self.first_request_at = time.time() - duration / 1000
            if fault:
                self.injected[fault] += 1
            self.recent.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.raw_query,
                    status,
                    round(duration, 2),
                    fault,
                )
            )
            if self.captured is not None and not request.path.startswith("/_sandbox"):
                self.captured.append(_captured(request))
        log.info(
            "%s %s %s%s %s %.1fms%s",
            self.name,
            request.method,
            request.path,
            f"?{request.raw_query}" if request.raw_query else "",
            status,
            duration,
            f" fault={fault}" if fault else "",
        )

    # -- hooks -------------------------------------------------------------------------------

    def add_request_hook(self, hook: RequestHook, *, after: bool = False) -> None:
        """Call ``hook(request, number)`` for every API request from now on: before it is
        handled, or with ``after`` once it was handled (an injected fault counts as handled)
        and before the answer is sent. ``number`` counts this server's API requests from 1."""
        with self._stats_lock:
            self._hooks.append((hook, after))

    def clear_request_hooks(self) -> None:
        with self._stats_lock:
            self._hooks.clear()
            self._filters.clear()

    def add_response_filter(self, rewrite: ResponseFilter) -> None:
        """Pass every handled API answer through ``rewrite(request, response)`` from now on
        (until :meth:`clear_request_hooks`); injected faults are not filtered."""
        with self._stats_lock:
            self._filters.append(rewrite)

    def filtered(self, request: Request, response: Response) -> Response:
        with self._stats_lock:
            filters = list(self._filters)
        for rewrite in filters:
            try:
                response = rewrite(request, response)
            except Exception:  # a test's filter must not take the server down
                log.exception("sandbox: response filter failed on %s", request.path)
        return response

    def _number_request(self) -> tuple[int, list[tuple[RequestHook, bool]]]:
        with self._stats_lock:
            self._api_requests += 1
            return self._api_requests, list(self._hooks)

    def request_count(self, pattern_substring: str = "") -> int:
        with self._stats_lock:
            return sum(n for key, n in self.counts.items() if pattern_substring in key)

    # -- admin -------------------------------------------------------------------------------

    def _add_admin_routes(self) -> None:
        self.router.add(
            "GET", "/_sandbox/faults", lambda r: Response.json(asdict(self.faults.config))
        )
        self.router.add("POST", "/_sandbox/faults", self._set_faults)
        self.router.add("GET", "/_sandbox/requests", self._requests)
        self.router.add("POST", "/_sandbox/requests/reset", self._reset_requests)
        self.router.add("POST", "/_sandbox/requests/capture", self._set_capture)
        self.router.add("GET", "/_sandbox/requests/captured", self._captured_requests)

    def _set_faults(self, request: Request) -> Response:
        try:
            config = FaultConfig.from_dict(request.json() or {})
        except (TypeError, ValueError) as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        self.faults.configure(config)
        return Response.json(asdict(config))

    def _requests(self, request: Request) -> Response:
        with self._stats_lock:
            return Response.json(
                {
                    "counts": dict(self.counts),
                    "first_request_at": self.first_request_at,
                    "recent": [asdict(r) for r in list(self.recent)[-100:]],
                }
            )

    def _reset_requests(self, request: Request) -> Response:
        with self._stats_lock:
            self.counts.clear()
            self.recent.clear()
            self.injected.clear()
            self.first_request_at = None
        return Response.json({"ok": True})

    def _set_capture(self, request: Request) -> Response:
        body = request.json()
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            raise HttpError(400, {"error": 'expected {"enabled": true|false}'})
        with self._stats_lock:
            self.captured = [] if enabled else None
        return Response.json({"enabled": enabled})

    def _captured_requests(self, request: Request) -> Response:
        with self._stats_lock:
            if self.captured is None:
                raise HttpError(409, {"error": "capture is off: POST /_sandbox/requests/capture"})
            return Response.json({"requests": list(self.captured)})


def _captured(request: Request) -> dict[str, str]:
    return {
        "method": request.method,
        "path": request.path,
        "query": request.raw_query,
        "body": request.body.decode("utf-8", errors="replace"),
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished (killed, timed out) is routine; anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        log.exception("sandbox: error serving %s", client_address[0])


class _RequestHandler(BaseHTTPRequestHandler):
    server_app: SandboxServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each keep-alive response would
    # wait ~40 ms for the delayed ACK.
    disable_nagle_algorithm = True
    server_version = "hubsync-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib's access log: :meth:`SandboxServer.record` logs one line."""

    def _handle(self) -> None:
        started = time.perf_counter()
        app = self.server_app
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query_list = parse_qsl(parts.query, keep_blank_values=True)
        request = Request(
            method=self.command,
            path=parts.path,
            query=dict(query_list),
            query_list=query_list,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_query=parts.query,
            client=self.client_address[0],
        )
        admin = request.path.startswith("/_sandbox")
        number, hooks = (0, []) if admin else app._number_request()
        dropped = _call_hooks(hooks, request, number, after=False)
        fault = "drop" if dropped else None if admin else app.faults.draw(request.path)
        config = app.faults.config
        if not admin and config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        if fault == "slow":
            time.sleep(config.slow_ms / 1000)
        if fault == "drop":
            _call_hooks(hooks, request, number, after=True)
            app.record(request, "(dropped)", 0, started, fault)
            self._drop()
            return
        if fault in ("error", "rate_limit"):
            response, pattern = app.fault_response(fault, config), "(fault)"
            if fault == "rate_limit":
                response.headers.setdefault("Retry-After", str(config.retry_after))
        else:
            try:
                response, pattern = app.dispatch(request)
            except Exception:  # a sandbox bug must not kill the server: answer 500 and log
                log.exception(
                    "%s: unhandled error for %s %s", app.name, request.method, request.path
                )
                response, pattern = Response.text("Internal Server Error", 500), "(crash)"
            if not admin:
                response = app.filtered(request, response)
            if fault == "truncate" and len(response.body) > 1:
                response = Response(
                    response.status,
                    response.body[: len(response.body) // 2],
                    response.content_type,
                    response.headers,
                )
        if not admin and config.latency_floor_ms:
            remaining = config.latency_floor_ms / 1000 - (time.perf_counter() - started)
            if remaining > 0:
                time.sleep(remaining)
        _call_hooks(hooks, request, number, after=True)
        # Counted before the response goes out, so a client that has its answer can rely on it.
        app.record(request, pattern, response.status, started, fault)
        self._send(response)

    def _send(self, response: Response) -> None:
        try:
            self.send_response(
                response.status,
                HTTPStatus(response.status).phrase
                if response.status in HTTPStatus._value2member_map_
                else None,
            )
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:  # the client asked for it; say so, or it may reuse it
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


def _call_hooks(
    hooks: list[tuple[RequestHook, bool]], request: Request, number: int, *, after: bool
) -> bool:
    """Run the hooks of this stage; True when one asks to drop the request."""
    drop = False
    for hook, hook_after in hooks:
        if hook_after == after:
            try:
                drop = hook(request, number) == "drop" or drop
            except Exception:  # a test's hook must not take the server down
                log.exception("sandbox: request hook failed on %s", request.path)
    return drop and not after


def parse_json_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated CLI values into a flat list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
