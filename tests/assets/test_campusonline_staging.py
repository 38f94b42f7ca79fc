"""The staging screen (DuckDB) against the row models (pydantic): for every row, staging gives
what validating it alone with its model gives — the same typed values, or quarantine with the
same reason — and the rows CO really sends never need pydantic."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest
from pydantic import ValidationError

from assets.campusonline.staging import (
    RULES,
    FieldRule,
    field_rules,
    stage_sync,
    typed_row,
)
from resources.campusonline import SERVICES, CoRow, format_co_timestamp, parse_co_timestamp
from resources.campusonline.schema import CO_ROW_HASH_MIGRATION, RAW_TABLES, STAGING_TABLES
from resources.http import MAX_TEXT_CHARS
from resources.quarantine import validation_reason
from resources.warehouse import WarehouseResource, deflate
from tests.resources.test_campusonline import FULL_APPLICATION, FULL_STUDENT, FULL_STUDY

KEY = "full-20261204T020000Z"
VIENNA = ZoneInfo("Europe/Vienna")
BASE = {"students": FULL_STUDENT, "studies": FULL_STUDY, "applications": FULL_APPLICATION}
MISSING = object()  # the key left out of the row

AWKWARD: dict[str, list[Any]] = {
    "int": [0, -5, 2**63 - 1, 2**63, 1.0, 1.5, 1e3, "12", True, None, MISSING, {}, []],
    "str": [
        "", " ", "12", "ä😀\u00a0", "\\\"'", "x\ufffdy", "a" * MAX_TEXT_CHARS,
        "a" * (MAX_TEXT_CHARS + 1), "ä" * MAX_TEXT_CHARS,  # 10,000 characters, 20,000 bytes
        12, 1.5, True, None, MISSING, {"value": "x"}, ["x"],
    ],
    "date": [
        {"value": "2001-02-03"}, {"value": None}, {"value": "2001-02-30"}, {"value": "2001-2-3"},
        {"value": "0000-01-01"}, {"value": "2001-02-03T00:00:00"}, {"value": 0},
        {"value": 86400}, {"value": "2001-02-03", "extra": 1}, {}, None, MISSING,
        "2001-02-03", {"VALUE": "2001-02-03"},
    ],
    "timestamp": [
        "01.01.2026T00:00:00", "31.02.2026T10:00:00", "1.1.2026T10:00:00",
        "x01.01.2026T10:00:00", "01.01.2026T10:00:00x", "25.10.2026T02:30:00",
        "29.03.2026T02:30:00", "29.03.2026T03:00:00", "٠١.٠١.٢٠٢٦T10:00:00",
        "01.01.2026T24:00:00", "2026-01-01T10:00:00", 20260101, None, MISSING,
    ],
}  # fmt: skip
PATTERNED = ["25 - ausländische Reifeprüfung", "x - 25", "25-x", "١٢ - x", " 25 - x"]
NOT_ROWS = [[1], "row", None, 5, {}]


def _with(row: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    changed = {k: v for k, v in row.items() if k != name}
    if value is not MISSING:
        changed[name] = value
    return changed


def awkward_rows(code: str) -> Iterator[Any]:
    """The base row with each field in turn set to each awkward value of its kind; every row
    keeps an id of its own, so none is taken for a duplicate."""
    base, id_field = BASE[code], SERVICES[code].model.id_field
    ids = iter(range(1_000_000, 2_000_000))
    yield {**base, id_field: next(ids)}
    for rule in RULES[code]:
        values = AWKWARD[rule.kind] + (PATTERNED if rule.pattern else [])
        for value in values:
            row = _with(base, rule.name, value)
            if rule.name != id_field:
                row[id_field] = next(ids)
            yield row
    yield {**base, id_field: next(ids), "UNKNOWNFIELD": {"nested": [1]}}
    yield from NOT_ROWS


PAGE_ROWS = 100  # the awkward rows land on several pages, screened together


def land(
    conn: duckdb.DuckDBPyConnection, code: str, rows: list[Any], page_rows: int = PAGE_ROWS
) -> None:
    service = SERVICES[code]
    for page_nr, start in enumerate(range(0, len(rows), page_rows), start=1):
        page = rows[start : start + page_rows]
        body = json.dumps(
            {
                "type": "resources",
                "resource": [{"content": {"type": "x", service.row_key: r}} for r in page],
            }
        )
        conn.execute(
            f"INSERT INTO {RAW_TABLES[code]} (sync_key, request_key, page_nr, request_params, "
            "fetched_at, record_count, body_zlib, body_bytes) "
            "VALUES (?, ?, ?, '{}', now(), ?, ?, ?)",
            [KEY, f"{code}:active", page_nr, len(page), deflate(body.encode()), len(body)],
        )


def reference(model: type[CoRow], row: Any, zone: ZoneInfo) -> tuple[str, Any]:
    try:
        return "staged", typed_row(model.model_validate(row), zone)
    except (ValidationError, ValueError) as exc:
        return "quarantined", validation_reason(exc)


def staged_rows(conn: duckdb.DuckDBPyConnection, code: str) -> dict[int, dict[str, Any]]:
    columns = [rule.name for rule in RULES[code]]
    quoted = ", ".join(f'"{c}"' for c in columns)
    return {
        (page_nr - 1) * PAGE_ROWS + row_nr: dict(zip(columns, values, strict=True))
        for page_nr, row_nr, *values in conn.execute(
            f"SELECT page_nr, row_nr, {quoted} FROM {STAGING_TABLES[code]} WHERE sync_key = ?",
            [KEY],
        ).fetchall()
    }


def _canonical(row: Any) -> str:
    return json.dumps(row, sort_keys=True)


@pytest.mark.parametrize("code", list(SERVICES))
@pytest.mark.parametrize("memory_mb", [512, 0], ids=["one-document", "row-by-row"])
def test_staging_gives_what_the_row_model_gives_for_every_awkward_row(
    warehouse: WarehouseResource, code: str, memory_mb: int
) -> None:
    """Pages parsed as one document, and pages split into rows first (at memory_mb=0 every page
    is too large for one document), stage and quarantine alike."""
    rows = list(awkward_rows(code))
    model = SERVICES[code].model
    with warehouse.connection() as conn:
        land(conn, code, rows)
        counts = stage_sync(conn, KEY, VIENNA, memory_mb=memory_mb)[code]
        staged = staged_rows(conn, code)
        quarantined = sorted(
            (_canonical(json.loads(raw)), reason)
            for raw, reason in conn.execute(
                "SELECT raw, reason FROM quarantine WHERE sync_key = ? AND source = 'co'", [KEY]
            ).fetchall()
        )
    expected = [reference(model, row, VIENNA) for row in rows]
    expected_staged = {
        nr: values for nr, (kind, values) in enumerate(expected, start=1) if kind == "staged"
    }
    expected_quarantined = sorted(
        (_canonical(row), reason)
        for row, (kind, reason) in zip(rows, expected, strict=True)
        if kind == "quarantined"
    )
    assert staged == expected_staged
    assert quarantined == expected_quarantined
    assert counts.rows == len(expected_staged) and counts.quarantined == len(quarantined)
    assert 0 < counts.rows_validated_in_python < len(rows)  # both paths ran


def test_a_page_too_large_to_parse_as_one_document_is_staged_row_by_row(tmp_path: Path) -> None:
    """DuckDB needs about ten times a page's size to parse it as one document and cannot spill
    that: a large page (CO_PAGE_SIZE=40,000, or long rows) failed the sync with "Out of Memory"
    at the warehouse's memory setting."""
    id_field = SERVICES["students"].model.id_field
    rows = [{**FULL_STUDENT, id_field: nr} for nr in range(12_000)]  # one page of 26 MB
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"), memory_mb=256)
    with warehouse.connection() as conn:
        land(conn, "students", rows, page_rows=len(rows))
        with pytest.raises(duckdb.OutOfMemoryException):  # as one document, whatever it says
            stage_sync(conn, KEY, VIENNA, memory_mb=100_000)
        counts = stage_sync(conn, KEY, VIENNA, memory_mb=warehouse.memory_mb)["students"]
    assert (counts.rows, counts.quarantined) == (len(rows), 0)


