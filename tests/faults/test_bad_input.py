"""Bad input from the sources: malformed records are quarantined, a page that is not JSON fails
its source's step.

The sandbox serves each source's records through a filter (``tests/faults/corrupt.py``) that
damages one record per kind: missing id, id of the wrong type, broken date, unknown enum value,
oversized string, invalid UTF-8 bytes. The sync must succeed, with each damaged record in
``quarantine`` (with a reason naming the field) and counted in the sync's summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date

import duckdb
import pytest

from sandbox.http import Response
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.faults.corrupt import RecordCorrupter, not_json
from tests.faults.support import SyncHarness
from tests.instances import ephemeral_instance

# Where each source's damaged records come from: CO's students, the LMS's registrations, and
# Stud.IP users read one by one (not the API account or the crawl's seed users).
CORRUPTED_PATHS = {"co": "dmsstudents", "lms": "", "studip": "/user/"}
# The field a reason must name, per kind (None: the id itself is broken, so no record key).
REASON_FIELD = {
    "co": {"broken date": "BIRTHDATE", "oversized string": "FAMILYNAME", "bad utf-8": "FAMILYNAME"},
    "lms": {
        "broken date": "RegistrationDate",
        "unknown enum": "RegistrationStatus",
        "oversized string": "CourseCode",
        "bad utf-8": "CourseCode",
    },
    "studip": {"unknown enum": "perms", "oversized string": "username", "bad utf-8": "username"},
}
# CO's GENDERKEY is not a closed set hubsync relies on (CO installations add keys), so a value
# the sandbox never serves is kept, not quarantined.
ACCEPTED = {("co", "unknown enum")}
ID_KINDS = ("missing id", "wrong type")
# Pages that are not JSON: which request gets them, and the raw tables that must stay empty.
NOT_JSON_PATHS = {"co": "dmsstudies", "lms": "getcompletedregistrationdata", "studip": "/courses"}
RAW_TABLES = {
    "co": ("raw_co_students", "raw_co_studies", "raw_co_applications"),
    "lms": ("raw_lms_active_registrations", "raw_lms_completed_registrations"),
    "studip": ("raw_studip_pages",),
}
STEPS = {"co": "co_raw_pages", "lms": "lms_registration_pages", "studip": "studip_raw_pages"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncHarness]:
    world = World(seed=61, students=30, today=date(2026, 11, 23))
    folder = tmp_path_factory.mktemp("bad_input")
    options = {"hub": {"processing_delay_ms": 0}}
    with (
        running_sandbox(port_base=0, world=world, options=options) as sandbox,
        ephemeral_instance() as instance,
    ):
        yield SyncHarness(sandbox, folder / "w.duckdb", instance)


def _query(harness: SyncHarness, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(harness.warehouse), read_only=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_malformed_records_are_quarantined_with_reasons_and_the_rest_syncs(
    harness: SyncHarness,
) -> None:
    corrupters = {s: RecordCorrupter(s, path) for s, path in CORRUPTED_PATHS.items()}
    for source, corrupter in corrupters.items():
        harness.sandbox.servers[source].add_response_filter(corrupter)
    try:
        outcome = harness.sync("full")
    finally:
        for source in corrupters:
            harness.sandbox.servers[source].clear_request_hooks()
    assert outcome.success, outcome.errors

    rows = _query(
        harness,
        "SELECT source, record_key, reason FROM quarantine WHERE sync_key = ?",
        outcome.key,
    )
    for source, corrupter in corrupters.items():
        planted = set(corrupter.damaged.values())
        assert set(ID_KINDS) | {"oversized string", "bad utf-8"} <= planted, (source, planted)
        reasons = {key: reason for s, key, reason in rows if s == source}
        keyless = [reason for s, key, reason in rows if s == source and key is None]
        for record_id, kind in corrupter.damaged.items():
            if kind in ID_KINDS:
                continue
            if (source, kind) in ACCEPTED:
                assert record_id not in reasons, (source, kind)
                continue
            assert record_id in reasons, f"{source}: the record with {kind} was not quarantined"
            assert REASON_FIELD[source][kind] in reasons[record_id], reasons[record_id]
        # a record whose id is missing or not an id is quarantined without a usable key
        assert sum(1 for r in rows if r[0] == source and r[1] in (None, "{'not': 'an id'}")) >= 2
        assert all("user_id" in r or "STPERSONNR" in r or "RegistrationId" in r for r in keyless)

    (summary,) = _query(harness, "SELECT summary FROM sync_runs WHERE key = ?", outcome.key)[0]
    assert json.loads(summary)["quarantined"] == len(rows)
    assert harness.sandbox.hub.state_snapshot()["user"]  # the rest reached the HUB


@pytest.mark.parametrize("sources", [("co", "lms"), ("studip",)], ids=["co+lms", "studip"])
def test_a_page_that_is_not_json_fails_the_source_naming_url_and_page(
    harness: SyncHarness, sources: tuple[str, ...]
) -> None:
    for source in sources:
        path = NOT_JSON_PATHS[source]
        harness.sandbox.servers[source].add_response_filter(
            lambda request, response, path=path: (
                not_json(request, response) if path in request.path.lower() else response
            )
        )
    try:
        outcome = harness.sync("full")
    finally:
        for source in sources:
            harness.sandbox.servers[source].clear_request_hooks()
    assert not outcome.success
    for source in sources:
        (error,) = [e for e in outcome.errors if e.startswith(STEPS[source] + ":")]
        assert "JSON" in error
        assert NOT_JSON_PATHS[source] in error.lower()  # the URL
        assert "page" in error.lower()
        for table in RAW_TABLES[source]:
            landed = _query(
                harness, f"SELECT count(*) FROM {table} WHERE sync_key = ?", outcome.key
            )
            assert landed == [(0,)], f"{source}: {table} has a partial landing"


def _duplicate_student(stpersonnr: int):
    """A response filter: the full students list shows ``stpersonnr`` twice, the second row an
    impostor's (other name, born 1970-01-01), after the real one on the same page."""

    def rewrite(request, response):
        if response.status != 200 or "dmsstudents" not in request.path.lower():
            return response
        payload = json.loads(response.body)
        rows = payload.get("resource", [])
        for row in list(rows):
            if row["content"]["DMSStudents"].get("STPERSONNR") == stpersonnr:
                fake = json.loads(json.dumps(row))
                fake["content"]["DMSStudents"].update(
                    GIVENNAME="Impostor", FAMILYNAME="Impostor", BIRTHDATE={"value": "1970-01-01"}
                )
                rows.append(fake)
        return Response.json(payload)

    return rewrite


