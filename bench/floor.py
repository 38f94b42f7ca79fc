"""The floor under a sync's fetching: the same requests, replayed with plain ``requests``.

The sandbox captures every API request a sync makes (``POST /_sandbox/requests/capture``); the
floor replays them in the same order, with the same auth and the same concurrency per source,
reading each body and throwing it away. What a sync spends above that is its own work
(parsing, validation, landing in DuckDB, bookkeeping).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

TOKEN_PATHS = {"co": "/wbOAuth2.token", "lms": "/services/api/oauth2/token"}


@dataclass
class FloorResult:
    requests: int
    seconds: float
    bytes: int
    statuses: dict[str, int]
    concurrency: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "s": round(self.seconds, 3),
            "mb": round(self.bytes / 2**20, 1),
            "statuses": self.statuses,
            "concurrency": self.concurrency,
        }


def _session(concurrency: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    return session


class _Replayer:
    """Replays one source's captured requests; token requests fetch a fresh bearer token."""

    def __init__(
        self, origin: str, token_path: str | None, basic_auth: tuple[str, str] | None, pool: int
    ) -> None:
        self.origin = origin
        self.token_path = token_path
        self.basic_auth = basic_auth
        self.session = _session(pool)
        self.token: str | None = None
        self.login_body: str | None = None
        self.statuses: Counter[str] = Counter()
        self.bytes = 0
        self._lock = threading.Lock()

    def send(self, captured: dict[str, str]) -> None:
        url = f"{self.origin}{captured['path']}"
        if captured["query"]:
            url += f"?{captured['query']}"
        if captured["path"] == self.token_path:
            response = self._token(url, captured["body"])
        else:
            headers = {"Accept": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            if captured["body"]:
                headers["Content-Type"] = "application/json"
            response = self.session.request(
                captured["method"],
                url,
                data=captured["body"].encode() or None,
                headers=headers,
                auth=self.basic_auth,
                timeout=(5, 120),
            )
        with self._lock:
            self.statuses[str(response.status_code)] += 1
            self.bytes += len(response.content)

    def _token(self, url: str, body: str) -> requests.Response:
        # A refresh token is single-use, so a captured refresh is replayed as the first login.
        if "grant_type=refresh_token" in body and self.login_body is not None:
            body = self.login_body
        elif self.login_body is None:
            self.login_body = body
        response = self.session.post(
            url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=(5, 60),
        )
        if response.ok:
            self.token = json.loads(response.content)["access_token"]
        return response


def replay(
    origin: str,
    captured: list[dict[str, str]],
    *,
    concurrency: int = 1,
    token_path: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> FloorResult:
    """Send ``captured`` again (``concurrency`` at a time), discarding the bodies."""
    replayer = _Replayer(origin, token_path, basic_auth, concurrency)
    started = time.perf_counter()
    if concurrency == 1:
        for request in captured:
            replayer.send(request)
    else:
        tokens = [r for r in captured if r["path"] == token_path]
        for request in tokens[:1]:  # authenticate first, as a client does
            replayer.send(request)
        rest = [r for r in captured if r["path"] != token_path] + tokens[1:]
        with ThreadPoolExecutor(concurrency) as pool:
            for _ in pool.map(replayer.send, rest):
                pass
    seconds = time.perf_counter() - started
    replayer.session.close()
    return FloorResult(len(captured), seconds, replayer.bytes, dict(replayer.statuses), concurrency)
