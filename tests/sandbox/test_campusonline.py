"""The sandbox CAMPUSonline DMS server over real HTTP (reference/campusonline.md §1, §2, §4, §5)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from sandbox.campusonline import (
    LIVE_SOURCE,
    VIEW_SOURCE,
    CoServer,
    ViewClock,
    application_row,
    format_co_timestamp,
    parse_co_timestamp,
    student_row,
    study_row,
)
from sandbox.world import World

TODAY = date(2026, 11, 23)
VIENNA = ZoneInfo("Europe/Vienna")
SECRET = "sandbox-co-secret"
STUDENTS = "loc_api-dms.dmsstudents"
STUDIES = "loc_api-dms.dmsstudies"
APPLICANTS = "loc_api-dms.dmsapplicants"
TS_RE = re.compile(r"\d{2}\.\d{2}\.\d{4}T\d{2}:\d{2}:\d{2}")

# Reference §2a-§2c: field -> (JSON type, nullable), in the order of the connector's fixtures.
_ADDRESS = ("NOTE", "STREET", "PLACE", "POSTCODE", "REGION", "COUNTRYNR", "COUNTRY", "TELEPHONE")
STUDENT_FIELDS: dict[str, tuple[str, bool]] = {
    "SOURCE": ("str", False), "TIMESTAMP": ("str", False), "STPERSONNR": ("int", False),
    "STUDID": ("str", True), "GIVENNAME": ("str", False), "FAMILYNAME": ("str", False),
    "BIRTHDATE": ("date", False), "IDENTNROBFUSCATED": ("str", False),
    "NATIONALITYNR": ("int", False), "NATIONALITY": ("str", False),
    "NATIONALITYSECONDARYNR": ("int", True), "NATIONALITYSECONDARY": ("str", True),
    "ADMISSIONQUALIFICATIONTYPENR": ("str", False), "ADMISSIONQUALIFICATIONTYPE": ("str", False),
    "SCHOOLCERTIFICATEDATE": ("date", True), "ADMISSIONQUALIFICATIONSTATENR": ("int", True),
    "ADMISSIONQUALIFICATIONSTATE": ("str", True), "TELEPHONE": ("str", True),
    **{f"HOMEADDRESS{k}": ("int" if k == "COUNTRYNR" else "str", True) for k in _ADDRESS},
    **{f"STUDADDRESS{k}": ("int" if k == "COUNTRYNR" else "str", True) for k in _ADDRESS},
    "EMAILADDRESSTU": ("str", True), "EMAILADDRESSCONFIRMED": ("str", True),
    "EMAILADDRESSTEMPORARY": ("str", True), "PERSSTATUS": ("str", False),
    "STUDSTATUSKEY": ("str", False), "STUDSTATUS": ("str", False),
    "TUITIONSTATUS": ("str", True), "TUITIONEXEMPTIONTYPE": ("str", True),
    "IMMATRICULATIONDATE": ("date", False), "IMMATRICULATIONSEMESTER": ("str", True),
    "EXMATRICULATIONSTATUSKEY": ("str", True), "EXMATRICULATIONSTATUS": ("str", True),
    "EXMATRICULATIONDATE": ("date", True), "EXMATRICULATIONSEMESTER": ("str", True),
    "TERMSTART": ("str", True), "TERMEND": ("str", True),
    "ACADEMICTITLEPRECEDING": ("str", True), "ACADEMICTITLEFOLLOWING": ("str", True),
    "FORMERFAMILYNAME": ("str", True), "SOCIALSECURITYNR": ("str", True), "BPK": ("str", True),
    "GENDERKEY": ("str", False), "GENDER": ("str", False), "NOTE": ("str", True),
}  # fmt: skip
STUDY_FIELDS: dict[str, tuple[str, bool]] = {
    "SOURCE": ("str", False), "TIMESTAMP": ("str", False), "STSTUDIUMNR": ("int", False),
    "STPERSONNR": ("int", False), "STUDYKEY": ("str", False), "STUDYTYPE": ("str", False),
    "STUDYNAME": ("str", False), "STUDYSEMESTER": ("int", False),
    "STUDYSTATUSKEY": ("str", False), "STUDYSTATUS": ("str", False),
    "STUDYCURRICULUMVERSION": ("str", True), "STUDYIMMATRICULATIONDATE": ("date", True),
    "STUDYIMMATRICULATIONSEMESTER": ("str", True), "STUDYEXMATRICULATIONDATE": ("date", True),
    "STUDYEXMATRICULATIONSEMESTER": ("str", True), "STUDYEXMATRICULATIONTYPEKEY": ("str", True),
    "STUDYEXMATRICULATIONTYPE": ("str", True), "STUDYQUALIFICATIONTYPENR": ("str", True),
    "STUDYQUALIFICATIONTYPE": ("str", True), "STUDYQUALIFICATIONDATE": ("date", True),
    "STUDYQUALIFICATIONSTATENR": ("int", True), "STUDYQUALIFICATIONSTATE": ("str", True),
    "ADDITIONALCERTIFICATE": ("str", True),
}  # fmt: skip
APPLICATION_FIELDS: dict[str, tuple[str, bool]] = {
    "SOURCE": ("str", False), "TIMESTAMP": ("str", False), "BEWERBUNGNR": ("int", False),
    "STPERSONNR": ("int", False), "STSTUDIUMNR": ("int", True),
    "APPLICANTSTARTOFSTUDY": ("str", False), "APPLICANTSTUDYTYPE": ("str", False),
    "APPLICANTSTUDYNAME": ("str", False), "APPLICANTSTUDYKEY": ("str", False),
    "APPLICANTQUALIFICATIONTYPE": ("str", True), "APPLICANTQUALIFICATIONDATE": ("date", True),
    "APPLICANTQUALIFICATIONSTATENR": ("int", True), "APPLICANTQUALIFICATIONSTATE": ("str", True),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


def _serve(world: World, **options: Any) -> Iterator[CoServer]:
    server = CoServer(world, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        _TOKENS.pop(id(server), None)


@pytest.fixture(scope="module")
def co() -> Iterator[CoServer]:
    """A read-only server: tests using it must not change its world or clock."""
    yield from _serve(World(seed=7, students=200, today=TODAY))


@pytest.fixture
def fresh() -> Iterator[CoServer]:
    """A server of its own, for tests that move the clock or change the world."""
    yield from _serve(World(seed=7, students=80, today=TODAY), token_ttl=600)


def token(server: CoServer) -> str:
    response = requests.post(
        f"{server.base_url}/wbOAuth2.token",
        data={"client_id": "hubsync", "client_secret": SECRET, "grant_type": "client_credentials"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


_TOKENS: dict[int, tuple[str, float]] = {}


def cached_token(server: CoServer) -> str:
    """One token per server, renewed once half its lifetime has passed on the world clock."""
    offset = server.world.clock.offset_seconds
    cached = _TOKENS.get(id(server))
    if cached is None or offset - cached[1] >= server.token_ttl / 2:
        cached = _TOKENS[id(server)] = (token(server), offset)
    return cached[0]


def get(
    server: CoServer,
    service: str,
    params: list[tuple[str, str]] | None = None,
    *,
    bearer: str | None = None,
) -> requests.Response:
    """``GET /pl/rest/<service>/?%24format=json&...`` with the server's token unless given one."""
    query = [("$format", "json"), *(params or [])]
    headers = {
        "Authorization": f"Bearer {bearer or cached_token(server)}",
        "Accept": "application/json",
    }
    return requests.get(
        f"{server.base_url}/pl/rest/{service}/", params=query, headers=headers, timeout=10
    )


