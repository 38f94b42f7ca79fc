"""Starting the simulated source and HUB systems for `hubsync demo` and `hubsync ui`."""

import errno
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from resources.settings import VARIABLES_BY_NAME
from resources.sources import url_variables


def sandbox_state_dir(warehouse_path: Path) -> Path:
    """Where the sandbox keeps its world and HUB state: beside the warehouse that syncs it, so
    a sandbox restarted later still matches what the warehouse believes the HUB holds."""
    return warehouse_path.parent / "sandbox"


@contextmanager
def started_sandbox(state_dir: Path | None = None) -> Iterator[Any]:
    """Run the sandbox on its default ports, or on free ports when those are taken.

    On free ports another sandbox probably holds the usual ones (and ``state_dir``), so that
    one starts without saved state.
    """
    from sandbox.server import running_sandbox  # the sandbox is only needed by these commands

    with ExitStack() as stack:
        try:
            sandbox = stack.enter_context(running_sandbox(state_dir=state_dir))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print("hubsync: the sandbox's usual ports are taken; using free ports", file=sys.stderr)
            sandbox = stack.enter_context(running_sandbox(port_base=0))
        yield sandbox


def sandbox_environment(urls: Mapping[str, str]) -> dict[str, str]:
    """The *_API_URL variables that point hubsync at a sandbox serving ``urls``.

    Only URLs that differ from the defaults are returned, so a sandbox on its default ports
    leaves the environment (and ``Settings.uses_sandbox``) untouched.
    """
    env = {}
    for code, variable in url_variables().items():
        url = urls[code].rstrip("/")
        if url != VARIABLES_BY_NAME[variable].default:
            env[variable] = url
    return env


@contextmanager
def environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Set ``overrides`` in os.environ for the duration of the block."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
