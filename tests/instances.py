"""The Dagster instance of in-process tests.

``dagster.instance_for_test()`` keeps runs and events in SQLite files and opens a new SQLAlchemy
engine for almost every event, which made a 30-student sync take 5.5 s, more than half of it in
Dagster's storage. The ephemeral instance keeps the same SQL storage in memory (runs, events,
dynamic partitions, concurrency pools), so the same sync takes 2.6 s. Tests that need what only
a persistent instance has (another process reading it: the CLI, the daemon, the deployment, the
kill test) keep their DAGSTER_HOME.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg


@contextmanager
def ephemeral_instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance
