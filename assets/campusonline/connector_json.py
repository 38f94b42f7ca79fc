"""One CAMPUSonline student as the connector's JSON (``reference/campusonline.md`` §3).

Every key is always present (null when missing), ids are strings, dates ``YYYY-MM-DD``, coded
values are enum objects ``{"key", "translations": {"de", "en"}}`` (country-like ones with an
``alpha3Code``). Translations: a known key gives its table entry (``de`` where a locale is
missing); an unknown key with CO's German text gives that text in both locales; anything else
gives ``Unbekannter Wert (<key>)`` / ``unknown value (<key>)``. The tables cover the values the
sandbox emits and the reference's test vectors, not CO's full catalogues.
"""

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from resources.campusonline import CoApplication, CoDate, CoRow, CoStudent, CoStudy

Row = TypeVar("Row", bound=CoRow)

Translations = dict[str, dict[str, str]]

GENDERS: Translations = {
    "M": {"de": "Männlich", "en": "Male"},
    "W": {"de": "Weiblich", "en": "Female"},
    "X": {"de": "Divers", "en": "Non-Binary"},
    "U": {"de": "Unbekannt", "en": "Unknown"},
}
STUDENT_STATUSES: Translations = {
    "A": {"de": "Außerordentlich", "en": "Extraordinary"},
    "M": {"de": "Mitbelegend", "en": "Co-Registered"},
    "E": {"de": "Nicht Zugelassen", "en": "Not Admitted"},
    "O": {"de": "Ordentlich", "en": "Regular"},
}
PERSONAL_STATUSES: Translations = {
    "Einschreibung offen": {"de": "Einschreibung offen", "en": "Enrollment Open"},
    "externe Person": {"de": "Externe Person", "en": "External Person"},
    "gültige/r Studierende/r": {"de": "Gültige/r Studierende/r", "en": "Valid Student"},
    "Voranmeldung": {"de": "Voranmeldung", "en": "Pre-Registration"},
}
STUDY_STATUSES: Translations = {
    "B": {"de": "gemeldet - Neueinschreibung", "en": "registered - new enrollment"},
    "E": {"de": "gemeldet - Ersteinschreibung", "en": "registered - first enrollment"},
    "I": {"de": "gemeldet", "en": "registered"},
    "U": {"de": "beurlaubt", "en": "on leave"},
    "X": {
        "de": "geschlossen (Abschluss u./o. keine Fortsetzung möglich)",
        "en": "closed (graduation or no continuation possible)",
    },
    "Z": {"de": "geschlossen (Antrag oder ex lege)", "en": "closed (on application or ex lege)"},
    "G": {"de": "logisch gelöscht", "en": "logically deleted"},
}
EXMATRICULATION_STATUSES: Translations = {
    "A": {"de": "auf Antrag (A)"},
    "E": {"de": "ex lege (E)"},
    "EZ": {"de": "ex lege (EZ)"},
    "G": {"de": "sonst.Gründe (G)"},
    "R": {"de": "Rücktritt Imm. (R)"},
    "U": {"de": "Abbruch Studium (U)"},
    "MNTC": {"de": "Schließung (MNTC)", "en": "degree program closing (MNTC)"},
}
QUALIFICATIONS: Translations = {
    "02": {"de": "Humanistisches Gymnasium", "en": "Humanistisches Gymnasium"},
    "03": {"de": "Neusprachliches Gymnasium", "en": "Neusprachliches Gymnasium"},
    "25": {"de": "ausländische Reifeprüfung", "en": "foreign secondary school leaving exam"},
    "41": {
        "de": "Master-/Diplomst.eigene Univ.",
        "en": "Master/ Diploma study programme at own university",
    },
    "46": {"de": "IB Diploma (Ausland)", "en": "IB Diploma (foreign country)"},
}
ADDITIONAL_EXAMS: Translations = {
    "ECH": {"de": "Erg.Prfg. - Chemie", "en": "suppl.exam. - Chemistry"},
    "EDG": {"de": "Erg.Prfg. - Darstellende Geometrie", "en": "suppl.exam. - Descriptive Geometry"},
    "EGR": {"de": "Erg.Prfg. - Griechisch", "en": "suppl.exam. - Greek"},
    "EPH": {"de": "Erg.Prfg. - Physik", "en": "suppl.exam. - Physics"},
}
# CO country number -> (ISO alpha-3 or None, de, en); CLDR names where an alpha-3 code exists.
COUNTRIES: dict[int, tuple[str | None, str, str]] = {
    11: ("EGY", "Ägypten", "Egypt"),
    40: ("BIH", "Bosnien und Herzegowina", "Bosnia & Herzegovina"),
    45: ("CHN", "China", "China"),
    54: ("DEU", "Deutschland", "Germany"),
    98: ("ITA", "Italien", "Italy"),
    168: ("AUT", "Österreich", "Austria"),
    197: ("TUR", "Türkei", "Türkiye"),
    249: (None, "Europäische Union", "European Union"),
    257: (None, "Kosovo", "Kosovo"),  # no ISO code; translated by hand like the connector
}

