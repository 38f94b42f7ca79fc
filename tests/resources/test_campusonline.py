import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import responses
from pydantic import ValidationError

from resources.campusonline import (
    APPLICATIONS,
    STUDENTS,
    STUDIES,
    CampusOnlineClient,
    CampusOnlineResource,
    CoApplication,
    CoStudent,
    CoStudy,
    campusonline_resource,
    envelope_rows,
    format_co_timestamp,
    parse_co_timestamp,
)
from resources.http import ApiError, HttpClient, RetryPolicy
from resources.settings import load_settings

BASE = "https://co.example.ac.at/co/dms"
VIENNA = ZoneInfo("Europe/Vienna")
LONDON = ZoneInfo("Europe/London")
TOKEN_URL = f"{BASE}/wbOAuth2.token"
STUDENTS_URL = f"{BASE}/pl/rest/loc_api-dms.dmsstudents/"
STUDIES_URL = f"{BASE}/pl/rest/loc_api-dms.dmsstudies/"
APPLICANTS_URL = f"{BASE}/pl/rest/loc_api-dms.dmsapplicants/"

# reference §2a RESPONSE_FULL, field by field
FULL_STUDENT: dict[str, Any] = {
    "SOURCE": "LiveSync[Single|Normal]",
    "TIMESTAMP": "13.06.2024T14:00:34",
    "STPERSONNR": 123123,
    "STUDID": "00712345",
    "GIVENNAME": "Max",
    "FAMILYNAME": "Mustermann",
    "BIRTHDATE": {"value": "1970-01-01"},
    "IDENTNROBFUSCATED": "F06BCC80D6FC0BDE575B16FB2E3790D5",
    "NATIONALITYNR": 11,
    "NATIONALITY": "Ägypten",
    "NATIONALITYSECONDARYNR": 168,
    "NATIONALITYSECONDARY": "Österreich",
    "ADMISSIONQUALIFICATIONTYPENR": "02",
    "ADMISSIONQUALIFICATIONTYPE": "Humanistisches Gymnasium",
    "SCHOOLCERTIFICATEDATE": {"value": "2010-12-24"},
    "ADMISSIONQUALIFICATIONSTATENR": 40,
    "ADMISSIONQUALIFICATIONSTATE": "Bosnien und Herzegowina",
    "TELEPHONE": "067612345677",
    "HOMEADDRESSNOTE": "c/o Erika Mustermann",
    "HOMEADDRESSSTREET": "Hauptstraße 34",
    "HOMEADDRESSPLACE": "Altenmarkt bei Sankt Gallen",
    "HOMEADDRESSPOSTCODE": "8934",
    "HOMEADDRESSREGION": "Steiermark",
    "HOMEADDRESSCOUNTRYNR": 11,
    "HOMEADDRESSCOUNTRY": "Ägypten",
    "HOMEADDRESSTELEPHONE": "067612345678",
    "STUDADDRESSNOTE": None,
    "STUDADDRESSSTREET": "Hauptstraße 42",
    "STUDADDRESSPLACE": "Waizenkirchen",
    "STUDADDRESSPOSTCODE": "4730",
    "STUDADDRESSREGION": "Steiermark",
    "STUDADDRESSCOUNTRYNR": 11,
    "STUDADDRESSCOUNTRY": "Ägypten",
    "STUDADDRESSTELEPHONE": "067612345676",
    "EMAILADDRESSTU": "max.mustermann@student.tugraz.at",
    "EMAILADDRESSCONFIRMED": "max.mustermann@example.com",
    "EMAILADDRESSTEMPORARY": "max.mustermann.temp@example.com",
    "PERSSTATUS": "Voranmeldung",
    "STUDSTATUSKEY": "E",
    "STUDSTATUS": "nicht zugelassen",
    "TUITIONSTATUS": "Ausländer gleichgestellt",
    "TUITIONEXEMPTIONTYPE": "L Lehrgang",
    "IMMATRICULATIONDATE": {"value": "2010-12-24"},
    "IMMATRICULATIONSEMESTER": "21W",
    "EXMATRICULATIONSTATUSKEY": "EZ",
    "EXMATRICULATIONSTATUS": "ex lege",
    "EXMATRICULATIONDATE": {"value": "2023-10-31"},
    "EXMATRICULATIONSEMESTER": "20W",
    "TERMSTART": "23W",
    "TERMEND": "24S",
    "ACADEMICTITLEPRECEDING": "Ing.",
    "ACADEMICTITLEFOLLOWING": "Bsc",
    "FORMERFAMILYNAME": "Normalverbraucher",
    "SOCIALSECURITYNR": "1223010170",
    "BPK": "Kxl/ufp/HOufd8y/+3n6qZ1Cn7E=",
    "GENDERKEY": "M",
    "GENDER": "Männlich",
    "NOTE": "some note",
}
OPTIONAL_STUDENT_FIELDS = [
    name
    for name, field in CoStudent.model_fields.items()
    if not field.is_required() and field.default is None
]
FULL_STUDY: dict[str, Any] = {
    "SOURCE": "LiveSync[Single|Normal]",
    "TIMESTAMP": "13.06.2024T13:08:15",
    "STSTUDIUMNR": 253324,
    "STPERSONNR": 123456,
    "STUDYKEY": "UF 066 921",
    "STUDYTYPE": "Masterstudium",
    "STUDYNAME": "Masterstudium; Computer Science",
    "STUDYSEMESTER": 6,
    "STUDYSTATUSKEY": "I",
    "STUDYSTATUS": "gemeldet",
    "STUDYCURRICULUMVERSION": "2022W",
    "STUDYIMMATRICULATIONDATE": {"value": "2021-01-01"},
    "STUDYIMMATRICULATIONSEMESTER": "20S",
    "STUDYEXMATRICULATIONDATE": {"value": "2022-01-01"},
    "STUDYEXMATRICULATIONSEMESTER": "24S",
    "STUDYEXMATRICULATIONTYPEKEY": "EZ",
    "STUDYEXMATRICULATIONTYPE": "auf Antrag",
    "STUDYQUALIFICATIONTYPENR": "41",
    "STUDYQUALIFICATIONTYPE": "Master-/Diplomst.eigene Univ.",
    "STUDYQUALIFICATIONDATE": {"value": "2010-01-01"},
    "STUDYQUALIFICATIONSTATENR": 168,
    "STUDYQUALIFICATIONSTATE": "Österreich",
    "ADDITIONALCERTIFICATE": "EDG | EGR",
}
FULL_APPLICATION: dict[str, Any] = {
    "SOURCE": "LiveSync",
    "TIMESTAMP": "13.06.2024T12:01:15",
    "BEWERBUNGNR": 12345,
    "STPERSONNR": 123456,
    "STSTUDIUMNR": None,
    "APPLICANTSTARTOFSTUDY": "21W",
    "APPLICANTSTUDYTYPE": "Bachelorstudium",
    "APPLICANTSTUDYNAME": "Bachelorstudium; Physik",
    "APPLICANTSTUDYKEY": "UF 033 678",
    "APPLICANTQUALIFICATIONTYPE": "25 - ausländische Reifeprüfung",
    "APPLICANTQUALIFICATIONDATE": {"value": "1970-01-01"},
    "APPLICANTQUALIFICATIONSTATENR": 40,
    "APPLICANTQUALIFICATIONSTATE": "Bosnien und Herzegowina",
}


