"""The column schemas shown in the UI match the tables the migrations really create."""

import pytest

from resources.table_schemas import table_columns, table_schema
from resources.warehouse import Migration, WarehouseResource


def test_every_table_matches_duckdb(warehouse: WarehouseResource) -> None:
    parsed = table_columns()
    with warehouse.connection() as conn:
        rows = conn.execute(
            """
            SELECT c.table_name, c.column_name, c.data_type, c.is_nullable
            FROM information_schema.columns c
            JOIN information_schema.tables t USING (table_schema, table_name)
            WHERE c.table_schema = 'main' AND t.table_type = 'BASE TABLE'
              AND c.table_name <> 'schema_migrations'
            ORDER BY c.table_name, c.ordinal_position
            """
        ).fetchall()
    actual: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, data_type, nullable in rows:
        actual.setdefault(table, []).append((column, data_type, nullable == "YES"))

    assert set(parsed) == set(actual)
    for table, columns in parsed.items():
        shown = [(c.name, c.type.replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"),
                  c.constraints.nullable) for c in columns]  # fmt: skip
        assert shown == actual[table], table


def test_comments_become_column_descriptions() -> None:
    columns = {c.name: c for c in table_schema("sync_runs").columns}
    assert columns["status"].description == "'running' | 'success' | 'failed'"
    assert columns["error"].description is None
    assert not columns["key"].constraints.nullable  # PRIMARY KEY


def test_added_columns_and_nested_types() -> None:
    migrations = [
        Migration(
            "a", "CREATE TABLE t (\n  m MAP(VARCHAR, INTEGER), -- a map\n  PRIMARY KEY (m)\n);"
        ),
        Migration("b", "ALTER TABLE t ADD COLUMN note VARCHAR;"),
    ]
    [(name, columns)] = table_columns(migrations).items()
    assert name == "t"
    assert [(c.name, c.type, c.description) for c in columns] == [
        ("m", "MAP(VARCHAR, INTEGER)", "a map"),
        ("note", "VARCHAR", None),
    ]
    with pytest.raises(KeyError):
        table_schema("no_such_table")
