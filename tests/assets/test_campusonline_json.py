import json
from zoneinfo import ZoneInfo

import pytest

from assets.campusonline import connector_json
from assets.campusonline.connector_json import (
    EXMATRICULATION_STATUSES,
    GENDERS,
    STUDENT_STATUSES,
    STUDY_STATUSES,
    additional_exams,
    co_model_from_row,
    country,
    enum,
    qualification_from_display_text,
    student_json,
)
from assets.campusonline.staging import typed_row
from resources.campusonline import CoApplication, CoStudent, CoStudy
from tests.resources.test_campusonline import FULL_APPLICATION, FULL_STUDENT, FULL_STUDY

LONDON = ZoneInfo("Europe/London")
STUDENT_KEYS = (
    "id, identNumberObfuscated, webUrl, syncDateTime, studentId, givenName, familyName, "
    "birthDate, studies, applications, nationality, nationalitySecondary, "
    "admissionQualificationType, admissionQualificationState, telephoneNumber, "
    "schoolCertificateDate, homeAddressNote, homeAddressStreet, homeAddressRegion, "
    "homeAddressPlace, homeAddressPostCode, homeAddressCountry, homeAddressTelephoneNumber, "
    "studyAddressNote, studyAddressStreet, studyAddressRegion, studyAddressPlace, "
    "studyAddressPostCode, studyAddressCountry, studyAddressTelephoneNumber, "
    "emailAddressUniversity, emailAddressConfirmed, emailAddressTemporary, personalStatus, "
    "studentStatus, tuitionStatus, tuitionExemptionType, immatriculationDate, "
    "exmatriculationStatus, immatriculationSemester, exmatriculationDate, "
    "exmatriculationSemester, studyLimitStartSemester, studyLimitEndSemester, "
    "academicTitlePreceding, academicTitleFollowing, formerFamilyName, socialSecurityNumber, "
    "sectorSpecificPersonalIdentifier, gender, note"
).split(", ")
STUDY_KEYS = (
    "id, studentPersonId, webUrl, key, type, name, semester, status, curriculumVersion, "
    "immatriculationDate, immatriculationSemester, exmatriculationDate, "
    "exmatriculationSemester, qualificationType, qualificationDate, qualificationState, "
    "exmatriculationType, additionalCertificates"
).split(", ")
APPLICATION_KEYS = (
    "id, studyId, studentPersonId, studyKey, studyName, studyType, startSemester, "
    "qualificationCertificateDate, qualificationIssuingCountry, qualificationType"
).split(", ")


def converted() -> dict:
    student = CoStudent.model_validate({**FULL_STUDENT, "TIMESTAMP": "13.06.2024T14:00:34"})
    study = CoStudy.model_validate({**FULL_STUDY, "STPERSONNR": 123123})
    application = CoApplication.model_validate(
        {**FULL_APPLICATION, "STPERSONNR": 123123, "STSTUDIUMNR": 253324}
    )
    return student_json(
        student, [study], [application], base_url="https://dummy.at/dummy/", zone=LONDON
    )


def test_key_order_and_id_types_match_the_connector() -> None:
    document = converted()
    assert list(document) == STUDENT_KEYS
    assert list(connector_json.STUDENT_KEYS) == STUDENT_KEYS  # export's null shape
    assert list(document["studies"][0]) == STUDY_KEYS
    assert list(document["applications"][0]) == APPLICATION_KEYS
    assert document["id"] == "123123"
    assert document["studies"][0]["id"] == "253324"
    assert document["studies"][0]["studentPersonId"] == "123123"
    assert document["studies"][0]["semester"] == 6
    assert document["applications"][0]["studyId"] == "253324"
    json.dumps(document)  # serialisable as it is


def test_derived_fields() -> None:
    document = converted()
    assert document["webUrl"] == "https://dummy.at/dummy/wbStEvidenz.StEvi?pStPersonNr=123123"
    assert document["studies"][0]["webUrl"] == (
        "https://dummy.at/dummy/wbStmStudiendaten.wbStudiendetails"
        "?pStPersonNr=123123&pStStudiumNr=253324"
    )
    # the oldest of the three rows (12:01:15 London), in UTC
    assert document["syncDateTime"] == "2024-06-13T11:01:15+00:00"
    assert document["birthDate"] == "1970-01-01"
    assert document["exmatriculationDate"] == "2023-10-31"