def envelope(row_key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "resources",
        "link": [],
        "resource": [
            {"link": [], "content": {"type": "model-eg.dataservices.tugrazonline", row_key: r}}
            for r in rows
        ],
    }


def students_page(count: int, start: int = 1) -> dict[str, Any]:
    return envelope(
        "DMSStudents",
        [{**FULL_STUDENT, "STPERSONNR": nr} for nr in range(start, start + count)],
    )


def make_client(page_size: int = 20000, sleeps: list[float] | None = None) -> CampusOnlineClient:
    waits = sleeps if sleeps is not None else []
    http = HttpClient(
        "CAMPUSonline", BASE, retry_policy=RetryPolicy(attempts=3), sleep=waits.append
    )
    return CampusOnlineClient(
        http, client_id="hubsync", client_secret="s3cret", zone=VIENNA, page_size=page_size
    )


def add_token(token: str = "tok-1") -> responses.BaseResponse:
    return responses.post(TOKEN_URL, json={"access_token": token, "token_type": "Bearer"})


def query_of(call: Any) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(call.request.url).query, keep_blank_values=True)


def data_calls() -> list[Any]:
    return [c for c in responses.calls if "/pl/rest/" in c.request.url]


def wait_for_data_calls(count: int) -> None:
    deadline = time.monotonic() + 5
    while len(data_calls()) < count and time.monotonic() < deadline:
        time.sleep(0.01)


# -- timestamps (reference §5) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "unix"),
    [
        ("13.06.2024T12:01:15", VIENNA, 1718272875),
        ("13.06.2024T14:00:34", VIENNA, 1718280034),
        ("13.06.2024T13:08:15", VIENNA, 1718276895),
        ("13.06.2024T11:52:43", LONDON, 1718275963),
        (
            "13.06.2024T12:01:15",
            LONDON,
            int(datetime(2024, 6, 13, 11, 1, 15, tzinfo=UTC).timestamp()),
        ),
    ],
)
def test_co_timestamps_are_local_time_in_the_configured_zone(
    text: str, zone: ZoneInfo, unix: int
) -> None:
    parsed = parse_co_timestamp(text, zone)
    assert parsed.tzinfo == UTC
    assert int(parsed.timestamp()) == unix
    assert format_co_timestamp(parsed, zone) == text


def test_the_ambiguous_autumn_hour_is_the_later_instant() -> None:
    parsed = parse_co_timestamp("27.10.2024T02:30:00", VIENNA)
    assert parsed == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)  # CET, not 00:30Z (CEST)
    # formatting back loses the offset, as CO's own format does: same wall time
    assert format_co_timestamp(parsed, VIENNA) == "27.10.2024T02:30:00"
    assert parse_co_timestamp("27.10.2024T01:59:59", VIENNA) == datetime(
        2024, 10, 26, 23, 59, 59, tzinfo=UTC
    )
    assert parse_co_timestamp("27.10.2024T03:00:00", VIENNA) == datetime(
        2024, 10, 27, 2, 0, tzinfo=UTC
    )


def test_a_wall_time_in_the_spring_gap_keeps_the_offset_before_it() -> None:
    assert parse_co_timestamp("31.03.2024T02:30:00", VIENNA) == datetime(
        2024, 3, 31, 1, 30, tzinfo=UTC
    )
    assert format_co_timestamp(datetime(2024, 3, 31, 1, 30, tzinfo=UTC), VIENNA) == (
        "31.03.2024T03:30:00"
    )


@pytest.mark.parametrize(
    "text", ["2024-06-13T12:01:15", "13.06.2024 12:01:15", "32.06.2024T12:00:00", ""]
)
def test_malformed_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_co_timestamp(text, VIENNA)


def test_formatting_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError):
        format_co_timestamp(datetime(2024, 6, 13, 12, 0), VIENNA)


# -- rows --------------------------------------------------------------------------------------


def test_the_full_student_row_parses_every_field() -> None:
    student = CoStudent.model_validate(FULL_STUDENT)
    assert student.STPERSONNR == 123123
    assert student.BIRTHDATE.value is not None and student.BIRTHDATE.value.isoformat() == (
        "1970-01-01"
    )
    assert student.is_live and not student.is_active  # exmatriculation date set
    assert int(student.timestamp(VIENNA).timestamp()) == 1718280034


def test_the_minimal_student_row_has_null_optionals_and_is_active() -> None:
    minimal = {**FULL_STUDENT, **dict.fromkeys(OPTIONAL_STUDENT_FIELDS)}
    for date_field in ("SCHOOLCERTIFICATEDATE", "EXMATRICULATIONDATE"):
        minimal[date_field] = {"value": None}
    minimal["SOURCE"] = "DMSView"
    student = CoStudent.model_validate(minimal)
    assert student.is_active and not student.is_live
    assert student.NATIONALITYSECONDARYNR is None and student.STUDID is None


def test_missing_optional_keys_of_older_api_versions_are_tolerated() -> None:
    older = {
        k: v
        for k, v in FULL_STUDENT.items()
        if k not in ("HOMEADDRESSREGION", "STUDADDRESSREGION", "EXMATRICULATIONSEMESTER")
    }
    student = CoStudent.model_validate(older)
    assert student.HOMEADDRESSREGION is None and student.EXMATRICULATIONSEMESTER is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"STPERSONNR": "123123"}, "STPERSONNR"),  # ids are JSON ints
        ({"FAMILYNAME": None}, "FAMILYNAME"),
        ({"BIRTHDATE": "1970-01-01"}, "BIRTHDATE"),  # dates are objects
        ({"BIRTHDATE": {"value": "1970-13-01"}}, "BIRTHDATE"),
        ({"TIMESTAMP": "2024-06-13 12:00"}, "TIMESTAMP"),
        ({"IDENTNROBFUSCATED": ""}, "IDENTNROBFUSCATED"),
    ],
)
def test_malformed_student_rows_are_rejected(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        CoStudent.model_validate({**FULL_STUDENT, **change})
    assert field in str(raised.value)


def test_study_and_application_rows() -> None:
    study = CoStudy.model_validate(FULL_STUDY)
    assert study.record_id == 253324 and not study.is_active
    assert int(study.timestamp(VIENNA).timestamp()) == 1718276895
    minimal_study = CoStudy.model_validate(
        {**FULL_STUDY, "STUDYEXMATRICULATIONDATE": {"value": None}, "ADDITIONALCERTIFICATE": None}
    )
    assert minimal_study.is_active

    application = CoApplication.model_validate(FULL_APPLICATION)
    assert application.is_live  # SOURCE is exactly "LiveSync"
    assert application.STSTUDIUMNR is None
    assert int(application.timestamp(VIENNA).timestamp()) == 1718272875
    with pytest.raises(ValidationError):
        CoApplication.model_validate({**FULL_APPLICATION, "APPLICANTQUALIFICATIONTYPE": "25"})


def test_envelope_rows_take_the_first_object_of_content() -> None:
    assert envelope_rows(envelope("DMSWhatever", [{"a": 1}])) == [{"a": 1}]
    assert envelope_rows({"type": "resources", "link": [], "resource": []}) == []
    with pytest.raises(ValueError, match="content missing"):
        envelope_rows({"resource": [{"content": {"type": "x"}}]})


# -- client ------------------------------------------------------------------------------------


@responses.activate
def test_the_token_is_fetched_once_and_sent_as_bearer() -> None:
    token = add_token()
    responses.get(STUDENTS_URL, json=students_page(1))
    client = make_client()
    assert len(list(client.rows(STUDENTS, filter=("StPersonNr", 1)))) == 1
    assert len(list(client.rows(STUDENTS, filter=("StPersonNr", 1)))) == 1
    assert token.call_count == 1
    form = dict(parse_qsl(responses.calls[0].request.body))
    assert form == {
        "client_id": "hubsync",
        "client_secret": "s3cret",
        "grant_type": "client_credentials",
    }
    assert all(c.request.headers["Authorization"] == "Bearer tok-1" for c in data_calls())
    assert all(c.request.headers["Accept"] == "application/json" for c in data_calls())


@responses.activate
def test_an_expired_token_is_refreshed_once_on_401() -> None:
    responses.post(TOKEN_URL, json={"access_token": "old"})
    responses.post(TOKEN_URL, json={"access_token": "new"})
    responses.get(STUDENTS_URL, json={"error": "invalid_token"}, status=401)
    responses.get(STUDENTS_URL, json=students_page(1))
    client = make_client()
    assert len(list(client.rows(STUDENTS))) == 1
    assert [c.request.headers["Authorization"] for c in data_calls()] == [
        "Bearer old",
        "Bearer new",
    ]


@responses.activate
def test_a_token_refused_twice_is_an_error_without_secrets() -> None:
    add_token("abc-secret-token")
    responses.get(STUDENTS_URL, json={"error": "invalid_token"}, status=401)
    with pytest.raises(ApiError) as raised:
        list(make_client().rows(STUDENTS, filter=("StPersonNr", 5)))
    assert raised.value.status == 401
    assert "abc-secret-token" not in str(raised.value) and "StPersonNr" not in str(raised.value)


@responses.activate
def test_refused_client_credentials_are_an_error() -> None:
    responses.post(TOKEN_URL, json={"error": "invalid_client"}, status=401)
    with pytest.raises(ApiError, match="invalid_client") as raised:
        list(make_client().rows(STUDENTS))
    assert "s3cret" not in str(raised.value)


@responses.activate
def test_query_parameters_follow_cos_order() -> None:
    add_token()
    responses.get(STUDENTS_URL, json=students_page(0))
    responses.get(STUDIES_URL, json=envelope("DMSStudies", []))
    client = make_client(page_size=123)
    since = parse_co_timestamp("13.06.2024T12:01:15", VIENNA)
    list(client.rows(STUDENTS, filter=("IdentNrObfuscated", "ABC"), last_sync=since))
    list(client.rows(STUDIES, only_inactive=True))
    first, second = data_calls()
    assert "?%24format=json&IdentNrObfuscated=ABC&PageNr=1&PageSize=123" in first.request.url
    assert first.request.url.endswith("&LastSyncDate=13.06.2024T12%3A01%3A15")
    assert query_of(second) == [
        ("$format", "json"),
        ("PageNr", "1"),
        ("PageSize", "123"),
        ("SyncOnlyInactive", "YES"),
    ]


def test_queries_cos_api_refuses_are_refused_before_sending() -> None:
    client = make_client()
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="cannot be filtered"):
        client.query(STUDENTS, filter=("StStudiumNr", 1))
    with pytest.raises(ValueError, match="active pool"):
        client.query(STUDENTS, last_sync=now, only_inactive=True)
    with pytest.raises(ValueError, match="no inactive pool"):
        client.query(APPLICATIONS, only_inactive=True)