# The keys of student_json, in its order (a test keeps the two in step).
STUDENT_KEYS: tuple[str, ...] = (
    "id",
    "identNumberObfuscated",
    "webUrl",
    "syncDateTime",
    "studentId",
    "givenName",
    "familyName",
    "birthDate",
    "studies",
    "applications",
    "nationality",
    "nationalitySecondary",
    "admissionQualificationType",
    "admissionQualificationState",
    "telephoneNumber",
    "schoolCertificateDate",
    "homeAddressNote",
    "homeAddressStreet",
    "homeAddressRegion",
    "homeAddressPlace",
    "homeAddressPostCode",
    "homeAddressCountry",
    "homeAddressTelephoneNumber",
    "studyAddressNote",
    "studyAddressStreet",
    "studyAddressRegion",
    "studyAddressPlace",
    "studyAddressPostCode",
    "studyAddressCountry",
    "studyAddressTelephoneNumber",
    "emailAddressUniversity",
    "emailAddressConfirmed",
    "emailAddressTemporary",
    "personalStatus",
    "studentStatus",
    "tuitionStatus",
    "tuitionExemptionType",
    "immatriculationDate",
    "exmatriculationStatus",
    "immatriculationSemester",
    "exmatriculationDate",
    "exmatriculationSemester",
    "studyLimitStartSemester",
    "studyLimitEndSemester",
    "academicTitlePreceding",
    "academicTitleFollowing",
    "formerFamilyName",
    "socialSecurityNumber",
    "sectorSpecificPersonalIdentifier",
    "gender",
    "note",
)

_DISPLAY_TEXT = re.compile(r"^(\d+) - (.*)", re.DOTALL)


def translations(table: Translations, key: str, co_text: str | None = None) -> dict[str, str]:
    known = table.get(key)
    if known is None and co_text is not None:
        known = {"de": co_text}
    if known is None:
        return {"de": f"Unbekannter Wert ({key})", "en": f"unknown value ({key})"}
    return {"de": known["de"], "en": known.get("en", known["de"])}


def enum(table: Translations, key: str | None, co_text: str | None = None) -> dict | None:
    if key is None:
        return None
    return {"key": key, "translations": translations(table, key, co_text)}


def country(number: int | None, co_text: str | None = None) -> dict | None:
    if number is None:
        return None
    known = COUNTRIES.get(number)
    if known is not None:
        alpha3, de, en = known
        names = {"de": de, "en": en}
    else:
        alpha3 = None
        names = translations({}, str(number), co_text)
    return {"key": str(number), "alpha3Code": alpha3, "translations": names}


def qualification_from_display_text(text: str | None) -> dict | None:
    """``"25 - ausländische Reifeprüfung"`` → key ``25`` with the text as the German fallback."""
    if text is None:
        return None
    match = _DISPLAY_TEXT.match(text)
    if match is None:
        raise ValueError(f"invalid qualification format: {text!r}")
    return enum(QUALIFICATIONS, match.group(1), match.group(2))


def additional_exams(text: str | None) -> list[dict]:
    if text is None:
        return []
    return [enum(ADDITIONAL_EXAMS, item.strip()) for item in text.split(" | ") if item.strip()]


