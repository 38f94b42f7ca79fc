"""Staging CAMPUSonline rows: every row of a sync's raw pages, validated into ``stg_co_*``.

The row models of ``resources.campusonline`` decide what a valid row is. Running them row by
row in Python cost 9 s for the 79,297 rows of 30,000 students, so the work is split:

* **DuckDB screens** each page: it reads the rows out of the page's JSON, checks every field
  against a rule derived from its model field (JSON type, required, length, pattern, CO date
  and timestamp shapes, the text guard of ``reject_bad_text``) and types the rows that pass,
  TIMESTAMP converted from the CO server's wall clock to UTC as ``parse_co_timestamp`` does.
  The screen is conservative: it passes only rows the model certainly accepts, with the values
  the model gives them.
* **pydantic explains** the rest, row by row, as before: a row it accepts after all (an
  optional date left out, a digit outside ASCII) is staged with its typed values; a row it
  refuses goes to quarantine with its reason.

``tests/assets/test_campusonline_staging.py`` holds the two to that contract over a catalogue
of awkward rows. ``row_hash`` is computed in SQL over the typed content columns (without
``SOURCE`` and ``TIMESTAMP``), so a change in a field the models do not keep is no change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo

import annotated_types
import duckdb
import orjson
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from assets.campusonline.sync import CODES
from resources.campusonline import (
    CO_TIMESTAMP_FORMAT,
    SERVICES,
    CoDate,
    CoRow,
    CoService,
)
from resources.campusonline.schema import (
    RAW_TABLES,
    RECORD_TYPES,
    STAGING_TABLES,
    row_hash_expression,
)
from resources.http import MAX_TEXT_CHARS, MB, gc_paused, loads
from resources.quarantine import QUARANTINE_COLUMNS, quarantine, validation_reason
from resources.warehouse import DEFAULT_MEMORY_MB, raw_page_bytes

# the shapes both sides accept (DuckDB's strptime reads CO_TIMESTAMP_FORMAT as Python's does)
_TIMESTAMP_SHAPE = r"\d{2}\.\d{2}\.\d{4}T\d{2}:\d{2}:\d{2}"
_DATE_SHAPE = r"\d{4}-\d{2}-\d{2}"


# --------------------------------------------------------------------------------------------
# Field rules from the models


@dataclass(frozen=True)
class FieldRule:
    """What the screen checks for one model field."""

    name: str
    kind: Literal["int", "str", "date", "timestamp"]
    required: bool
    min_length: int = 0
    pattern: str | None = None

    @property
    def sql_type(self) -> str:
        return {"int": "BIGINT", "str": "VARCHAR", "date": "DATE", "timestamp": "TIMESTAMPTZ"}[
            self.kind
        ]


INT64 = (-(2**63), 2**63 - 1)  # what try_cast(... AS BIGINT) accepts


def _members(annotation: Any) -> list[Any]:
    """The annotation's types, unions opened (``int | None`` is ``[int, None]``)."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _constraints(annotation: Any) -> list[Any]:
    """The constraints inside ``Annotated[...]`` anywhere in the annotation."""
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        found = _constraints(base)
        for extra in extras:
            found += extra.metadata if isinstance(extra, FieldInfo) else [extra]
        return found
    return [c for arg in get_args(annotation) for c in _constraints(arg)]


def _kind(annotation: Any) -> Literal["int", "str", "date"]:
    types = set(_members(annotation)) - {type(None)}
    if types == {int}:
        return "int"
    if types == {str}:
        return "str"
    if types == {CoDate}:
        return "date"
    raise TypeError(f"no staging screen for a field of type {annotation}")


