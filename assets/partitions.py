"""The ``sync_runs`` partitions: one key per sync of all sources.

A key names the mode and the UTC start of the sync: ``full-20261123T020000Z`` or
``incr-20261123T101500Z``. Jobs, sensors and schedules derive the sync mode from the key alone.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import dagster as dg

SyncMode = Literal["full", "incremental"]

sync_runs_partitions = dg.DynamicPartitionsDefinition(name="sync_runs")

_PREFIX: dict[SyncMode, str] = {"full": "full", "incremental": "incr"}
_MODE = {prefix: mode for mode, prefix in _PREFIX.items()}
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_KEY = re.compile(r"(full|incr)-(\d{8}T\d{6}Z)")


@dataclass(frozen=True)
class SyncKey:
    mode: SyncMode
    started_at: datetime  # UTC, whole seconds

    def __str__(self) -> str:
        return f"{_PREFIX[self.mode]}-{self.started_at:{_TIMESTAMP}}"


def new_sync_key(mode: SyncMode, now: datetime | None = None) -> str:
    """The partition key for a sync in ``mode`` starting at ``now`` (default: the current time)."""
    if mode not in _PREFIX:
        raise ValueError(f"sync mode must be 'full' or 'incremental' (got {mode!r})")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return str(SyncKey(mode, now.astimezone(UTC).replace(microsecond=0)))


def parse_sync_key(key: str) -> SyncKey:
    """Split a ``sync_runs`` key into mode and UTC start; ``ValueError`` if it is not one."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(
            f"{key!r} is not a sync_runs key; expected full-YYYYMMDDTHHMMSSZ or "
            "incr-YYYYMMDDTHHMMSSZ (UTC)"
        )
    prefix, stamp = match.groups()
    try:
        started_at = datetime.strptime(stamp, _TIMESTAMP).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{key!r} is not a sync_runs key: {stamp} is not a valid time") from exc
    return SyncKey(_MODE[prefix], started_at)