def parse(response: requests.Response) -> dict[str, Any]:
    """The body as the connector reads it: U+0018 stripped, then JSON."""
    assert response.status_code == 200, response.text
    return json.loads(response.content.replace(b"\x18", b""))


def rows(response: requests.Response) -> list[dict[str, Any]]:
    out = []
    for resource in parse(response)["resource"]:
        content = resource["content"]
        assert resource["link"] == [] and content["type"] == "model-eg.dataservices.tugrazonline"
        (key,) = [k for k in content if k != "type"]
        out.append(content[key])
    return out


def by_id(items: list[dict[str, Any]], key: str) -> dict[int, dict[str, Any]]:
    return {row[key]: row for row in items}


def align(server: CoServer, offset: float = 1.0) -> datetime:
    """Move the world clock ``offset`` seconds past the next view refresh; return that refresh."""
    period = server.view_refresh_seconds
    now = server.world.clock.now()
    server.world.clock.advance(period - now.timestamp() % period + offset)
    refresh = ViewClock(server.world.clock.now(), period).refreshed_at
    assert timedelta(0) < server.world.clock.now() - refresh < timedelta(seconds=offset + 5)
    return refresh


def co_ts(moment: datetime) -> str:
    return format_co_timestamp(moment, VIENNA)


def check_types(row: dict[str, Any], fields: dict[str, tuple[str, bool]]) -> None:
    assert list(row) == list(fields)
    for name, (kind, nullable) in fields.items():
        value = row[name]
        if kind == "date":
            assert isinstance(value, dict) and list(value) == ["value"], name
            value = value["value"]
            assert value is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", value), name
        if value is None:
            assert nullable, f"{name} must not be null"
        elif kind == "int":
            assert type(value) is int, name
        elif kind == "str":
            assert type(value) is str, name


def check_coverage(
    items: list[dict[str, Any]], fields: dict[str, tuple[str, bool]], must_be_null_somewhere: bool
) -> None:
    """Every nullable field is set somewhere (so its type was checked) and, optionally, null."""
    for name, (kind, nullable) in fields.items():
        values = [r[name]["value"] if kind == "date" else r[name] for r in items]
        assert any(v is not None for v in values), f"{name} is never set"
        if nullable and must_be_null_somewhere:
            assert any(v is None for v in values), f"{name} is never null"


def all_rows(server: CoServer, service: str) -> list[dict[str, Any]]:
    found = rows(get(server, service))
    if service != APPLICANTS:
        found += rows(get(server, service, [("SyncOnlyInactive", "YES")]))
    return found


# --------------------------------------------------------------------------------------------
# OAuth2


