"""Schema migrations: named, append-only schema changes, and the one shape of every raw table.

Each component declares its own (a source system in ``resources/<name>/schema.py``); the
warehouse applies them in order (``resources.warehouse.all_migrations``).
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema change. ``name`` identifies it for ever (prefix it with the component, e.g.
    ``"campusonline: raw pages"``), so components can add migrations independently."""

    name: str
    sql: str


_RAW_TABLE = re.compile(r"raw_[a-z0-9_]+")


def check_raw_table_name(name: str) -> None:
    if not _RAW_TABLE.fullmatch(name):
        raise ValueError(f"raw page tables are named raw_<lowercase words> (got {name!r})")


def raw_page_table_ddl(name: str, *, compressed: bool = False) -> str:
    """DDL for a raw page table. Every raw table has this shape, so one writer lands them all.

    ``request_key`` identifies the API call within a sync (one sync makes many calls, e.g. one
    per endpoint, per student or per semester) and ``page_nr`` the page within that call.
    ``compressed``: the body is kept zlib-compressed (``body_zlib``, with ``body_bytes`` its size)
    instead of as JSON, for pages so large that a sync's landing transaction, which DuckDB holds
    in memory, would not fit.
    """
    check_raw_table_name(name)
    body = (
        """body_zlib BLOB NOT NULL,     -- the response body as received, zlib-compressed
            body_bytes BIGINT NOT NULL,  -- its size uncompressed"""
        if compressed
        else "body JSON NOT NULL,"
    )
    return f"""
        CREATE TABLE {name} (
            sync_key VARCHAR NOT NULL,
            request_key VARCHAR NOT NULL,
            page_nr INTEGER NOT NULL,
            request_params JSON NOT NULL,
            fetched_at TIMESTAMPTZ NOT NULL,
            record_count INTEGER NOT NULL,
            {body}
            PRIMARY KEY (sync_key, request_key, page_nr)
        );
    """