def field_rules(model: type[CoRow]) -> list[FieldRule]:
    """One rule per model field, in model order. Refuses constraints it cannot screen, so a new
    kind of field constraint is noticed here (by the tests) instead of passing unchecked."""
    rules = []
    for name, field in model.model_fields.items():
        kind: Literal["int", "str", "date", "timestamp"] = _kind(field.annotation)
        min_length, pattern = 0, None
        for item in [*field.metadata, *_constraints(field.annotation)]:
            if isinstance(item, annotated_types.MinLen):
                min_length = item.min_length
            elif getattr(item, "pattern", None) is not None:
                pattern = item.pattern
            elif kind == "int" and isinstance(item, annotated_types.Ge) and item.ge == INT64[0]:
                pass  # the screen's BIGINT cast checks both bounds
            elif kind == "int" and isinstance(item, annotated_types.Le) and item.le == INT64[1]:
                pass
            elif not getattr(item, "strict", False):
                raise TypeError(f"{model.__name__}.{name}: no staging screen for {item!r}")
        if name == "TIMESTAMP":
            kind = "timestamp"
        default_is_none = field.default is None or field.default == CoDate(value=None)
        if not field.is_required() and not default_is_none:
            raise TypeError(f"{model.__name__}.{name}: no staging screen for its default")
        rules.append(FieldRule(name, kind, field.is_required(), min_length, pattern))
    return rules


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _text_checks(value: str, rule: FieldRule) -> list[str]:
    checks = [
        f"NOT contains({value}, '\ufffd')",
        f"strlen({value}) <= {MAX_TEXT_CHARS}",  # bytes: never fewer than characters
    ]
    if rule.min_length:
        checks.append(f"length({value}) >= {rule.min_length}")
    if rule.pattern is not None:
        # RE2's \d is ASCII only, pydantic's Unicode: RE2 never matches more
        checks.append(f"regexp_matches({value}, {_quoted(rule.pattern)})")
    return checks


def _screen(rule: FieldRule) -> str:
    """SQL true when the field certainly passes its model field; the JSON value is ``f.<name>``."""
    field = f'f."{rule.name}"'
    value = f"({field}->>'$')"
    if rule.kind == "date":  # CoDate: an object with one key, value, a date or null
        date_value = f"({field}->>'$.value')"
        return (
            f"(json_type({field}) = 'OBJECT' AND json_keys({field}) = ['value'] AND "
            f"(json_type({field}, '$.value') = 'NULL' OR "
            f"(json_type({field}, '$.value') = 'VARCHAR' "
            f"AND regexp_full_match({date_value}, '{_DATE_SHAPE}') "
            f"AND try_cast({date_value} AS DATE) BETWEEN DATE '0001-01-01' AND DATE '9999-12-31')))"
        )
    if rule.kind == "int":
        typed = (
            f"(json_type({field}) IN ('BIGINT', 'UBIGINT') "
            f"AND try_cast({value} AS BIGINT) IS NOT NULL)"
        )
    else:
        checks = [f"json_type({field}) = 'VARCHAR'", *_text_checks(value, rule)]
        if rule.kind == "timestamp":
            checks += [
                f"regexp_full_match({value}, '{_TIMESTAMP_SHAPE}')",
                f"try_strptime({value}, '{CO_TIMESTAMP_FORMAT}') IS NOT NULL",
            ]
        typed = "(" + " AND ".join(checks) + ")"
    if rule.required:
        return typed
    return f"({field} IS NULL OR {typed})"  # missing and null both read as None


def _typed(rule: FieldRule) -> str:
    field = f'f."{rule.name}"'
    if rule.kind == "int":
        value = f"try_cast({field}->>'$' AS BIGINT)"
    elif rule.kind == "str":
        value = f"({field}->>'$')"
    elif rule.kind == "date":
        value = f"try_cast({field}->>'$.value' AS DATE)"
    else:  # the CO server's wall clock; DuckDB resolves gaps and folds as parse_co_timestamp
        value = f"timezone($zone, try_strptime({field}->>'$', '{CO_TIMESTAMP_FORMAT}'))"
    return f'{value} AS "{rule.name}"'


RULES = {code: field_rules(SERVICES[code].model) for code in CODES}