def test_token_grant(co: CoServer) -> None:
    response = requests.post(
        f"{co.base_url}/wbOAuth2.token",
        data={"client_id": "hubsync", "client_secret": SECRET, "grant_type": "client_credentials"},
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert isinstance(body["access_token"], str) and len(body["access_token"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"
    assert get(co, STUDENTS, [("StPersonNr", "0")], bearer=body["access_token"]).status_code == 200


def test_token_accepts_http_basic_client_auth(co: CoServer) -> None:
    response = requests.post(
        f"{co.base_url}/wbOAuth2.token",
        auth=("hubsync", SECRET),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert response.status_code == 200
    assert get(co, STUDIES, [("StPersonNr", "0")], bearer=response.json()["access_token"]).ok


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "hubsync", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone", "client_secret": SECRET}, 401, "invalid_client"),
        ({"client_secret": SECRET}, 401, "invalid_client"),
        ({"client_id": "hubsync", "client_secret": "gehéim"}, 401, "invalid_client"),
        (
            {"client_id": "hubsync", "client_secret": SECRET, "grant_type": "password"},
            400,
            "unsupported_grant_type",
        ),
        ({"client_id": "hubsync", "client_secret": SECRET}, 400, "invalid_request"),
    ],
)
def test_token_errors(co: CoServer, form: dict[str, str], status: int, error: str) -> None:
    form = {"grant_type": "client_credentials", **form} if status == 401 else form
    response = requests.post(f"{co.base_url}/wbOAuth2.token", data=form, timeout=5)
    assert response.status_code == status
    assert response.json() == {"error": error}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer ", "Bearer not-a-token", "Basic aHVic3luYzpzZWNyZXQ="]
)
def test_data_without_valid_token_is_401(co: CoServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(f"{co.base_url}/pl/rest/{STUDENTS}/", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_token_expires_on_the_world_clock(fresh: CoServer) -> None:
    bearer = token(fresh)
    assert get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer).status_code == 200
    fresh.world.clock.advance(598)
    assert get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer).status_code == 200
    fresh.world.clock.advance(3)  # past token_ttl=600
    expired = get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer)
    assert expired.status_code == 401 and expired.json() == {"error": "invalid_token"}
    assert get(fresh, STUDENTS, [("StPersonNr", "0")]).status_code == 200  # a new token works


def test_revoke_forgets_every_token(fresh: CoServer) -> None:
    bearer = token(fresh)
    state = requests.get(f"{fresh.base_url}/_sandbox/co/state", timeout=5).json()
    assert state["live_tokens"] == 1 and state["token_ttl"] == 600
    revoked = requests.post(f"{fresh.base_url}/_sandbox/co/tokens/revoke", timeout=5)
    assert revoked.json() == {"revoked": 1}
    assert get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer).status_code == 401


# --------------------------------------------------------------------------------------------
# Rows


def test_student_rows_have_the_reference_fields_and_types(co: CoServer) -> None:
    found = all_rows(co, STUDENTS)
    assert len(found) == len(co.world.co_students)
    for row in found:
        check_types(row, STUDENT_FIELDS)
        assert re.fullmatch(r"\d{2}", row["ADMISSIONQUALIFICATIONTYPENR"])
        assert re.fullmatch(r"[0-9A-F]{32}", row["IDENTNROBFUSCATED"])
    check_coverage(found, STUDENT_FIELDS, must_be_null_somewhere=True)


def test_student_row_values_come_from_the_world(co: CoServer) -> None:
    world = co.world
    student = next(s for s in world.co_students.values() if not s.active and s.studid)
    person = world.persons[student.pid]
    (row,) = rows(get(co, STUDENTS, [("StPersonNr", str(student.stpersonnr))]))
    assert row["STPERSONNR"] == student.stpersonnr and row["STUDID"] == student.studid
    assert (row["GIVENNAME"], row["FAMILYNAME"]) == (person.given, person.family)
    assert row["BIRTHDATE"] == {"value": person.birth.isoformat()}
    assert row["GENDERKEY"] == person.gender
    assert row["GENDER"] == {"M": "Männlich", "W": "Weiblich", "X": "Divers"}[person.gender]
    assert row["IDENTNROBFUSCATED"] == student.ident_obf
    assert row["EMAILADDRESSTU"] == student.email_tu
    assert row["NATIONALITYNR"] == student.nationality_nr
    assert row["ADMISSIONQUALIFICATIONTYPENR"] == student.qualification_type_nr
    assert row["IMMATRICULATIONDATE"] == {"value": student.immat_date.isoformat()}
    assert row["EXMATRICULATIONDATE"] == {"value": student.exmat_date.isoformat()}
    assert row["EXMATRICULATIONSTATUSKEY"] == student.exmat_status_key
    assert row["EXMATRICULATIONSEMESTER"] == student.exmat_semester
    austrian = next(r for r in all_rows(co, STUDENTS) if r["NATIONALITYNR"] == 168)
    assert austrian["NATIONALITY"] == "Österreich"


def test_study_rows_have_the_reference_fields_and_types(co: CoServer) -> None:
    found = all_rows(co, STUDIES)
    assert len(found) == len(co.world.co_studies)
    for row in found:
        check_types(row, STUDY_FIELDS)
        study = co.world.co_studies[row["STSTUDIUMNR"]]
        assert row["STPERSONNR"] == study.stpersonnr and row["STUDYSEMESTER"] == study.semester
        assert row["STUDYEXMATRICULATIONDATE"]["value"] == (
            study.exmat_date.isoformat() if study.exmat_date else None
        )
        if row["STUDYQUALIFICATIONTYPENR"] is not None:
            assert re.fullmatch(r"\d{2}", row["STUDYQUALIFICATIONTYPENR"])
    check_coverage(found, STUDY_FIELDS, must_be_null_somewhere=False)
    assert any(r["ADDITIONALCERTIFICATE"] and " | " in r["ADDITIONALCERTIFICATE"] for r in found)


