"""Column schemas of the warehouse tables, read from the migrations' DDL (no database needed).

The Dagster UI shows them on the assets that write those tables (``dagster/column_schema``), with
the DDL's ``--`` comments as column descriptions. Only the shapes the migrations use are parsed:
``CREATE TABLE name (column TYPE ..., PRIMARY KEY (...))``,
``ALTER TABLE name ADD COLUMN column TYPE``, ``ALTER TABLE name ALTER COLUMN column DROP NOT
NULL`` and ``ALTER TABLE name RENAME TO new_name``.
"""

import re
from collections.abc import Iterable, Iterator
from functools import cache

import dagster as dg

from resources.migrations import Migration
from resources.warehouse import all_migrations

_CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\(", re.I)
_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+([^;,]+)", re.I
)
_DROP_NOT_NULL = re.compile(
    r"ALTER\s+TABLE\s+(\w+)\s+ALTER\s+(?:COLUMN\s+)?(\w+)\s+DROP\s+NOT\s+NULL", re.I
)
_RENAME = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+RENAME\s+TO\s+(\w+)", re.I)
_CONSTRAINTS = ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT")
_MODIFIERS = re.compile(
    r"\s+(NOT\s+NULL|NULL|PRIMARY\s+KEY|UNIQUE|DEFAULT|CHECK|REFERENCES)\b.*", re.I
)


def _table_body(sql: str, start: int) -> tuple[str, int]:
    """The text between the parenthesis opened just before ``start`` and its match."""
    depth, position = 1, start
    while depth and position < len(sql):
        char = sql[position]
        if char == "-" and sql.startswith("--", position):  # a comment may hold parentheses
            position = sql.find("\n", position)
            position = len(sql) if position < 0 else position
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        position += 1
    return sql[start : position - 1], position


def _entries(body: str) -> Iterator[tuple[str, str]]:
    """(definition, comment) per top-level comma-separated entry; a ``--`` comment after an
    entry's comma belongs to that entry."""
    entries: list[list[str]] = [["", ""]]
    depth = 0
    for line in body.splitlines():
        code, _, comment = line.partition("--")
        for char in code:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                entries.append(["", ""])
            else:
                entries[-1][0] += char
        if comment.strip():
            target = entries[-2] if not entries[-1][0].strip() and len(entries) > 1 else entries[-1]
            target[1] = (target[1] + " " + comment.strip()).strip()
        entries[-1][0] += " "
    for definition, comment in entries:
        if definition.strip():
            yield " ".join(definition.split()), comment


def _column(definition: str, comment: str) -> dg.TableColumn | None:
    name, _, rest = definition.partition(" ")
    if name.upper() in _CONSTRAINTS or not rest:
        return None
    modifiers = rest.upper()
    return dg.TableColumn(
        name=name.strip('"'),
        type=_MODIFIERS.sub("", rest).strip(),
        description=comment or None,
        constraints=dg.TableColumnConstraints(
            nullable="NOT NULL" not in modifiers and "PRIMARY KEY" not in modifiers
        ),
    )


def table_columns(migrations: Iterable[Migration] | None = None) -> dict[str, list[dg.TableColumn]]:
    """Columns of every table the migrations (default: all) create, in order, with later added
    columns."""
    tables: dict[str, list[dg.TableColumn]] = {}
    for migration in all_migrations() if migrations is None else migrations:
        sql = migration.sql
        for match in _CREATE.finditer(sql):
            body, _ = _table_body(sql, match.end())
            columns = (_column(d, c) for d, c in _entries(body))
            tables[match.group(1)] = [c for c in columns if c is not None]
        for match in _ADD_COLUMN.finditer(sql):
            column = _column(f"{match.group(2)} {match.group(3).strip()}", "")
            if column is not None and match.group(1) in tables:
                tables[match.group(1)].append(column)
        for match in _DROP_NOT_NULL.finditer(sql):
            table, name = match.group(1), match.group(2)
            tables[table] = [
                dg.TableColumn(
                    name=column.name,
                    type=column.type,
                    description=column.description,
                    constraints=dg.TableColumnConstraints(nullable=True),
                )
                if column.name == name
                else column
                for column in tables.get(table, [])
            ]
        for match in _RENAME.finditer(sql):
            if match.group(1) in tables:
                tables[match.group(2)] = tables.pop(match.group(1))
    return tables


@cache
def migrated_table_columns() -> dict[str, list[dg.TableColumn]]:
    """``table_columns()`` of all migrations, parsed once per process."""
    return table_columns()


def table_schema(table: str) -> dg.TableSchema:
    """The column schema of a warehouse table; ``KeyError`` if no migration creates it."""
    return dg.TableSchema(columns=migrated_table_columns()[table])
