"""`hubsync export TABLE`: any warehouse table or view to stdout as JSON lines or CSV, written by
DuckDB; `hubsync export students`: every person of the graph as the connector's student JSON;
`hubsync export unsendable_persons`: the persons the HUB is not sent, with the reason."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal, TextIO
from zoneinfo import ZoneInfo

import duckdb

from assets.graph.students import UNSENDABLE_PERSONS_SQL, student_documents
from resources.warehouse import inflate, table_columns

ExportFormat = Literal["jsonl", "csv"]
_COPY_OPTIONS: dict[ExportFormat, str] = {"jsonl": "FORMAT json", "csv": "FORMAT csv, HEADER"}


def warehouse_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
        "UNION SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
        "ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def export_table(
    conn: duckdb.DuckDBPyConnection, table: str, fmt: ExportFormat, out: TextIO
) -> None:
    """Write ``table`` (which must exist) to ``out``. JSON columns stay JSON in JSON lines; a
    raw table's compressed page bodies (``body_zlib``) come out as ``body``, as received."""
    if table not in warehouse_tables(conn):
        raise ValueError(f"no table {table!r} in the warehouse")
    quoted = '"' + table.replace('"', '""') + '"'
    _export_query(conn, f"SELECT {_columns(conn, table)} FROM {quoted}", fmt, out)


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> str:
    """``*``, with a raw table's ``body_zlib`` (and ``body_bytes``) replaced by ``body``."""
    columns = table_columns(conn, table)
    if "body_zlib" not in columns:
        return "*"
    if not conn.execute(
        "SELECT 1 FROM duckdb_functions() WHERE function_name = 'hubsync_inflate'"
    ).fetchall():
        conn.create_function(  # NULL in, NULL out, without calling it
            "hubsync_inflate",
            inflate,
            [duckdb.sqltype("BLOB")],
            duckdb.sqltype("VARCHAR"),
        )
    inflated = "hubsync_inflate(body_zlib)::JSON"
    body = f"coalesce(body, {inflated})" if "body" in columns else inflated
    excluded = "body_zlib, body_bytes" + (", body" if "body" in columns else "")
    return f"* EXCLUDE ({excluded}), {body} AS body"


def export_unsendable_persons(
    conn: duckdb.DuckDBPyConnection, fmt: ExportFormat, out: TextIO
) -> None:
    """Write the persons the HUB is not sent, why, and their ids in each source."""
    _export_query(conn, UNSENDABLE_PERSONS_SQL, fmt, out)


def _export_query(
    conn: duckdb.DuckDBPyConnection, query: str, fmt: ExportFormat, out: TextIO
) -> None:
    with tempfile.TemporaryDirectory(prefix="hubsync-export-") as folder:
        target = Path(folder) / f"export.{fmt}"
        path = str(target).replace("'", "''")
        conn.execute(f"COPY ({query}) TO '{path}' ({_COPY_OPTIONS[fmt]})")
        with target.open(encoding="utf-8") as exported:
            shutil.copyfileobj(exported, out)


def export_students(
    conn: duckdb.DuckDBPyConnection, out: TextIO, *, co_base_url: str, zone: ZoneInfo
) -> int:
    """Write every person of the graph as one JSON line (``student_documents``); return how
    many were written."""
    written = 0
    for document in student_documents(conn, co_base_url=co_base_url, zone=zone):
        out.write(json.dumps(document, ensure_ascii=False) + "\n")
        written += 1
    return written