def test_application_rows_have_the_reference_fields_and_types(co: CoServer) -> None:
    found = rows(get(co, APPLICANTS))
    assert sorted(r["BEWERBUNGNR"] for r in found) == sorted(co.world.co_applications)
    for row in found:
        check_types(row, APPLICATION_FIELDS)
        assert re.fullmatch(r"(\d+) - (.*)", row["APPLICANTQUALIFICATIONTYPE"])
    check_coverage(found, APPLICATION_FIELDS, must_be_null_somewhere=False)
    assert any(r["STSTUDIUMNR"] is None for r in found)  # applicants not admitted yet


def test_date_objects(co: CoServer) -> None:
    found = all_rows(co, STUDENTS)
    for row in found:
        student = co.world.co_students[row["STPERSONNR"]]
        expected = student.exmat_date.isoformat() if student.exmat_date else None
        assert row["EXMATRICULATIONDATE"] == {"value": expected}
        assert row["SCHOOLCERTIFICATEDATE"].keys() == {"value"}
    assert any(r["SCHOOLCERTIFICATEDATE"] == {"value": None} for r in found)


def test_derived_fields_are_deterministic_and_survive_world_changes(fresh: CoServer) -> None:
    world = fresh.world
    student = next(s for s in world.co_students.values() if s.active)
    with world.lock:
        before = student_row(world, student, LIVE_SOURCE, "x")
        assert student_row(world, student, LIVE_SOURCE, "x") == before
        world.persons[student.pid].family = "Neumann"
        after = student_row(world, student, LIVE_SOURCE, "x")
    changed = {k for k in before if before[k] != after[k]}
    assert "FAMILYNAME" in changed
    assert changed <= {
        "FAMILYNAME",
        "EMAILADDRESSCONFIRMED",
        "EMAILADDRESSTEMPORARY",
        "HOMEADDRESSNOTE",
    }


def test_row_helpers_take_datetimes_or_strings(co: CoServer) -> None:
    world, moment = co.world, datetime(2024, 6, 13, 10, 1, 15, tzinfo=UTC)
    with world.lock:
        study = next(iter(world.co_studies.values()))
        application = next(iter(world.co_applications.values()))
        assert study_row(world, study, VIEW_SOURCE, moment)["TIMESTAMP"] == "13.06.2024T12:01:15"
        london = application_row(
            world, application, LIVE_SOURCE, moment, zone=ZoneInfo("Europe/London")
        )
        assert london["TIMESTAMP"] == "13.06.2024T11:01:15"
        assert study_row(world, study, VIEW_SOURCE, "x")["TIMESTAMP"] == "x"


# --------------------------------------------------------------------------------------------
# Envelope, filters, errors, paging


def test_envelope_and_health_check(co: CoServer) -> None:
    for service in (STUDENTS, STUDIES, APPLICANTS):
        response = get(co, service, [("StPersonNr", "0")])
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == {"type": "resources", "link": [], "resource": []}
    body = parse(get(co, STUDIES))
    assert body["type"] == "resources" and body["link"] == [] and body["resource"]
    assert all(list(r["content"]) == ["type", "DMSStudies"] for r in body["resource"])


def test_format_parameter_and_trailing_slash_are_optional(co: CoServer) -> None:
    headers = {"Authorization": f"Bearer {token(co)}"}
    plain = requests.get(f"{co.base_url}/pl/rest/{APPLICANTS}", headers=headers, timeout=5)
    assert plain.status_code == 200
    assert len(parse(plain)["resource"]) == len(co.world.co_applications)


def test_filters_return_live_rows_of_any_pool(co: CoServer) -> None:
    world = co.world
    inactive = next(s for s in world.co_students.values() if not s.active)
    for params in (
        [("StPersonNr", str(inactive.stpersonnr))],
        [("IdentNrObfuscated", inactive.ident_obf)],
        [("IdentNrObfuscated", inactive.ident_obf.lower())],
    ):
        (row,) = rows(get(co, STUDENTS, params))
        assert row["STPERSONNR"] == inactive.stpersonnr and row["SOURCE"] == LIVE_SOURCE
    person = next(nr for nr, studies in world.studies_by_person.items() if len(studies) > 1)
    studies = rows(get(co, STUDIES, [("StPersonNr", str(person))]))
    assert [r["STSTUDIUMNR"] for r in studies] == sorted(world.studies_by_person[person])
    closed = next(s for s in world.co_studies.values() if not s.active)
    (row,) = rows(get(co, STUDIES, [("StStudiumNr", str(closed.ststudiumnr))]))
    assert row["STUDYEXMATRICULATIONDATE"]["value"] is not None
    application = next(a for a in world.co_applications.values() if a.ststudiumnr)
    by_study = rows(get(co, APPLICANTS, [("StStudiumNr", str(application.ststudiumnr))]))
    assert application.bewerbungnr in {r["BEWERBUNGNR"] for r in by_study}
    by_person = rows(get(co, APPLICANTS, [("StPersonNr", str(application.stpersonnr))]))
    assert {r["BEWERBUNGNR"] for r in by_person} == set(
        world.applications_by_person[application.stpersonnr]
    )
    assert rows(get(co, STUDENTS, [("IdentNrObfuscated", "F" * 32)])) == []
    assert rows(get(co, STUDIES, [("StStudiumNr", "-5")])) == []