@pytest.mark.parametrize("code", list(SERVICES))
def test_the_rows_co_sends_never_need_pydantic(warehouse: WarehouseResource, code: str) -> None:
    """Performance guard: a valid row the screen cannot pass costs 40x more (pydantic)."""
    id_field = SERVICES[code].model.id_field
    nullable = [r.name for r in RULES[code] if not r.required and r.kind != "date"]
    rows = [
        {**BASE[code], id_field: 1},
        {**_with(BASE[code], "SOURCE", "DMSView"), id_field: 2},
        {**{**BASE[code], **dict.fromkeys(nullable)}, id_field: 3},  # every optional one null
    ]
    with warehouse.connection() as conn:
        land(conn, code, rows)
        counts = stage_sync(conn, KEY, VIENNA)[code]
    assert (counts.rows, counts.quarantined, counts.rows_validated_in_python) == (3, 0, 0)


def _transition_stamps(zone: ZoneInfo) -> Iterator[str]:
    """CO wall-clock stamps every 10 minutes around each of the zone's offset changes,
    2020–2030: inside the spring gap and the autumn fold, and on either side."""
    instant = datetime(2020, 1, 1, tzinfo=UTC)
    while instant.year < 2031:
        after = instant + timedelta(hours=6)
        if instant.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            wall = instant.astimezone(zone).replace(tzinfo=None, minute=0, second=0)
            for step in range(0, 9 * 6):
                yield (wall + timedelta(minutes=10 * step)).strftime("%d.%m.%YT%H:%M:%S")
        instant = after