def co_model_from_row(model: type[Row], row: Mapping[str, Any], zone: ZoneInfo) -> Row:
    """A warehouse row of ``co_*`` back as the CO API row it was staged from: dates wrapped
    in ``{"value": …}`` again and TIMESTAMP as CO's local wall time (``DD.MM.YYYYTHH:MI:SS``)."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        value = row.get(name)
        if field.annotation is CoDate:
            values[name] = {"value": value.isoformat() if isinstance(value, date) else None}
        else:
            values[name] = value
    stamp: datetime = row["TIMESTAMP"]
    values["TIMESTAMP"] = stamp.astimezone(zone).strftime("%d.%m.%YT%H:%M:%S")
    return model.model_validate(values)


def _date(value: CoDate) -> str | None:
    return value.value.isoformat() if value.value is not None else None


def _id(value: int | None) -> str | None:
    return None if value is None else str(value)


def study_json(study: CoStudy, base_url: str) -> dict[str, Any]:
    return {
        "id": str(study.STSTUDIUMNR),
        "studentPersonId": str(study.STPERSONNR),
        "webUrl": (
            f"{base_url}/wbStmStudiendaten.wbStudiendetails"
            f"?pStPersonNr={study.STPERSONNR}&pStStudiumNr={study.STSTUDIUMNR}"
        ),
        "key": study.STUDYKEY,
        "type": study.STUDYTYPE,
        "name": study.STUDYNAME,
        "semester": study.STUDYSEMESTER,
        "status": enum(STUDY_STATUSES, study.STUDYSTATUSKEY, study.STUDYSTATUS),
        "curriculumVersion": study.STUDYCURRICULUMVERSION,
        "immatriculationDate": _date(study.STUDYIMMATRICULATIONDATE),
        "immatriculationSemester": study.STUDYIMMATRICULATIONSEMESTER,
        "exmatriculationDate": _date(study.STUDYEXMATRICULATIONDATE),
        "exmatriculationSemester": study.STUDYEXMATRICULATIONSEMESTER,
        "qualificationType": enum(
            QUALIFICATIONS, study.STUDYQUALIFICATIONTYPENR, study.STUDYQUALIFICATIONTYPE
        ),
        "qualificationDate": _date(study.STUDYQUALIFICATIONDATE),
        "qualificationState": country(
            study.STUDYQUALIFICATIONSTATENR, study.STUDYQUALIFICATIONSTATE
        ),
        "exmatriculationType": enum(
            EXMATRICULATION_STATUSES,
            study.STUDYEXMATRICULATIONTYPEKEY,
            study.STUDYEXMATRICULATIONTYPE,
        ),
        "additionalCertificates": additional_exams(study.ADDITIONALCERTIFICATE),
    }


def application_json(application: CoApplication) -> dict[str, Any]:
    return {
        "id": str(application.BEWERBUNGNR),
        "studyId": _id(application.STSTUDIUMNR),
        "studentPersonId": str(application.STPERSONNR),
        "studyKey": application.APPLICANTSTUDYKEY,
        "studyName": application.APPLICANTSTUDYNAME,
        "studyType": application.APPLICANTSTUDYTYPE,
        "startSemester": application.APPLICANTSTARTOFSTUDY,
        "qualificationCertificateDate": _date(application.APPLICANTQUALIFICATIONDATE),
        "qualificationIssuingCountry": country(
            application.APPLICANTQUALIFICATIONSTATENR, application.APPLICANTQUALIFICATIONSTATE
        ),
        "qualificationType": qualification_from_display_text(
            application.APPLICANTQUALIFICATIONTYPE
        ),
    }


def sync_date_time(
    student: CoStudent,
    studies: list[CoStudy],
    applications: list[CoApplication],
    zone: ZoneInfo,
) -> str:
    """The oldest TIMESTAMP of the student's rows, in UTC (the data is at least this new)."""
    oldest = min(row.timestamp(zone) for row in [student, *studies, *applications])
    return oldest.astimezone(UTC).isoformat()