@responses.activate
def test_paging_stops_on_a_short_page() -> None:
    add_token()
    responses.get(STUDENTS_URL, json=students_page(2, start=1))
    responses.get(STUDENTS_URL, json=students_page(1, start=3))
    responses.get(STUDENTS_URL, json=students_page(2, start=4))  # never requested
    pages = list(make_client(page_size=2).pages(STUDENTS, only_inactive=True))
    assert [len(p.rows) for p in pages] == [2, 1]
    assert [p.page_nr for p in pages] == [1, 2]
    assert [dict(query_of(c))["PageNr"] for c in data_calls()] == ["1", "2"]
    assert pages[1].request_params == {
        "PageNr": "2",
        "PageSize": "2",
        "SyncOnlyInactive": "YES",
    }


@responses.activate
def test_an_exactly_full_last_page_costs_one_empty_page() -> None:
    add_token()
    for first in (1, 3):  # two full pages of other applications (a repeated page would fail)
        rows = [{**FULL_APPLICATION, "BEWERBUNGNR": nr} for nr in (first, first + 1)]
        responses.get(APPLICANTS_URL, json=envelope("DMSApplicants", rows))
    responses.get(APPLICANTS_URL, json=envelope("DMSApplicants", []))
    pages = list(make_client(page_size=2).pages(APPLICATIONS))
    assert [len(p.rows) for p in pages] == [2, 2, 0]


@responses.activate
def test_the_next_page_is_fetched_while_the_caller_lands_a_full_one() -> None:
    add_token()
    responses.get(STUDENTS_URL, json=students_page(2, start=1))
    responses.get(STUDENTS_URL, json=students_page(1, start=3))
    pages = make_client(page_size=2).pages(STUDENTS)
    first = next(pages)
    wait_for_data_calls(2)  # the caller is still busy with page 1
    assert [dict(query_of(c))["PageNr"] for c in data_calls()] == ["1", "2"]
    assert [first.page_nr, *(p.page_nr for p in pages)] == [1, 2]
    assert len(data_calls()) == 2  # nothing asked for beyond the short page