def test_filter_with_paging_and_pool(co: CoServer) -> None:
    """The connector's single lookup (PageNr=1&PageSize=2) and a filter narrowed to a pool."""
    world = co.world
    active = next(s for s in world.co_students.values() if s.active)
    lookup = [("StPersonNr", str(active.stpersonnr)), ("PageNr", "1"), ("PageSize", "2")]
    assert len(rows(get(co, STUDENTS, lookup))) == 1
    only = [("StPersonNr", str(active.stpersonnr)), ("SyncOnlyInactive", "YES")]
    assert rows(get(co, STUDENTS, only)) == []
    person = next(
        p
        for p, nrs in world.studies_by_person.items()
        if {world.co_studies[n].active for n in nrs} == {True, False}
    )
    closed = rows(get(co, STUDIES, [("StPersonNr", str(person)), ("SyncOnlyInactive", "YES")]))
    assert {r["STSTUDIUMNR"] for r in closed} == {
        n for n in world.studies_by_person[person] if not world.co_studies[n].active
    }


@pytest.mark.parametrize(
    ("service", "params"),
    [
        (STUDENTS, [("StPersonNr", "100000"), ("IdentNrObfuscated", "ABC")]),
        (STUDIES, [("StPersonNr", "100000"), ("StStudiumNr", "500000")]),
        (STUDIES, [("IdentNrObfuscated", "ABC")]),
        (STUDENTS, [("StStudiumNr", "500000")]),
        (APPLICANTS, [("IdentNrObfuscated", "ABC")]),
        (STUDENTS, [("StPersonNr", "100000"), ("StPersonNr", "100001")]),
        (STUDENTS, [("Foo", "1")]),
        (STUDENTS, [("stpersonnr", "100000")]),
        (STUDENTS, [("StPersonNr", "abc")]),
        (STUDENTS, [("StPersonNr", "")]),
        (STUDENTS, [("IdentNrObfuscated", "")]),
        (STUDENTS, [("SyncOnlyInactive", "YES"), ("LastSyncDate", "13.06.2024T12:01:15")]),
        (STUDIES, [("SyncOnlyInactive", "YES"), ("LastSyncDate", "13.06.2024T12:01:15")]),
        (APPLICANTS, [("SyncOnlyInactive", "YES")]),
        (APPLICANTS, [("SyncOnlyInactive", "NO")]),
        (STUDENTS, [("SyncOnlyInactive", "MAYBE")]),
        (STUDENTS, [("LastSyncDate", "2024-06-13T12:01:15")]),
        (STUDENTS, [("LastSyncDate", "13.06.2024 12:01:15")]),
        (STUDENTS, [("LastSyncDate", "32.06.2024T12:01:15")]),
        (STUDENTS, [("LastSyncDate", "13.06.2024T25:01:15")]),
        (STUDENTS, [("LastSyncDate", "")]),
        (STUDENTS, [("PageNr", "1")]),
        (STUDENTS, [("PageNr", "0"), ("PageSize", "10")]),
        (STUDENTS, [("PageNr", "x"), ("PageSize", "10")]),
        (STUDENTS, [("PageNr", "1"), ("PageSize", "0")]),
        (STUDENTS, [("PageNr", "1"), ("PageSize", "-1")]),
        (STUDENTS, [("PageNr", "1"), ("PageSize", "2.5")]),
        (STUDENTS, [("$format", "xml")]),
    ],
)
def test_bad_queries_are_400(co: CoServer, service: str, params: list[tuple[str, str]]) -> None:
    response = get(co, service, params)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and isinstance(body["message"], str) and body["message"]


