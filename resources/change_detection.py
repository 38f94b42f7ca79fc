"""Change detection, one formula for every source: a row's content hash in SQL, and whether a
source's current state can take a sync's rows on top of the last build."""

from collections.abc import Sequence
from typing import Literal


def row_hash_sql(columns: Sequence[str], table: str | None = None) -> str:
    """SQL of a row's content hash over ``columns`` (typed values, nulls included): equal
    hashes mean the row did not change. ``table`` qualifies the columns (``t.email``)."""
    prefix = f"{table}." if table else ""
    fields = ", ".join(f"{column} := {prefix}{column}" for column in columns)
    return f"md5(to_json(struct_pack({fields}))::VARCHAR)"


def current_state_build(
    chain: Sequence[tuple[str, bool]], built: Sequence[tuple[str, str]], key: str
) -> Literal["overlay", "rebuild"]:
    """``overlay`` when ``key`` is the last of ``chain`` (each landing's sync key and whether it
    was full, oldest first from the base) and incremental, and the current tables were built
    (``built``: built-from key, base key) as of the landing before it on the same base: then
    only its rows need applying. Anything else (a full sync, a re-run, a sync skipped or run
    out of order, a new base) rebuilds."""
    if len(chain) < 2 or tuple(chain[-1]) != (key, False) or not built:
        return "rebuild"
    return "overlay" if tuple(built[0]) == (chain[-2][0], chain[0][0]) else "rebuild"