@responses.activate
def test_a_caller_that_stops_early_leaves_no_request_behind() -> None:
    add_token()
    for start in (1, 3, 5):
        responses.get(STUDENTS_URL, json=students_page(2, start=start))
    pages = make_client(page_size=2).pages(STUDENTS)
    next(pages)
    wait_for_data_calls(2)
    pages.close()  # page 2 was under way: nothing is asked for after it
    time.sleep(0.05)
    assert [dict(query_of(c))["PageNr"] for c in data_calls()] == ["1", "2"]


@responses.activate
def test_the_broken_byte_is_stripped_before_parsing() -> None:
    add_token()
    text = json.dumps(students_page(1), ensure_ascii=False).replace(
        "some note", "Datensatz\x18 aus Altsystem"
    )
    responses.get(STUDENTS_URL, body=text.encode("utf-8"), content_type="application/json")
    (page,) = make_client().pages(STUDENTS)
    assert page.rows[0]["NOTE"] == "Datensatz aus Altsystem"
    assert b"\x18" not in page.body
    assert json.loads(page.body)["resource"][0]["content"]["DMSStudents"]["STPERSONNR"] == 1


@responses.activate
def test_5xx_and_429_are_retried_with_retry_after() -> None:
    add_token()
    responses.get(STUDENTS_URL, body="<html>503</html>", status=503)
    responses.get(STUDENTS_URL, body="<html>429</html>", status=429, headers={"Retry-After": "7"})
    responses.get(STUDENTS_URL, json=students_page(1))
    sleeps: list[float] = []
    client = make_client(sleeps=sleeps)
    assert len(list(client.rows(STUDENTS))) == 1
    assert len(sleeps) == 2 and sleeps[1] == 7.0
    assert client.http.stats.as_metadata()["retries"] == 2


@responses.activate
def test_a_persistent_5xx_is_an_api_error_naming_the_service() -> None:
    add_token()
    responses.get(STUDENTS_URL, body="<html>Service Unavailable</html>", status=503)
    with pytest.raises(ApiError) as raised:
        list(make_client().rows(STUDENTS, filter=("StPersonNr", 42)))
    error = raised.value
    assert error.status == 503
    assert "loc_api-dms.dmsstudents" in str(error) and "42" not in str(error)
    assert len(data_calls()) == 3  # retried up to the policy's attempts


@responses.activate
def test_a_400_reports_cos_message_and_is_not_retried() -> None:
    add_token()
    responses.get(
        STUDENTS_URL, json={"type": "error", "message": "only one filter is allowed"}, status=400
    )
    with pytest.raises(ApiError, match="only one filter is allowed"):
        list(make_client().rows(STUDENTS))
    assert len(data_calls()) == 1


@responses.activate
def test_a_body_that_is_not_an_envelope_is_an_api_error() -> None:
    add_token()
    responses.get(STUDENTS_URL, body="not json", status=200)
    with pytest.raises(ApiError, match="not valid JSON"):
        list(make_client().rows(STUDENTS))
    responses.replace(responses.GET, STUDENTS_URL, json={"resource": [{"content": {}}]})
    with pytest.raises(ApiError, match="content missing"):
        list(make_client().rows(STUDENTS))


def test_the_resource_is_built_from_the_settings_with_the_secret_as_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CO_CLIENT_SECRET", "real-secret")
    monkeypatch.setenv("CO_TIMEZONE", "Europe/London")
    monkeypatch.setenv("CO_PAGE_SIZE", "500")
    monkeypatch.setenv("CO_INCREMENTAL_THRESHOLD", "7")
    resource = campusonline_resource(load_settings().co)
    assert isinstance(resource, CampusOnlineResource)
    assert resource.timezone == "Europe/London" and resource.zone == LONDON
    assert (resource.page_size, resource.incremental_threshold) == (500, 7)
    assert resource.client_secret == dg.EnvVar("CO_CLIENT_SECRET")  # resolved in the run
    direct = campusonline_resource(load_settings().co, in_process=True)
    assert direct.client_secret == "real-secret"
    assert direct.client().page_size == 500
