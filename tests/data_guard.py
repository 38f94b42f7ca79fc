"""A pytest plugin that fails the session when a test wrote into the project's ``data/``.

``data/`` holds the user's own warehouse, Dagster instance and sandbox state: a test run that
adds a run there (or a warehouse row, or sandbox state) changes what ``hubsync ui`` does next.
``tests/conftest.py`` points ``DAGSTER_HOME`` and ``HUBSYNC_WAREHOUSE`` elsewhere before any test
module is imported; this plugin checks that it worked. It compares the folder before and after
the session in the controlling process only (under pytest-xdist the workers' writes land in the
same folder, so the controller sees them all).
"""

import os
from pathlib import Path

import pytest

# Overridable so that the plugin itself can be tested on a scratch folder.
GUARDED_ENV = "HUBSYNC_TEST_GUARDED_DATA"
PROJECT_DATA = Path(__file__).resolve().parent.parent / "data"
_SNAPSHOT = pytest.StashKey[dict[str, tuple[int, int]]]()
_FOLDER = pytest.StashKey[Path]()


def guarded_folder() -> Path:
    return Path(os.environ.get(GUARDED_ENV) or PROJECT_DATA)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: relative path -> (size, mtime in ns)."""
    found: dict[str, tuple[int, int]] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root, name)
            try:
                stat = path.lstat()
            except FileNotFoundError:  # removed while walking
                continue
            size = 0 if path.is_dir() else stat.st_size
            found[str(path.relative_to(folder))] = (size, stat.st_mtime_ns)
    return found


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What differs, as ``added x`` / ``removed x`` / ``changed x`` lines, sorted."""
    lines = [f"added {p}" for p in after.keys() - before.keys()]
    lines += [f"removed {p}" for p in before.keys() - after.keys()]
    lines += [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(lines, key=lambda line: line.split(" ", 1)[1])


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_xdist_worker(session.config):
        return
    folder = guarded_folder()
    session.config.stash[_FOLDER] = folder
    session.config.stash[_SNAPSHOT] = snapshot(folder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_xdist_worker(session.config) or _SNAPSHOT not in session.config.stash:
        return
    folder = session.config.stash[_FOLDER]
    found = changes(session.config.stash[_SNAPSHOT], snapshot(folder))
    if not found:
        return
    shown = found[:20] + ([f"... and {len(found) - 20} more"] if len(found) > 20 else [])
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "\n".join(
        [
            f"the tests wrote into {folder}, the user's own hubsync data (no test may):",
            *(f"  {line}" for line in shown),
            "(a `hubsync ui` or `hubsync demo` running at the same time also writes there)",
        ]
    )
    if reporter is not None:
        reporter.write_sep("=", "data/ changed", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