def student_json(
    student: CoStudent,
    studies: list[CoStudy],
    applications: list[CoApplication],
    *,
    base_url: str,
    zone: ZoneInfo,
) -> dict[str, Any]:
    """The connector's JSON of one student with embedded studies and applications."""
    base_url = base_url.rstrip("/")
    s = student
    return {
        "id": str(s.STPERSONNR),
        "identNumberObfuscated": s.IDENTNROBFUSCATED,
        "webUrl": f"{base_url}/wbStEvidenz.StEvi?pStPersonNr={s.STPERSONNR}",
        "syncDateTime": sync_date_time(s, studies, applications, zone),
        "studentId": s.STUDID,
        "givenName": s.GIVENNAME,
        "familyName": s.FAMILYNAME,
        "birthDate": _date(s.BIRTHDATE),
        "studies": [study_json(study, base_url) for study in studies],
        "applications": [application_json(a) for a in applications],
        "nationality": country(s.NATIONALITYNR, s.NATIONALITY),
        "nationalitySecondary": country(s.NATIONALITYSECONDARYNR, s.NATIONALITYSECONDARY),
        "admissionQualificationType": enum(
            QUALIFICATIONS, s.ADMISSIONQUALIFICATIONTYPENR, s.ADMISSIONQUALIFICATIONTYPE
        ),
        "admissionQualificationState": country(
            s.ADMISSIONQUALIFICATIONSTATENR, s.ADMISSIONQUALIFICATIONSTATE
        ),
        "telephoneNumber": s.TELEPHONE,
        "schoolCertificateDate": _date(s.SCHOOLCERTIFICATEDATE),
        "homeAddressNote": s.HOMEADDRESSNOTE,
        "homeAddressStreet": s.HOMEADDRESSSTREET,
        "homeAddressRegion": s.HOMEADDRESSREGION,
        "homeAddressPlace": s.HOMEADDRESSPLACE,
        "homeAddressPostCode": s.HOMEADDRESSPOSTCODE,
        "homeAddressCountry": country(s.HOMEADDRESSCOUNTRYNR, s.HOMEADDRESSCOUNTRY),
        "homeAddressTelephoneNumber": s.HOMEADDRESSTELEPHONE,
        "studyAddressNote": s.STUDADDRESSNOTE,
        "studyAddressStreet": s.STUDADDRESSSTREET,
        "studyAddressRegion": s.STUDADDRESSREGION,
        "studyAddressPlace": s.STUDADDRESSPLACE,
        "studyAddressPostCode": s.STUDADDRESSPOSTCODE,
        "studyAddressCountry": country(s.STUDADDRESSCOUNTRYNR, s.STUDADDRESSCOUNTRY),
        "studyAddressTelephoneNumber": s.STUDADDRESSTELEPHONE,
        "emailAddressUniversity": s.EMAILADDRESSTU,
        "emailAddressConfirmed": s.EMAILADDRESSCONFIRMED,
        "emailAddressTemporary": s.EMAILADDRESSTEMPORARY,
        "personalStatus": enum(PERSONAL_STATUSES, s.PERSSTATUS, s.PERSSTATUS),
        "studentStatus": enum(STUDENT_STATUSES, s.STUDSTATUSKEY, s.STUDSTATUS),
        "tuitionStatus": s.TUITIONSTATUS,
        "tuitionExemptionType": s.TUITIONEXEMPTIONTYPE,
        "immatriculationDate": _date(s.IMMATRICULATIONDATE),
        "exmatriculationStatus": enum(
            EXMATRICULATION_STATUSES, s.EXMATRICULATIONSTATUSKEY, s.EXMATRICULATIONSTATUS
        ),
        "immatriculationSemester": s.IMMATRICULATIONSEMESTER,
        "exmatriculationDate": _date(s.EXMATRICULATIONDATE),
        "exmatriculationSemester": s.EXMATRICULATIONSEMESTER,
        "studyLimitStartSemester": s.TERMSTART,
        "studyLimitEndSemester": s.TERMEND,
        "academicTitlePreceding": s.ACADEMICTITLEPRECEDING,
        "academicTitleFollowing": s.ACADEMICTITLEFOLLOWING,
        "formerFamilyName": s.FORMERFAMILYNAME,
        "socialSecurityNumber": s.SOCIALSECURITYNR,
        "sectorSpecificPersonalIdentifier": s.BPK,
        "gender": enum(GENDERS, s.GENDERKEY, s.GENDER),
        "note": s.NOTE,
    }
