"""A throw-away PostgreSQL server for the deployment tests: Debian's ``postgresql`` package,
``initdb`` into a temporary folder, ``pg_ctl start`` on a free loopback port, stopped and removed
at the end.

initdb refuses to run as root; as root (CI) the server runs as the ``postgres`` account the
package creates (``runuser``). The tests skip only when no server can be had at all: the binaries
are missing, or root has no unprivileged account to run them as.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_ACCOUNT = "postgres"
SUPERUSER = "hubsync"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started on this machine; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def create_database(self, name: str) -> None:
        import psycopg2  # dagster-postgres brings it

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


def _version(initdb: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", initdb.parent.parent.name))


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl: Debian's newest, else the ones on PATH."""
    debian = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=_version)
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
        "on Debian: apt-get install postgresql (.ci/run does this)"
    )


def _run_as_prefix() -> tuple[list[str], pwd.struct_passwd | None]:
    """How to run the server's commands: as ourselves, or (as root) as the postgres account."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root and there is no {SERVER_ACCOUNT!r} account to run initdb as "
            "(Debian's postgresql package creates it)"
        ) from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser is missing: cannot drop to postgres")
    return [runuser, "-u", SERVER_ACCOUNT, "--"], account


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 with a password-authenticated superuser ``hubsync``."""
    binaries = server_binaries()
    prefix, account = _run_as_prefix()
    base = Path(tempfile.mkdtemp(prefix="hubsync-pg-"))
    password = secrets.token_hex(12)
    (base / "pwfile").write_text(password + "\n")
    if account is not None:
        for path in (base, base / "pwfile"):
            os.chown(path, account.pw_uid, account.pw_gid)
    data = base / "data"

    def run(*argv: str) -> None:
        done = subprocess.run(
            [*prefix, *argv], cwd=base, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}\n{tail}")

    port = _free_port()
    run(
        str(binaries / "initdb"),
        "-D", str(data),
        "-U", SUPERUSER,
        f"--pwfile={base / 'pwfile'}",
        "--auth-host=scram-sha-256",
        "--auth-local=peer",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    )  # fmt: skip
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    run(str(binaries / "pg_ctl"), "start", "-D", str(data), "-l", str(base / "server.log"),
        "-w", "-t", "60", "-o", options)  # fmt: skip
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user=SUPERUSER, password=password)
    finally:
        subprocess.run(
            [*prefix, str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"],
            cwd=base,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)