def test_a_duplicated_person_number_in_one_snapshot_is_quarantined_not_resolved_by_order(
    harness: SyncHarness,
) -> None:
    """Before, the later copy won: the HUB user became "Impostor Impostor", born 1970-01-01."""
    sandbox = harness.sandbox
    assert harness.sync("full").success
    student = next(s for s in sandbox.world.co_students.values() if s.active and s.studid)
    before = sandbox.hub.state_snapshot()["user"][student.studid]
    sandbox.co.add_response_filter(_duplicate_student(student.stpersonnr))
    try:
        outcome = harness.sync("full")
    finally:
        sandbox.co.clear_request_hooks()
    assert outcome.success, outcome.errors
    assert sandbox.hub.state_snapshot()["user"][student.studid] == before
    rows = _query(
        harness,
        "SELECT record_type, record_key, reason FROM quarantine WHERE sync_key = ?",
        outcome.key,
    )
    copies = [r for r in rows if r[1] == str(student.stpersonnr)]
    assert len(copies) == 2 and all(
        r[0] == "student" and r[2].startswith("duplicate STPERSONNR") for r in copies
    ), rows
    (summary,) = _query(harness, "SELECT summary FROM sync_runs WHERE key = ?", outcome.key)[0]
    assert json.loads(summary)["quarantined"] >= 2
    (count,) = _query(
        harness, "SELECT count(*) FROM co_students WHERE STPERSONNR = ?", student.stpersonnr
    )[0]
    assert count == 1  # the student's current record is kept