@pytest.mark.parametrize(
    "zone_name",
    ["Europe/Vienna", "America/New_York", "America/Sao_Paulo", "Australia/Lord_Howe", "UTC"],
)
def test_timestamps_convert_in_sql_as_parse_co_timestamp_does(
    warehouse: WarehouseResource, zone_name: str
) -> None:
    zone = ZoneInfo(zone_name)
    stamps = sorted(set(_transition_stamps(zone))) or ["01.01.2026T10:00:00"]
    rows = [{**FULL_STUDY, "STSTUDIUMNR": nr, "TIMESTAMP": s} for nr, s in enumerate(stamps, 1)]
    with warehouse.connection() as conn:
        land(conn, "studies", rows)
        counts = stage_sync(conn, KEY, zone)["studies"]
        staged = dict(
            conn.execute('SELECT STSTUDIUMNR, "TIMESTAMP" FROM stg_co_studies').fetchall()
        )
    assert counts.rows_validated_in_python == 0
    wrong = {
        stamp: staged[nr]
        for nr, stamp in enumerate(stamps, 1)
        if staged[nr] != parse_co_timestamp(stamp, zone)
    }
    assert wrong == {}
    assert format_co_timestamp(parse_co_timestamp(stamps[0], zone), zone)  # the format is CO's


def test_a_field_constraint_the_screen_does_not_know_is_refused() -> None:
    from pydantic import Field, StrictInt

    class Odd(CoRow):
        id_field = "NR"
        NR: StrictInt = Field(gt=0)

    with pytest.raises(TypeError, match=r"Odd\.NR"):
        field_rules(Odd)
    assert FieldRule("X", "int", True).sql_type == "BIGINT"


def test_the_row_hash_migration_hashes_rows_as_staging_does(warehouse: WarehouseResource) -> None:
    """Warehouses staged before keep comparing equal to the same rows staged after."""
    with warehouse.connection() as conn:
        for code in SERVICES:
            id_field = SERVICES[code].model.id_field
            land(conn, code, [{**BASE[code], id_field: nr} for nr in (1, 2)])
        stage_sync(conn, KEY, VIENNA)
        hashes = "SELECT row_hash FROM {} ORDER BY ALL"
        staged = {}
        for code in SERVICES:
            conn.execute(
                f"INSERT INTO co_{code} BY NAME SELECT * EXCLUDE (sync_key, request_key, "
                f"page_nr, row_nr), 'k' AS changed_in_sync FROM {STAGING_TABLES[code]}"
            )
            staged[code] = conn.execute(hashes.format(STAGING_TABLES[code])).fetchall()
            assert len(set(staged[code])) == 2
            for table in (STAGING_TABLES[code], f"co_{code}"):
                conn.execute(f"UPDATE {table} SET row_hash = 'md5 of the JSON, in Python'")
        conn.execute(CO_ROW_HASH_MIGRATION)
        for code in SERVICES:
            assert conn.execute(hashes.format(STAGING_TABLES[code])).fetchall() == staged[code]
            assert conn.execute(hashes.format(f"co_{code}")).fetchall() == staged[code]


def test_an_envelope_item_without_its_row_is_quarantined(warehouse: WarehouseResource) -> None:
    """``content`` without the row key: the row is missing, not the page unreadable."""
    items = [
        {"content": {"type": "x", "DMSStudies": {**FULL_STUDY, "STSTUDIUMNR": 1}}},
        {"content": {"type": "x"}},
        {"nocontent": True},
    ]
    body = json.dumps({"type": "resources", "resource": items})
    with warehouse.connection() as conn:
        conn.execute(
            "INSERT INTO raw_co_studies (sync_key, request_key, page_nr, request_params, "
            "fetched_at, record_count, body_zlib, body_bytes) "
            "VALUES (?, 'studies:active', 1, '{}', now(), 3, ?, ?)",
            [KEY, deflate(body.encode()), len(body)],
        )
        counts = stage_sync(conn, KEY, VIENNA)["studies"]
        reasons = conn.execute("SELECT reason FROM quarantine WHERE sync_key = ?", [KEY]).fetchall()
    assert (counts.rows, counts.quarantined) == (1, 2)
    assert all("valid dictionary" in reason for (reason,) in reasons)