def _items_sql(service: CoService, row_shape: Any, pages: str = "TRUE") -> str:
    """The rows of the pages in ``co_page`` (those matching ``pages``), one per row: request_key,
    page_nr, row_nr and the row as ``json_transform`` reads it with ``row_shape``. A page is one
    JSON document as received (``co_page``), or its rows one by one (``co_line``, see
    ``row_lines``)."""
    document = _quoted(json.dumps({"resource": [{"content": {service.row_key: row_shape}}]}))
    row = _quoted(json.dumps(row_shape))
    return f"""
        SELECT request_key, page_nr, row_nr, item.content.{service.row_key} AS row
        FROM (SELECT request_key, page_nr,
                     unnest(doc.resource) AS item, generate_subscripts(doc.resource, 1) AS row_nr
              FROM (SELECT request_key, page_nr, json_transform(decode(body), {document}) AS doc
                    FROM co_page WHERE {pages}))
        UNION ALL
        SELECT request_key, page_nr, row_nr, json_transform(line, {row}) AS row
        FROM co_line WHERE {pages}
    """


def row_lines(service: CoService, body: bytes) -> list[str]:
    """A raw page's rows as JSON texts, in page order (``null`` where a resource has no row under
    the service's key), for a page too large to parse as one document: DuckDB parses each line
    on its own, in vectors of a few thousand rows, however large the page. Costs about 15 ms
    per MB in Python, so only such pages take this way."""
    with gc_paused():
        payload = loads(body)
        resources = payload.get("resource") if isinstance(payload, dict) else None
        lines = []
        for item in resources if isinstance(resources, list) else []:
            content = item.get("content") if isinstance(item, dict) else None
            row = content.get(service.row_key) if isinstance(content, dict) else None
            lines.append(_json_text(row))
        return lines


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits, which json keeps exactly
        return json.dumps(value, ensure_ascii=False)


def _screen_sql(service: CoService) -> str:
    """The rows of ``_items_sql`` as request_key, page_nr, row_nr, ``passed`` and the typed
    columns. Each field is read as its JSON text (``f.<name>``); a row that is no object
    has every field NULL, and every model has a required field."""
    fields = {rule.name: "JSON" for rule in RULES[service.code]}
    screens = " AND ".join(_screen(rule) for rule in RULES[service.code])
    typed = ", ".join(_typed(rule) for rule in RULES[service.code])
    return f"""
        WITH rows AS ({_items_sql(service, fields)})
        SELECT request_key, page_nr, row_nr, coalesce({screens}, false) AS passed, {typed}
        FROM (SELECT request_key, page_nr, row_nr, row AS f FROM rows)
    """


def _unscreened_rows_sql(service: CoService) -> str:
    """(request_key, page_nr, row_nr, JSON text) of the rows the screen did not pass (one more
    parse of their pages, or of their lines, however many rows)."""
    failed = "FROM co_screened WHERE NOT passed"
    pages = f"(request_key, page_nr) IN (SELECT (request_key, page_nr) {failed})"
    return f"""
        SELECT request_key, page_nr, row_nr, row::VARCHAR
        FROM ({_items_sql(service, "JSON", pages)})
        WHERE (request_key, page_nr, row_nr) IN (SELECT (request_key, page_nr, row_nr) {failed})
        ORDER BY request_key, page_nr, row_nr
    """


# --------------------------------------------------------------------------------------------
# Duplicates


# Which read of one sync a staged row belongs to: within one read an id must occur once.
_READ = (
    "CASE WHEN request_key LIKE '%:person:%' THEN 'person' "
    "WHEN request_key LIKE '%:delta' THEN 'delta' ELSE 'snapshot' END"
)
DUPLICATE_REASON = "duplicate"