def test_enum_objects_and_translations_of_the_full_rows() -> None:
    document = converted()
    assert document["nationality"] == {
        "key": "11",
        "alpha3Code": "EGY",
        "translations": {"de": "Ägypten", "en": "Egypt"},
    }
    assert document["admissionQualificationState"]["alpha3Code"] == "BIH"
    assert document["gender"] == {"key": "M", "translations": {"de": "Männlich", "en": "Male"}}
    assert document["personalStatus"]["translations"] == {
        "de": "Voranmeldung",
        "en": "Pre-Registration",
    }
    assert document["studentStatus"]["translations"] == {
        "de": "Nicht Zugelassen",
        "en": "Not Admitted",
    }
    assert document["exmatriculationStatus"] == {
        "key": "EZ",
        "translations": {"de": "ex lege (EZ)", "en": "ex lege (EZ)"},
    }
    study = document["studies"][0]
    assert study["status"]["translations"] == {"de": "gemeldet", "en": "registered"}
    assert study["qualificationState"]["alpha3Code"] == "AUT"
    assert study["exmatriculationType"]["translations"]["en"] == "ex lege (EZ)"
    assert [c["key"] for c in study["additionalCertificates"]] == ["EDG", "EGR"]
    application = document["applications"][0]
    assert application["qualificationType"] == {
        "key": "25",
        "translations": {
            "de": "ausländische Reifeprüfung",
            "en": "foreign secondary school leaving exam",
        },
    }
    assert application["qualificationIssuingCountry"]["alpha3Code"] == "BIH"
    # tuition values are plain strings
    assert document["tuitionStatus"] == "Ausländer gleichgestellt"


def test_null_values_give_null_objects_and_empty_lists() -> None:
    student = CoStudent.model_validate(
        {**FULL_STUDENT, "NATIONALITYSECONDARYNR": None, "EXMATRICULATIONSTATUSKEY": None}
    )
    study = CoStudy.model_validate({**FULL_STUDY, "ADDITIONALCERTIFICATE": None})
    document = student_json(student, [study], [], base_url="https://x", zone=LONDON)
    assert document["nationalitySecondary"] is None
    assert document["exmatriculationStatus"] is None
    assert document["studies"][0]["additionalCertificates"] == []
    assert document["applications"] == []


def test_country_rules() -> None:
    assert country(168)["translations"] == {"de": "Österreich", "en": "Austria"}
    assert country(4242, "Bajor") == {
        "key": "4242",
        "alpha3Code": None,
        "translations": {"de": "Bajor", "en": "Bajor"},
    }
    assert country(4242)["translations"] == {
        "de": "Unbekannter Wert (4242)",
        "en": "unknown value (4242)",
    }
    assert country(249)["alpha3Code"] is None
    assert country(249)["translations"]["en"] == "European Union"
    assert country(257)["translations"]["de"] == "Kosovo"
    assert country(None) is None


def test_enum_rules() -> None:
    assert enum(GENDERS, "W")["translations"]["de"] == "Weiblich"
    assert enum(GENDERS, "P")["translations"] == {
        "de": "Unbekannter Wert (P)",
        "en": "unknown value (P)",
    }
    assert enum(GENDERS, "H", "Hello")["translations"] == {"de": "Hello", "en": "Hello"}
    assert enum(STUDENT_STATUSES, "A")["translations"]["de"] == "Außerordentlich"
    assert enum(EXMATRICULATION_STATUSES, "A")["translations"] == {
        "de": "auf Antrag (A)",
        "en": "auf Antrag (A)",
    }
    assert enum(EXMATRICULATION_STATUSES, "P", "foo (P)")["translations"]["en"] == "foo (P)"
    assert enum(STUDY_STATUSES, "G")["translations"]["en"] == "logically deleted"
    assert enum(STUDY_STATUSES, "Ö")["translations"]["en"] == "unknown value (Ö)"
    assert enum(GENDERS, None) is None


def test_qualifications_and_additional_exams() -> None:
    assert qualification_from_display_text("46 - IB Diploma (Ausland)")["translations"] == {
        "de": "IB Diploma (Ausland)",
        "en": "IB Diploma (foreign country)",
    }
    assert qualification_from_display_text("4242 - go go go")["translations"]["en"] == "go go go"
    assert enum({}, "1234")["translations"]["de"] == "Unbekannter Wert (1234)"
    with pytest.raises(ValueError):
        qualification_from_display_text("ausländische Reifeprüfung")
    assert additional_exams(None) == []
    foo, edg = additional_exams("FOO | EDG")
    assert foo["translations"]["en"] == "unknown value (FOO)"
    assert edg["translations"]["en"] == "suppl.exam. - Descriptive Geometry"


@pytest.mark.parametrize("stamp", ["13.06.2024T14:00:34", "27.10.2024T02:30:00"])  # incl. DST end
def test_a_warehouse_row_converts_back_to_the_api_row(stamp: str) -> None:
    zone = ZoneInfo("Europe/Vienna")
    for model, row in (
        (CoStudent, FULL_STUDENT),
        (CoStudy, FULL_STUDY),
        (CoApplication, FULL_APPLICATION),
    ):
        original = model.model_validate({**row, "TIMESTAMP": stamp})
        assert co_model_from_row(model, typed_row(original, zone), zone) == original
