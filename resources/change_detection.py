"""Change detection, one formula for every source: a row's content hash in SQL."""

from collections.abc import Sequence


def row_hash_sql(columns: Sequence[str], table: str | None = None) -> str:
    """SQL of a row's content hash over ``columns`` (typed values, nulls included): equal
    hashes mean the row did not change. ``table`` qualifies the columns (``t.email``)."""
    prefix = f"{table}." if table else ""
    fields = ", ".join(f"{column} := {prefix}{column}" for column in columns)
    return f"md5(to_json(struct_pack({fields}))::VARCHAR)"