def test_unknown_routes_and_methods(co: CoServer) -> None:
    headers = {"Authorization": f"Bearer {token(co)}"}
    unknown_service = requests.get(
        f"{co.base_url}/pl/rest/loc_api-dms.dmsfoo/", headers=headers, timeout=5
    )
    assert unknown_service.status_code == 404 and unknown_service.json()["type"] == "error"
    unknown_path = requests.get(f"{co.base_url}/wbNope.start", timeout=5)
    assert unknown_path.status_code == 404 and unknown_path.json()["type"] == "error"
    wrong_method = requests.delete(f"{co.base_url}/pl/rest/{STUDENTS}/", headers=headers, timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    token_by_get = requests.get(f"{co.base_url}/wbOAuth2.token", timeout=5)
    assert token_by_get.status_code == 405


def test_paging_with_an_exactly_full_last_page(co: CoServer) -> None:
    bearer = token(co)
    inactive = [("SyncOnlyInactive", "YES")]
    everything = rows(get(co, STUDENTS, inactive, bearer=bearer))
    total = len(everything)
    size = next((d for d in range(2, total) if total % d == 0), total)
    pages = []
    for number in range(1, total // size + 2):
        paging = [("PageNr", str(number)), ("PageSize", str(size))]
        pages.append(rows(get(co, STUDENTS, inactive + paging, bearer=bearer)))
    assert [len(p) for p in pages] == [size] * (total // size) + [0]
    flat = [r["STPERSONNR"] for page in pages for r in page]
    assert flat == [r["STPERSONNR"] for r in everything] == sorted(flat)
    short = rows(get(co, STUDENTS, inactive + [("PageNr", "2"), ("PageSize", str(total - 1))]))
    assert len(short) == 1
    first = rows(get(co, STUDENTS, inactive + [("PageSize", "3")], bearer=bearer))
    assert [r["STPERSONNR"] for r in first] == flat[:3]


def test_active_and_inactive_pools(co: CoServer) -> None:
    world = co.world
    bearer = token(co)
    active = {r["STPERSONNR"] for r in rows(get(co, STUDENTS, bearer=bearer))}
    inactive = {
        r["STPERSONNR"]
        for r in rows(get(co, STUDENTS, [("SyncOnlyInactive", "YES")], bearer=bearer))
    }
    assert active == {n for n, s in world.co_students.items() if s.exmat_date is None}
    assert inactive == set(world.co_students) - active and active and inactive
    explicit = rows(get(co, STUDENTS, [("SyncOnlyInactive", "NO")], bearer=bearer))
    assert {r["STPERSONNR"] for r in explicit} == active
    open_studies = rows(get(co, STUDIES, bearer=bearer))
    closed = rows(get(co, STUDIES, [("SyncOnlyInactive", "YES")], bearer=bearer))
    assert all(r["STUDYEXMATRICULATIONDATE"]["value"] is None for r in open_studies)
    assert all(r["STUDYEXMATRICULATIONDATE"]["value"] is not None for r in closed)
    assert len(open_studies) + len(closed) == len(world.co_studies)


def test_raw_control_byte_in_notes(co: CoServer) -> None:
    broken = sorted(n for n in co.world.co_students if n % 53 == 0)
    response = get(co, STUDENTS, [("SyncOnlyInactive", "YES")])
    response_active = get(co, STUDENTS)
    body = response.content + response_active.content
    assert body.count(b"\x18") == len(broken) > 0 and b"\\u0018" not in body
    with pytest.raises(ValueError):
        json.loads(response_active.content)
    notes = {r["STPERSONNR"]: r["NOTE"] for r in rows(response) + rows(response_active)}
    for nr in broken:
        assert notes[nr] and "\x18" not in notes[nr]
    single = get(co, STUDENTS, [("StPersonNr", str(broken[0]))])
    assert b"\x18" in single.content and rows(single)[0]["STPERSONNR"] == broken[0]
    clean = next(n for n in co.world.co_students if n % 53)
    assert b"\x18" not in get(co, STUDENTS, [("StPersonNr", str(clean))]).content


# --------------------------------------------------------------------------------------------
# Views and LiveSync


def _touch(server: CoServer, stpersonnr: int, family: str) -> datetime:
    world = server.world
    with world.lock:
        now = world.clock.now()
        world.persons[world.co_students[stpersonnr].pid].family = family
        world.co_students[stpersonnr].modified_at = now
    return now


def test_list_rows_are_live_until_the_next_refresh(fresh: CoServer) -> None:
    world = fresh.world
    refresh = align(fresh)
    changed = next(n for n, s in world.co_students.items() if s.active)
    before = datetime.now(UTC) + timedelta(seconds=world.clock.offset_seconds - 1)
    _touch(fresh, changed, "Neumann")
    found = by_id(rows(get(fresh, STUDENTS)), "STPERSONNR")
    live = found.pop(changed)
    assert live["SOURCE"] == LIVE_SOURCE and live["FAMILYNAME"] == "Neumann"
    stamp = parse_co_timestamp(live["TIMESTAMP"], VIENNA)
    assert before <= stamp <= world.clock.now() and stamp > refresh
    assert {r["SOURCE"] for r in found.values()} == {VIEW_SOURCE}
    assert {r["TIMESTAMP"] for r in found.values()} == {co_ts(refresh)}
    assert parse_co_timestamp(co_ts(refresh), VIENNA) == refresh

    world.clock.advance(fresh.view_refresh_seconds)
    again = by_id(rows(get(fresh, STUDENTS)), "STPERSONNR")
    next_refresh = refresh + timedelta(seconds=fresh.view_refresh_seconds)
    assert again[changed]["SOURCE"] == VIEW_SOURCE
    assert again[changed]["FAMILYNAME"] == "Neumann"
    assert {r["TIMESTAMP"] for r in again.values()} == {co_ts(next_refresh)}


def test_delta_returns_rows_of_refresh_l_again_but_not_later(fresh: CoServer) -> None:
    world, period = fresh.world, fresh.view_refresh_seconds
    refresh = align(fresh)
    changed = next(n for n, s in world.co_students.items() if s.active)
    _touch(fresh, changed, "Neumann")
    delta = rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(refresh))]))
    assert [(r["STPERSONNR"], r["SOURCE"]) for r in delta] == [(changed, LIVE_SOURCE)]

    world.clock.advance(period)  # refresh R1 takes the change
    r1 = refresh + timedelta(seconds=period)
    delta = rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(r1))]))
    assert [(r["STPERSONNR"], r["SOURCE"], r["TIMESTAMP"]) for r in delta] == [
        (changed, VIEW_SOURCE, co_ts(r1))
    ]

    world.clock.advance(period)  # refresh R2: nothing new
    r2 = r1 + timedelta(seconds=period)
    assert rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(r2))])) == []
    since_r1 = rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(r1))]))
    assert [(r["STPERSONNR"], r["TIMESTAMP"]) for r in since_r1] == [(changed, co_ts(r2))]
    old = rows(get(fresh, STUDENTS, [("LastSyncDate", "01.01.2000T00:00:00")]))
    assert {r["STPERSONNR"] for r in old} == {n for n, s in world.co_students.items() if s.active}

    other = next(n for n, s in world.co_students.items() if s.active and n != changed)
    _touch(fresh, other, "Altmann")  # changed after R2: live whatever LastSyncDate says
    future = rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(r2 + timedelta(days=1)))]))
    assert [(r["STPERSONNR"], r["SOURCE"]) for r in future] == [(other, LIVE_SOURCE)]


