"""`hubsync export TABLE`: any warehouse table to stdout as JSON lines or CSV, written by DuckDB."""

import shutil
import tempfile
from pathlib import Path
from typing import Literal, TextIO

import duckdb

ExportFormat = Literal["jsonl", "csv"]
_COPY_OPTIONS: dict[ExportFormat, str] = {"jsonl": "FORMAT json", "csv": "FORMAT csv, HEADER"}


def warehouse_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY table_name"
    ).fetchall()
    return [name for (name,) in rows]


def export_table(
    conn: duckdb.DuckDBPyConnection, table: str, fmt: ExportFormat, out: TextIO
) -> None:
    """Write ``table`` (which must exist) to ``out``. JSON columns stay JSON in JSON lines."""
    if table not in warehouse_tables(conn):
        raise ValueError(f"no table {table!r} in the warehouse")
    quoted = '"' + table.replace('"', '""') + '"'
    with tempfile.TemporaryDirectory(prefix="hubsync-export-") as folder:
        target = Path(folder) / f"export.{fmt}"
        path = str(target).replace("'", "''")
        conn.execute(f"COPY (SELECT * FROM {quoted}) TO '{path}' ({_COPY_OPTIONS[fmt]})")
        with target.open(encoding="utf-8") as exported:
            shutil.copyfileobj(exported, out)
