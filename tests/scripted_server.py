"""A small scripted HTTP server for tests: loopback only, answers from a table, records requests.

Each answer is ``(status, headers, body)``; ``body`` may be a callable writing the body to the
socket itself (for bodies too large to hold). Unknown paths answer 404.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

Body = bytes | Callable[[BinaryIO], None]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    answers: dict[str, tuple[int, dict[str, str], Body]]
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1]


@contextmanager
def scripted_server(
    answers: dict[str, tuple[int, dict[str, str], Body]],
) -> Iterator[ScriptedServer]:
    server = ScriptedServer(dict(answers))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            server.requests.append(Recorded(self.command, path, dict(self.headers), body))
            status, headers, payload = server.answers.get(path, (404, {}, b"{}"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if isinstance(payload, bytes):
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    payload(self.wfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should

        do_GET = do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