def test_delta_of_studies_and_applications(fresh: CoServer) -> None:
    world = fresh.world
    refresh = align(fresh)
    with world.lock:
        now = world.clock.now()
        study = next(s for s in world.co_studies.values() if s.active)
        study.status_key, study.modified_at = "B", now
        application = next(iter(world.co_applications.values()))
        application.modified_at = now
    studies = rows(get(fresh, STUDIES, [("LastSyncDate", co_ts(refresh))]))
    assert [(r["STSTUDIUMNR"], r["SOURCE"], r["STUDYSTATUS"]) for r in studies] == [
        (study.ststudiumnr, LIVE_SOURCE, "beurlaubt")
    ]
    applications = rows(get(fresh, APPLICANTS, [("LastSyncDate", co_ts(refresh))]))
    assert [(r["BEWERBUNGNR"], r["SOURCE"]) for r in applications] == [
        (application.bewerbungnr, LIVE_SOURCE)
    ]


def test_exmatriculated_student_is_in_the_delta_but_not_the_active_list(fresh: CoServer) -> None:
    world, period = fresh.world, fresh.view_refresh_seconds
    refresh = align(fresh)
    summary = world.step()
    gone = [int(n) for n in summary.changes["exmatriculation"]]
    assert gone
    active = {r["STPERSONNR"] for r in rows(get(fresh, STUDENTS))}
    assert not active & set(gone)
    delta = by_id(rows(get(fresh, STUDENTS, [("LastSyncDate", co_ts(refresh))])), "STPERSONNR")
    for nr in gone:
        assert delta[nr]["SOURCE"] == LIVE_SOURCE
        assert (
            delta[nr]["EXMATRICULATIONDATE"]["value"]
            == world.co_students[nr].exmat_date.isoformat()
        )
        assert delta[nr]["EXMATRICULATIONSTATUSKEY"] in {"EZ", "A", "E"}
    closed = {nr for p in gone for nr in world.studies_by_person[p]}
    study_delta = by_id(
        rows(get(fresh, STUDIES, [("LastSyncDate", co_ts(refresh))])), "STSTUDIUMNR"
    )
    for nr in closed & set(study_delta):
        assert study_delta[nr]["STUDYEXMATRICULATIONDATE"]["value"] is not None
    assert {nr for nr in closed if world.co_studies[nr].deactivated_at} <= set(study_delta)
    inactive = by_id(rows(get(fresh, STUDENTS, [("SyncOnlyInactive", "YES")])), "STPERSONNR")
    assert all(inactive[nr]["SOURCE"] == LIVE_SOURCE for nr in gone)

    world.clock.advance(2 * period)  # two refreshes later the move is older than LastSyncDate
    later = co_ts(refresh + timedelta(seconds=2 * period))
    assert not set(gone) & {
        r["STPERSONNR"] for r in rows(get(fresh, STUDENTS, [("LastSyncDate", later)]))
    }
    inactive = by_id(rows(get(fresh, STUDENTS, [("SyncOnlyInactive", "YES")])), "STPERSONNR")
    assert all(inactive[nr]["SOURCE"] == VIEW_SOURCE for nr in gone)


def test_filtered_rows_are_always_live(fresh: CoServer) -> None:
    world = fresh.world
    refresh = align(fresh)
    world.clock.advance(120)
    student = next(s for s in world.co_students.values() if s.modified_at < refresh)
    before = world.clock.now() - timedelta(seconds=1)
    calls = [
        (STUDENTS, [("StPersonNr", str(student.stpersonnr))]),
        (STUDENTS, [("IdentNrObfuscated", student.ident_obf)]),
        (STUDIES, [("StPersonNr", str(student.stpersonnr))]),
        (STUDIES, [("StStudiumNr", str(world.studies_by_person[student.stpersonnr][0]))]),
    ]
    for service, params in calls:
        for row in rows(get(fresh, service, params)):
            assert row["SOURCE"] == LIVE_SOURCE
            assert before <= parse_co_timestamp(row["TIMESTAMP"], VIENNA) <= world.clock.now()
    application = next(iter(world.co_applications.values()))
    (row,) = [
        r
        for r in rows(get(fresh, APPLICANTS, [("StPersonNr", str(application.stpersonnr))]))
        if r["BEWERBUNGNR"] == application.bewerbungnr
    ]
    assert row["SOURCE"] == LIVE_SOURCE
    # The same records in a list call are view rows of the refresh.
    listed = by_id(rows(get(fresh, STUDENTS)), "STPERSONNR")
    if student.active:
        assert listed[student.stpersonnr]["SOURCE"] == VIEW_SOURCE


def test_view_refresh_period_and_timezone_options(fresh: CoServer) -> None:
    world = fresh.world
    for server in _serve(world, view_refresh_seconds=60, timezone="Europe/London"):
        now = world.clock.now()
        expected = ViewClock(now, 60).refreshed_at
        assert expected.timestamp() % 60 == 0 and now - expected < timedelta(seconds=60)
        stamps = {r["TIMESTAMP"] for r in rows(get(server, STUDIES)) if r["SOURCE"] == VIEW_SOURCE}
        assert stamps == {format_co_timestamp(expected, ZoneInfo("Europe/London"))}
        state = requests.get(f"{server.base_url}/_sandbox/co/state", timeout=5).json()
        assert state["timezone"] == "Europe/London" and state["view_refresh_seconds"] == 60
    with pytest.raises(ValueError):
        CoServer(world, token_ttl=0)
    with pytest.raises(ValueError):
        CoServer(world, view_refresh_seconds=0)


