"""The CAMPUSonline commands against the sandbox: show-*, sync-one and sync --source co."""

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from cli.main import main
from resources.settings import load_settings
from resources.warehouse import WarehouseResource
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.assets.test_campusonline import VIEW_PERIOD_S
from tests.assets.test_campusonline_json import STUDENT_KEYS


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    with running_sandbox(port_base=0, world=World(21, 60, today=date(2026, 11, 23))) as sb:
        for name, value in sb.env.items():
            monkeypatch.setenv(name, value)
        yield sb


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def a_student(sb: Sandbox) -> tuple[int, str, str]:
    with sb.world.lock:
        student = next(
            s
            for s in sb.world.co_students.values()
            if sb.world.studies_by_person.get(s.stpersonnr)
            and sb.world.applications_by_person.get(s.stpersonnr)
        )
        return student.stpersonnr, student.ident_obf, sb.world.persons[student.pid].family


def test_show_student_prints_the_row_as_a_table(
    capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    person, ident, family = a_student(sandbox)
    for student_id in (ident, str(person)):
        code, out, _ = run(capsys, "show-student", student_id)
        assert code == 0
        lines = out.splitlines()
        assert any(line.startswith("| FAMILYNAME ") and family in line for line in lines)
        assert any(line.startswith("| STPERSONNR ") and str(person) in line for line in lines)
        assert any(line.startswith("| BIRTHDATE ") for line in lines)


def test_show_studies_and_applications(
    capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    person, ident, _ = a_student(sandbox)
    code, out, _ = run(capsys, "show-studies", ident)
    assert code == 0
    studies = len(sandbox.world.studies_by_person[person])
    header = out.splitlines()[1]
    assert header.split("|")[1].strip() == "field"
    assert len(header.split("|")) - 3 == studies  # one column per study
    assert "| STUDYKEY " in out
    code, out, _ = run(capsys, "show-applications", str(person))
    assert code == 0 and "| APPLICANTSTUDYKEY " in out


@pytest.mark.parametrize(
    "command", ["show-student", "show-studies", "show-applications", "sync-one"]
)
def test_unknown_ids_exit_1(
    capsys: pytest.CaptureFixture[str], sandbox: Sandbox, command: str
) -> None:
    code, out, err = run(capsys, command, "999999999")
    assert code == 1
    assert out == ""
    assert "student data not found" in err


def _cursor(conn: Any) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM co_sync_cursor ORDER BY sync_key").fetchall()


def test_sync_one_prints_the_connector_json_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    code, out, _ = run(capsys, "sync", "--source", "co")
    assert code == 0
    assert "no successful full sync yet, so this one is full" in out
    assert "co_raw_pages" in out and "co_current_state" in out and "succeeded" in out
    assert "{" not in out  # a summary, no JSON
    warehouse = WarehouseResource(path=str(load_settings().warehouse_path))
    with warehouse.connection() as conn:
        cursor_before = _cursor(conn)

    person, ident, family = a_student(sandbox)
    code, out, _ = run(capsys, "sync-one", ident)
    assert code == 0
    document = json.loads(out)
    assert list(document) == STUDENT_KEYS
    assert document["id"] == str(person) and document["familyName"] == family
    assert {s["id"] for s in document["studies"]} == {
        str(nr) for nr in sandbox.world.studies_by_person[person]
    }
    assert len(document["applications"]) == len(sandbox.world.applications_by_person[person])
    with warehouse.connection() as conn:
        assert _cursor(conn) == cursor_before, "a look at one student changes no sync state"

    code, out, _ = run(capsys, "sync", "--source", "co")
    assert code == 0
    assert "(incremental) succeeded" in out


def test_a_change_seen_by_sync_one_still_reaches_the_warehouse(
    capsys: pytest.CaptureFixture[str], sandbox: Sandbox
) -> None:
    """sync-one used to record the student's live rows in the cursor. When it ran after the view
    refresh that carried a change, the next incremental sync took the change's view row for
    outdated (not newer than the live row), neither re-read nor applied it, and the warehouse
    kept the old e-mail until the next full sync."""
    assert run(capsys, "sync", "--source", "co")[0] == 0
    person, ident, _ = a_student(sandbox)
    world = sandbox.world
    with world.lock:
        student = world.co_students[person]
        student.email_tu = f"changed.{person}@student.tu-sandbox.at"
        student.modified_at = world.clock.now()
    now = world.clock.now().timestamp()
    world.clock.advance(VIEW_PERIOD_S - now % VIEW_PERIOD_S + 1)  # the view has the change
    assert run(capsys, "sync-one", ident)[0] == 0
    world.clock.advance(60)  # the incremental sync runs before the next refresh

    code, out, _ = run(capsys, "sync", "--source", "co")
    assert code == 0 and "(incremental) succeeded" in out
    warehouse = WarehouseResource(path=str(load_settings().warehouse_path))
    with warehouse.connection() as conn:
        (email,) = conn.execute(
            "SELECT EMAILADDRESSTU FROM co_students WHERE STPERSONNR = ?", [person]
        ).fetchone()
    assert email == f"changed.{person}@student.tu-sandbox.at"
