"""The quarantine: records a source sent that hubsync cannot use, kept with the reason (table
``quarantine``, one row per record and sync). Every source writes it with ``quarantine`` and
words pydantic's refusals with ``validation_reason``, so reasons read the same whichever source
they come from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from pydantic import ValidationError

QUARANTINE_COLUMNS = "source, record_type, record_key, reason, sync_key, raw"
MAX_REASONS = 5  # a record wrong in many fields is named by its first few


class Executes(Protocol):
    """A DuckDB connection, or a ``PageWriter`` writing inside its transaction."""

    def execute(self, sql: str, parameters: Any = ...) -> Any: ...


def validation_reason(exc: ValidationError | ValueError) -> str:
    """Why a record was refused: ``field.path: message`` per pydantic error (``record:`` when
    the record as a whole is wrong), ``; ``-joined, or a ValueError's own text."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:MAX_REASONS]
    )


def quarantine(
    conn: Executes,
    source: str,
    sync_key: str,
    records: Iterable[tuple[str, str | None, str, str]],
) -> int:
    """Quarantine ``records`` of ``source`` for ``sync_key``: (record type, record key, reason,
    the record as received as JSON text). Returns how many."""
    written = 0
    for record_type, record_key, reason, raw_json in records:
        conn.execute(
            f"INSERT INTO quarantine ({QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?::JSON)",
            [source, record_type, record_key, reason, sync_key, raw_json],
        )
        written += 1
    return written
