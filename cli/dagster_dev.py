"""What `hubsync ui` shows of `dagster dev`'s output: its INFO lines minus the daemon's per-tick
chatter (every sensor tick logs "Checking for new runs…" and its skip reason, every few seconds).
The ticks, with their skip reasons, are in the UI under Automation; `hubsync ui --verbose`
shows everything, at DEBUG.
"""

import re
import subprocess
import sys
import threading
from typing import IO

# `dagster dev` is superseded by `dg dev` (the dagster-dg-cli package, which this project does not
# use); the warning at every start tells a hubsync user nothing they can act on.
DEV_COMMAND_WARNING = "ignore:Function `dev_command` is superseded"

_CHATTER = re.compile(
    r" - (?:"
    r"Checking for new runs for (?:sensor|the following schedules)"
    r"|Sensor \S+ skipped: "
    r"|No run requests returned for "
    r"|Not checking for any runs since no "
    r"|Priority sorting and checking tag concurrency limits for queued runs"
    r"|Poll for new runs|Launched 0 runs"
    r")"
)


def is_chatter(line: str) -> bool:
    """A daemon line repeated at every tick, which says nothing new."""
    return " INFO " in _plain(line) and _CHATTER.search(_plain(line)) is not None


def _plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)  # without the colour codes


def dagster_dev_command(workspace: str, host: str, port: int, *, verbose: bool) -> list[str]:
    return [
        sys.executable, "-W", DEV_COMMAND_WARNING, "-m", "dagster", "dev",
        "-w", workspace, "--host", host, "--port", str(port),
        "--log-level", "debug" if verbose else "info",
    ]  # fmt: skip


def relay(stream: IO[str], out: IO[str], *, verbose: bool) -> threading.Thread:
    """Copy ``stream`` (dagster dev's output) to ``out`` line by line, in a thread, dropping the
    chatter unless ``verbose``; the thread ends with the stream."""

    def copy() -> None:
        for line in stream:
            if verbose or not is_chatter(line):
                out.write(line)
                out.flush()

    thread = threading.Thread(target=copy, name="dagster-dev-output", daemon=True)
    thread.start()
    return thread


def start(
    command: list[str], *, cwd: str, env: dict[str, str], verbose: bool
) -> tuple["subprocess.Popen[str]", threading.Thread]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    return process, relay(process.stdout, sys.stdout, verbose=verbose)