def quarantine_duplicates(conn: duckdb.DuckDBPyConnection, key: str, service: CoService) -> int:
    """Quarantine every copy of an id that one read of the sync (the full snapshot, the delta,
    the per-student re-reads) returned more than once with different content, and take them
    out of staging; return how many rows went. Picking one copy by page order let a second
    ``STPERSONNR`` row ("Impostor", born 1970-01-01) replace the student; instead the id keeps
    its current record (``_rebuild_table``) until CO answers unambiguously. Identical copies
    are one record."""
    table, id_field = STAGING_TABLES[service.code], service.model.id_field
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE co_duplicates AS
        SELECT {id_field} AS id, {_READ} AS read, count(*) AS copies FROM {table}
        WHERE sync_key = ? GROUP BY ALL HAVING count(DISTINCT row_hash) > 1
        """,
        [key],
    )
    (removed,) = conn.execute(
        f"""
        SELECT count(*) FROM {table} s JOIN co_duplicates d
        ON d.id = s.{id_field} AND d.read = ({_READ}) WHERE s.sync_key = ?
        """,
        [key],
    ).fetchone() or (0,)
    if not removed:
        return 0
    conn.execute(
        f"""
        INSERT INTO quarantine ({QUARANTINE_COLUMNS})
        SELECT 'co', ?, s.{id_field}::VARCHAR,
               '{DUPLICATE_REASON} {id_field} ' || s.{id_field} || ': ' || d.copies
                   || ' different rows in one ' || d.read || ' read; all quarantined, the '
                   || 'current record is kept',
               ?, to_json(s)
        FROM {table} s JOIN co_duplicates d ON d.id = s.{id_field} AND d.read = ({_READ})
        WHERE s.sync_key = ?
        """,
        [RECORD_TYPES[service.code], key, key],
    )
    conn.execute(
        f"""
        DELETE FROM {table} s USING co_duplicates d
        WHERE s.sync_key = ? AND d.id = s.{id_field} AND d.read = ({_READ})
        """,
        [key],
    )
    return int(removed)


# --------------------------------------------------------------------------------------------
# The Python path: pydantic explains the rows the screen did not pass


def typed_row(model: CoRow, zone: ZoneInfo) -> dict[str, Any]:
    """The model's fields as table values: dates unwrapped, TIMESTAMP as UTC."""
    values: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        values[name] = value.value if isinstance(value, CoDate) else value
    values["TIMESTAMP"] = model.timestamp(zone)
    return values


@dataclass
class StageCounts:
    rows: int = 0
    quarantined: int = 0
    rows_validated_in_python: int = 0  # rows the screen left to pydantic (staged or quarantined)


STAGE_BATCH_BYTES = 16_000_000  # pages screened together, up to about this much JSON
# DuckDB needs about ten times a page's size to parse it as one JSON document (a 36 MB page of
# 20,000 students: between 350 and 400 MB), and cannot spill that to disk: a page beyond
# memory / DOCUMENT_PARSE_FACTOR is split into rows first (``row_lines``).
DOCUMENT_PARSE_FACTOR = 12
LINES_PER_INSERT = 2048


def stage_sync(
    conn: duckdb.DuckDBPyConnection,
    key: str,
    zone: ZoneInfo,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> dict[str, StageCounts]:
    """Validate every row of the key's raw pages into ``stg_co_*``; quarantine the bad ones.
    ``memory_mb``: what DuckDB may hold (HUBSYNC_WAREHOUSE_MEMORY_MB)."""
    conn.execute("DELETE FROM quarantine WHERE source = 'co' AND sync_key = ?", [key])
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE co_page (request_key VARCHAR, page_nr INTEGER, body BLOB)"
    )
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE co_line "
        "(request_key VARCHAR, page_nr INTEGER, row_nr INTEGER, line VARCHAR)"
    )
    counts = {}
    for code in CODES:
        service = SERVICES[code]
        conn.execute(f"DELETE FROM {STAGING_TABLES[code]} WHERE sync_key = ?", [key])
        validated_in_python = sum(
            _stage_pages(conn, key, service, zone, batch, memory_mb * MB)
            for batch in _batches(raw_page_bytes(conn, RAW_TABLES[code], key))
        )
        quarantine_duplicates(conn, key, service)
        rows, quarantined = conn.execute(
            f"""
            SELECT (SELECT count(*) FROM {STAGING_TABLES[code]} WHERE sync_key = $key),
                   (SELECT count(*) FROM quarantine WHERE source = 'co' AND sync_key = $key
                    AND record_type = $record_type)
            """,
            {"key": key, "record_type": RECORD_TYPES[code]},
        ).fetchall()[0]
        counts[code] = StageCounts(int(rows), int(quarantined), validated_in_python)
    conn.execute("DROP TABLE co_page")
    conn.execute("DROP TABLE co_line")
    return counts


Page = tuple[str, int, bytes]  # request_key, page_nr, body


