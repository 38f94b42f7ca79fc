"""`hubsync export students` after a real sync: every person of the graph, as the connector's
student JSON plus their Stud.IP courses and LMS registrations, checked against the world."""

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import date

import pytest

from assets.campusonline.connector_json import STUDENT_KEYS
from cli.main import main
from sandbox.expected import expected_hub_state
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox(port_base=0, world=World(31, 60, today=date(2026, 11, 23))) as sb:
        yield sb


@pytest.fixture(scope="module")
def synced(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a warehouse that synced everything once."""
    env = {**sandbox.env, "HUBSYNC_WAREHOUSE": str(tmp_path_factory.mktemp("w") / "w.duckdb")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(["sync"]) == 0
    return env


@pytest.fixture(scope="module")
def exported(synced: dict[str, str]) -> Iterator[dict[str, dict]]:
    """Export the synced warehouse; returns the documents by person key."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in synced.items():
            patch.setenv(name, value)
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["export", "students"]) == 0
    documents = [json.loads(line) for line in out.getvalue().splitlines()]
    yield {d["personKey"]: d for d in documents}


def test_every_person_of_the_graph_is_exported_once(
    sandbox: Sandbox, exported: dict[str, dict]
) -> None:
    expected = expected_hub_state(sandbox.world)
    assert set(exported) == set(expected.persons)
    for key, document in exported.items():
        person = expected.persons[key]
        systems = {link["system"]: link["sourceId"] for link in document["links"]}
        assert systems.get("co") == (str(person.co.stpersonnr) if person.co else None)
        assert systems.get("studip") == (person.studip.user_id if person.studip else None)
        assert systems.get("lms") == (person.lms.login if person.lms else None)
        assert list(document)[:3] == ["personKey", "links", "id"]
        assert list(document)[2:-2] == list(STUDENT_KEYS)


def test_co_students_carry_the_connector_json_with_studies_and_applications(
    sandbox: Sandbox, exported: dict[str, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    world = sandbox.world
    student = next(
        s
        for s in world.co_students.values()
        if world.studies_by_person.get(s.stpersonnr)
        and world.applications_by_person.get(s.stpersonnr)
    )
    document = exported[f"co:{student.stpersonnr}"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in sandbox.env.items():
            patch.setenv(name, value)
        capsys.readouterr()
        assert main(["sync-one", str(student.stpersonnr)]) == 0
        from_the_api = json.loads(capsys.readouterr().out)
    # the same connector JSON, whether built from the API's rows or from the warehouse; only
    # the sync time differs: the sync read CO's view, sync-one the live rows after it
    assert document["syncDateTime"] <= from_the_api.pop("syncDateTime")
    assert {k: document[k] for k in STUDENT_KEYS if k != "syncDateTime"} == from_the_api
    assert {s["id"] for s in document["studies"]} == {
        str(nr) for nr in world.studies_by_person[student.stpersonnr]
    }


def test_courses_and_registrations_are_the_persons_own(
    sandbox: Sandbox, exported: dict[str, dict]
) -> None:
    world = sandbox.world
    reached = expected_hub_state(world).reached_courses
    with_courses = with_registrations = 0
    for document in exported.values():
        systems = {link["system"]: link["sourceId"] for link in document["links"]}
        user_id, login = systems.get("studip"), systems.get("lms")
        courses = {c["id"]: c["status"] for c in document["courses"]}
        memberships = world.user_courses.get(user_id, set()) & reached if user_id else set()
        assert courses == {course: world.memberships[course][user_id] for course in memberships}
        registrations = {r["id"]: r["status"] for r in document["registrations"]}
        assert set(registrations) == {
            r.registration_id for r in world.lms_registrations.values() if r.login == login
        }
        assert set(registrations.values()) <= {"Pending", "Active", "Completed"}
        with_courses += bool(courses)
        with_registrations += bool(registrations)
    assert with_courses > 10 and with_registrations > 5  # the world is rich enough to test


@pytest.mark.parametrize("table", ["raw_co_students", "raw_studip_listing_pages"])
def test_a_compressed_raw_table_exports_its_bodies_as_json(
    synced: dict[str, str], table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAMPUSonline's and the Stud.IP listing's pages are stored zlib-compressed; an export
    gives each page's body back as the JSON that was received."""
    for name, value in synced.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["export", table]) == 0
    pages = [json.loads(line) for line in out.getvalue().splitlines()]
    assert pages and all(isinstance(page["body"], dict) for page in pages)
    assert not any("body_zlib" in page or "body_bytes" in page for page in pages)
    key = "resource" if table == "raw_co_students" else "data"
    assert all(key in page["body"] for page in pages)