# --------------------------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("13.06.2024T12:01:15", "Europe/Vienna", datetime(2024, 6, 13, 10, 1, 15, tzinfo=UTC)),
        ("13.06.2024T14:00:34", "Europe/Vienna", datetime.fromtimestamp(1718280034, UTC)),
        ("13.06.2024T13:08:15", "Europe/Vienna", datetime.fromtimestamp(1718276895, UTC)),
        ("13.06.2024T11:52:43", "Europe/London", datetime.fromtimestamp(1718275963, UTC)),
        ("27.10.2024T02:30:00", "Europe/Vienna", datetime(2024, 10, 27, 1, 30, tzinfo=UTC)),
        ("31.03.2024T02:30:00", "Europe/Vienna", datetime(2024, 3, 31, 1, 30, tzinfo=UTC)),
        ("23.11.2026T00:00:00", "Europe/Vienna", datetime(2026, 11, 22, 23, 0, tzinfo=UTC)),
    ],
)
def test_parse_co_timestamp_vectors(text: str, zone: str, expected: datetime) -> None:
    parsed = parse_co_timestamp(text, ZoneInfo(zone))
    assert parsed == expected and parsed.tzinfo == UTC
    assert parsed.timestamp() == expected.timestamp()


def test_timestamps_round_trip() -> None:
    assert parse_co_timestamp("13.06.2024T12:01:15", VIENNA).timestamp() == 1718272875
    moment = datetime(2024, 6, 13, 10, 1, 15, tzinfo=UTC)
    assert format_co_timestamp(moment, VIENNA) == "13.06.2024T12:01:15"
    assert parse_co_timestamp(format_co_timestamp(moment, VIENNA), VIENNA) == moment
    # Both instants of the autumn hour print the same; the later one comes back.
    early = datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    late = datetime(2024, 10, 27, 1, 30, tzinfo=UTC)
    assert format_co_timestamp(early, VIENNA) == format_co_timestamp(late, VIENNA)
    assert parse_co_timestamp(format_co_timestamp(early, VIENNA), VIENNA) == late
    for bad in ("2024-06-13T12:01:15", "13.06.2024 12:01:15", "31.02.2024T00:00:00", "", "x"):
        with pytest.raises(ValueError):
            parse_co_timestamp(bad, VIENNA)
    with pytest.raises(ValueError):
        format_co_timestamp(datetime(2024, 6, 13), VIENNA)


def test_server_timestamps_parse(co: CoServer) -> None:
    for row in rows(get(co, APPLICANTS)) + rows(get(co, STUDENTS, [("StPersonNr", "100000")])):
        assert TS_RE.fullmatch(row["TIMESTAMP"])
        parsed = parse_co_timestamp(row["TIMESTAMP"], VIENNA)
        assert abs(parsed - co.world.clock.now()) < timedelta(seconds=co.view_refresh_seconds + 5)
    ambiguous = get(co, STUDENTS, [("LastSyncDate", "27.10.2024T02:30:00")])
    assert ambiguous.status_code == 200


# --------------------------------------------------------------------------------------------
# Faults


def _script(server: CoServer, *kinds: str, **settings: Any) -> None:
    response = requests.post(
        f"{server.base_url}/_sandbox/faults", json={"script": list(kinds), **settings}, timeout=5
    )
    assert response.status_code == 200, response.text


def test_fault_error(fresh: CoServer) -> None:
    bearer = token(fresh)
    _script(fresh, "error")
    failed = get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer)
    assert failed.status_code == 503 and failed.headers["Content-Type"].startswith("text/html")
    assert get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer).status_code == 200


def test_fault_rate_limit(fresh: CoServer) -> None:
    bearer = token(fresh)
    _script(fresh, "rate_limit", retry_after=7)
    limited = get(fresh, STUDIES, bearer=bearer)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert get(fresh, STUDIES, bearer=bearer).status_code == 200


def test_fault_drop(fresh: CoServer) -> None:
    bearer = token(fresh)
    _script(fresh, "drop")
    with pytest.raises(requests.ConnectionError):
        get(fresh, APPLICANTS, bearer=bearer)
    assert get(fresh, APPLICANTS, bearer=bearer).status_code == 200


def test_fault_truncate(fresh: CoServer) -> None:
    bearer = token(fresh)
    whole = get(fresh, STUDIES, bearer=bearer).content
    _script(fresh, "truncate")
    cut = get(fresh, STUDIES, bearer=bearer).content
    assert 0 < len(cut) < len(whole) and whole.startswith(cut)
    with pytest.raises(ValueError):
        json.loads(cut)


def test_fault_slow(fresh: CoServer) -> None:
    bearer = token(fresh)
    _script(fresh, "slow", slow_ms=150)
    started = time.perf_counter()
    assert get(fresh, STUDENTS, [("StPersonNr", "0")], bearer=bearer).status_code == 200
    assert time.perf_counter() - started >= 0.15


def test_fault_latency_floor(fresh: CoServer) -> None:
    bearer = token(fresh)
    _script(fresh, latency_floor_ms=100)
    started = time.perf_counter()
    assert get(fresh, STUDIES, [("StPersonNr", "0")], bearer=bearer).status_code == 200
    assert time.perf_counter() - started >= 0.1
    assert fresh.request_count("/pl/rest/:service") >= 1
