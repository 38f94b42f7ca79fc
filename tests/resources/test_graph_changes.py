"""The queue of changes awaiting the next hub_desired build (``graph_changes``)."""

from pathlib import Path

import pytest

from resources.graph_changes import REBUILD, note_changes, note_rebuild
from resources.warehouse import WarehouseResource


def test_a_new_warehouse_starts_with_a_rebuild_and_notes_stop_while_one_is_due(
    tmp_path: Path,
) -> None:
    with WarehouseResource(path=str(tmp_path / "w.duckdb")).connection() as conn:
        queue = "SELECT kind, id FROM graph_changes ORDER BY ALL"
        assert conn.execute(queue).fetchall() == [(REBUILD, "the change queue is new")]
        note_changes(conn, "co_student", "SELECT 1")  # the rebuild covers it
        assert conn.execute(queue).fetchall() == [(REBUILD, "the change queue is new")]

        conn.execute("DELETE FROM graph_changes")  # as a hub_desired build consumes it
        note_changes(conn, "co_student", "SELECT * FROM (VALUES (7), (7), (NULL), (8))")
        note_changes(conn, "co_student", "SELECT 8")  # noted twice, kept once
        assert conn.execute(queue).fetchall() == [("co_student", "7"), ("co_student", "8")]
        note_rebuild(conn, "a full sync")
        note_rebuild(conn, "a full sync")
        assert conn.execute(queue).fetchall()[-1] == (REBUILD, "a full sync")
        with pytest.raises(ValueError, match="unknown graph change kind 'student'"):
            note_changes(conn, "student", "SELECT 1")