def _batches(pages: Iterable[Page]) -> Iterator[list[Page]]:
    """Pages in groups of about STAGE_BATCH_BYTES: an incremental sync's hundred small pages
    (one per re-read student) in one screen, since each screen costs some 30 ms to plan; a full
    sync's pages of 20,000 rows one or two at a time, which keeps memory flat."""
    batch: list[Page] = []
    size = 0
    for page in pages:
        batch.append(page)
        size += len(page[2])
        if size >= STAGE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _stage_pages(
    conn: duckdb.DuckDBPyConnection,
    key: str,
    service: CoService,
    zone: ZoneInfo,
    pages: list[Page],
    memory_bytes: int,
) -> int:
    """Screen pages in DuckDB, stage what passed and let pydantic explain the rest; return how
    many rows it explained."""
    conn.execute("DELETE FROM co_page")
    conn.execute("DELETE FROM co_line")
    for request_key, page_nr, body in pages:
        if len(body) * DOCUMENT_PARSE_FACTOR > memory_bytes:
            lines = row_lines(service, body)
            for start in range(0, len(lines), LINES_PER_INSERT):
                conn.execute(
                    "INSERT INTO co_line SELECT $key, $page, $start + "
                    "generate_subscripts($lines, 1), unnest($lines)",
                    {
                        "key": request_key,
                        "page": page_nr,
                        "start": start,
                        "lines": lines[start : start + LINES_PER_INSERT],
                    },
                )
        else:
            conn.execute("INSERT INTO co_page VALUES (?, ?, ?)", [request_key, page_nr, body])
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE co_screened AS {_screen_sql(service)}", {"zone": zone.key}
    )
    columns = ", ".join(f'"{rule.name}"' for rule in RULES[service.code])
    staged_from = (
        f"INSERT INTO {STAGING_TABLES[service.code]} "
        f"(sync_key, request_key, page_nr, row_nr, row_hash, {columns}) "
        f"SELECT $key, request_key, page_nr, row_nr, {row_hash_expression(service.code)}, "
        f"{columns} FROM"
    )
    conn.execute(f"{staged_from} co_screened WHERE passed", {"key": key})
    unscreened = conn.execute(_unscreened_rows_sql(service)).fetchall()
    conn.execute("DROP TABLE co_screened")
    accepted = _explain(conn, key, service, zone, unscreened)
    if accepted:
        conn.execute(_explained_table_sql(service))
        placeholders = ", ".join("?" for _ in range(3 + len(RULES[service.code])))
        conn.executemany(f"INSERT INTO co_explained VALUES ({placeholders})", accepted)
        conn.execute(f"{staged_from} co_explained", {"key": key})
        conn.execute("DROP TABLE co_explained")
    return len(unscreened)


def _explained_table_sql(service: CoService) -> str:
    typed = ", ".join(f'"{rule.name}" {rule.sql_type}' for rule in RULES[service.code])
    return (
        "CREATE OR REPLACE TEMP TABLE co_explained "
        f"(request_key VARCHAR, page_nr INTEGER, row_nr INTEGER, {typed})"
    )


def _explain(
    conn: duckdb.DuckDBPyConnection,
    key: str,
    service: CoService,
    zone: ZoneInfo,
    rows: list[tuple[str, int, int, str | None]],
) -> list[list[Any]]:
    """Validate the rows the screen did not pass with their model: quarantine the refused ones
    with the reason; return the accepted ones as staging values."""
    accepted: list[list[Any]] = []
    for request_key, page_nr, row_nr, row_json in rows:
        row = None if row_json is None else loads(row_json)
        try:
            model = service.model.model_validate(row)
            values = typed_row(model, zone)
        except (ValidationError, ValueError) as exc:
            record_id = row.get(service.model.id_field) if isinstance(row, dict) else None
            reason = validation_reason(exc)
            raw = row_json if row_json is not None else "null"
            key_text = None if record_id is None else str(record_id)
            quarantine(conn, "co", key, RECORD_TYPES[service.code], key_text, reason, raw)
            continue
        accepted.append(
            [request_key, page_nr, row_nr, *(values[rule.name] for rule in RULES[service.code])]
        )
    return accepted
