"""The quarantine: records a source sent that hubsync cannot use, kept with the reason (table
``quarantine``, one row per record and sync). Every source writes it with ``quarantine`` and
words pydantic's refusals with ``validation_reason``, so reasons read the same whichever source
they come from."""

from __future__ import annotations

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
    record_type: str,
    record_key: str | None,
    reason: str,
    raw_json: str,
) -> None:
    """Quarantine one record of ``source`` for ``sync_key``, with the record as received (JSON
    text)."""
    conn.execute(
        f"INSERT INTO quarantine ({QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?::JSON)",
        [source, record_type, record_key, reason, sync_key, raw_json],
    )
