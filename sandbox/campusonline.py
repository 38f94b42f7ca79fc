"""The sandbox CAMPUSonline (CO) "DMS" student API: token endpoint plus three ``pl/rest`` services.

What it simulates (``/work/shared/seeds/000_*.txt``, ``/work/shared/reference/campusonline.md``):

* ``POST /wbOAuth2.token`` (client credentials) and bearer-token access to
  ``GET /pl/rest/loc_api-dms.dmsstudents/``, ``.../loc_api-dms.dmsstudies/`` and
  ``.../loc_api-dms.dmsapplicants/`` with the ``pl/rest`` envelope, the exact row field names and
  JSON types of reference §2a–§2c (ids are ints, qualification numbers zero-padded strings, dates
  are ``{"value": "YYYY-MM-DD"}`` objects whose ``value`` may be null);
* the query parameters: at most one filter (``StPersonNr`` on every service, ``IdentNrObfuscated``
  on students, ``StStudiumNr`` on studies and applicants), ``PageNr``/``PageSize``,
  ``LastSyncDate`` (``DD.MM.YYYYTHH:MI:SS`` in CO local time) and ``SyncOnlyInactive=YES``;
* the "broken output" the connector strips: the ``NOTE`` of every student whose
  ``STPERSONNR % 53 == 0`` carries a raw U+0018 byte, so such a body is not valid JSON until the
  client removes ``\\x18``;
* the materialised view and LiveSync, modelled like this (``P`` = ``view_refresh_seconds``):

  - the view is refreshed at instants aligned to the Unix epoch; the latest refresh is
    ``T_v = floor(now / P) * P`` (world clock);
  - a filtered call (``StPersonNr``/``IdentNrObfuscated``/``StStudiumNr``) reads the live DB:
    every row has ``SOURCE = "LiveSync[Single|Normal]"`` and ``TIMESTAMP`` = now;
  - in a list call a record changed since the last refresh (``modified_at > T_v``) comes back live
    (``LiveSync[Single|Normal]``, ``TIMESTAMP`` = now), every other record is a view row
    (``SOURCE = "DMSView"``, ``TIMESTAMP = T_v``, shared by all view rows of one refresh);
  - a delta call (``LastSyncDate = L``, active pool only) returns the active records changed since
    the last refresh (live rows), the active records whose *view change time* - the first refresh
    instant ``>= modified_at`` - is ``>= L`` (view rows with ``TIMESTAMP = T_v``; ``>=``, so the
    rows of refresh ``L`` come back once more), and every record that moved from the active to the
    inactive pool at or after ``L`` (``deactivated_at >= L``) as a live row showing its
    exmatriculation;
  - which pool a record is in is always its current state (active = no exmatriculation date;
    applications have no inactive pool), so an exmatriculated student leaves the active list at
    once and shows up in the inactive list as a live row until the next refresh.

Choices the documents do not fix (all deliberate, all tested):

* Errors of the data services are ``{"type": "error", "message": "..."}`` (the sandbox's choice;
  the documents show no CO error body): 400 for a bad query
  (two filters, a filter the service does not know, any unknown or repeated parameter,
  ``$format`` other than ``json``, ``SyncOnlyInactive`` with ``LastSyncDate``, ``SyncOnlyInactive``
  on applicants or with a value other than ``YES``/``NO``, a malformed or impossible
  ``LastSyncDate``, a non-integer filter number, an empty filter value, ``PageNr``/``PageSize``
  not an integer >= 1, ``PageNr`` without ``PageSize``), 404 for an unknown path or service, 405
  for another method. Parameter names are case-sensitive; ``$format=json`` is optional (JSON is
  the only format served). ``PageSize`` without ``PageNr`` means page 1.
* The bearer token is checked before the query and the service name. Missing, unknown and expired
  tokens all get 401 ``{"error": "invalid_token"}`` with ``WWW-Authenticate: Bearer
  error="invalid_token"``. Tokens live ``token_ttl`` seconds of world-clock time.
* The token endpoint takes the client credentials as form fields or, failing those, as HTTP Basic
  auth; it checks the client first (401 ``invalid_client``), then ``grant_type`` (missing: 400
  ``invalid_request``; other: 400 ``unsupported_grant_type``).
* A filter returns every matching record whatever its pool (the connector's per-student
  refetch needs inactive studies too); ``SyncOnlyInactive=YES`` narrows it to inactive records
  and ``LastSyncDate`` to the records the delta would contain. Filtered rows are always live.
  ``IdentNrObfuscated`` matches case-insensitively.
* Rows are ordered by their id (``STPERSONNR``, ``STSTUDIUMNR``, ``BEWERBUNGNR``); pages are
  slices of that order.
* Live rows of all three services use ``"LiveSync[Single|Normal]"`` (the reference fixture of
  applications uses plain ``"LiveSync"``; clients must test the prefix), view rows ``"DMSView"``.
* Injected 5xx and 429 faults answer like the reverse proxy in front of CO would: a small HTML
  page (429 with ``Retry-After``), not JSON.
* Fields the world does not model (second nationality, addresses, telephone numbers, private
  e-mails, tuition, titles, former name, social security number, bPK, study limits, notes, study
  qualification, ...) are derived from ``random.Random(<own id>)``: realistic Austrian values,
  many null, stable across world changes. A study's qualification is "41" (own university's
  degree) for master and doctoral programmes, else the student's admission qualification;
  ``TERMSTART``/``TERMEND`` are set only for non-degree students (status A, M).
* Bodies are compact UTF-8 JSON (``application/json; charset=utf-8``); token responses carry
  ``Cache-Control: no-store``.

Admin routes (besides the framework's ``/_sandbox/faults`` and ``/_sandbox/requests``):
``GET /_sandbox/co/state`` (world time, last and next view refresh, live tokens) and
``POST /_sandbox/co/tokens/revoke`` (forget every issued token, like a CO restart).
"""

from __future__ import annotations

import base64
import functools
import json
import random
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.http import FaultConfig, HttpError, Request, Response, SandboxServer
from sandbox.world import (
    EXMAT_STATUS_TEXT,
    FAMILY,
    GENDER_TEXT,
    NATIONALITIES,
    PROGRAMS,
    QUALIFICATIONS,
    STUD_STATUS_TEXT,
    STUDY_STATUS_TEXT,
    CoApplication,
    CoStudent,
    CoStudy,
    Person,
    World,
    semester_token,
)

CO_TIMESTAMP_FORMAT = "%d.%m.%YT%H:%M:%S"
LIVE_SOURCE = "LiveSync[Single|Normal]"
VIEW_SOURCE = "DMSView"
CONTENT_TYPE = "model-eg.dataservices.tugrazonline"
BROKEN_BYTE = "\x18"
BROKEN_NOTE_MODULUS = 53

STUDENTS_SERVICE = "loc_api-dms.dmsstudents"
STUDIES_SERVICE = "loc_api-dms.dmsstudies"
APPLICANTS_SERVICE = "loc_api-dms.dmsapplicants"

FILTERS = ("StPersonNr", "IdentNrObfuscated", "StStudiumNr")
OTHER_PARAMETERS = ("$format", "PageNr", "PageSize", "LastSyncDate", "SyncOnlyInactive")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VIENNA = ZoneInfo("Europe/Vienna")
_TIMESTAMP_RE = re.compile(r"([0-9]{2})\.([0-9]{2})\.([0-9]{4})T([0-9]{2}):([0-9]{2}):([0-9]{2})")
_ESCAPED_BROKEN_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0018")

Record = CoStudent | CoStudy | CoApplication


# --------------------------------------------------------------------------------------------
# Timestamps


def format_co_timestamp(dt: datetime, zone: ZoneInfo) -> str:
    """An aware instant as CO writes it: ``DD.MM.YYYYTHH:MI:SS`` in ``zone``, no offset."""
    if dt.tzinfo is None:
        raise ValueError("format_co_timestamp needs an aware datetime")
    return dt.astimezone(zone).strftime(CO_TIMESTAMP_FORMAT)


def parse_co_timestamp(text: str, zone: ZoneInfo) -> datetime:
    """A CO ``DD.MM.YYYYTHH:MI:SS`` local time in ``zone`` as an aware UTC datetime.

    Resolves like PHP: an ambiguous (autumn) wall time is the later, standard-time instant
    (``fold=1``); a wall time in the spring gap is read with the offset before the gap. Raises
    :class:`ValueError` when the text does not have that shape or names an impossible date.
    """
    found = _TIMESTAMP_RE.fullmatch(text)
    if not found:
        raise ValueError(f"not a CO timestamp (DD.MM.YYYYTHH:MI:SS): {text!r}")
    day, month, year, hour, minute, second = map(int, found.groups())
    naive = datetime(year, month, day, hour, minute, second)
    return _attach_zone(naive, zone).astimezone(UTC)


def _attach_zone(naive: datetime, zone: ZoneInfo) -> datetime:
    early = naive.replace(tzinfo=zone, fold=0)
    late = naive.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early
    in_gap = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
    return early if in_gap else late


# --------------------------------------------------------------------------------------------
# The materialised view


class ViewClock:
    """The instant of a request and the view refresh it sees (``period`` in seconds)."""

    __slots__ = ("now", "period", "refreshed_at")

    def __init__(self, now: datetime, period: int) -> None:
        self.now = now
        self.period = timedelta(seconds=period)
        # T_v: the latest refresh instant at or before now (epoch-aligned).
        self.refreshed_at = _EPOCH + ((now - _EPOCH) // self.period) * self.period

    @property
    def next_refresh_at(self) -> datetime:
        return self.refreshed_at + self.period

    def is_live(self, modified_at: datetime) -> bool:
        """Changed since the last refresh: the view does not have it yet."""
        return modified_at > self.refreshed_at

    def change_refresh(self, modified_at: datetime) -> datetime:
        """The first refresh instant at or after ``modified_at`` (when the view got the change)."""
        floor = _EPOCH + ((modified_at - _EPOCH) // self.period) * self.period
        return floor if floor == modified_at else floor + self.period


# --------------------------------------------------------------------------------------------
# Derived data the world does not model


_COUNTRY_NAMES = {nr: name for nr, name, _ in NATIONALITIES}
_QUALIFICATION_TEXT = dict(QUALIFICATIONS)
_AUSTRIA = 168
_EU = (54, 98)
_FOREIGN_QUALIFICATIONS = ("25", "46")

_AUSTRIAN_PLACES: tuple[tuple[str, str, str], ...] = (
    ("8010", "Graz", "Steiermark"),
    ("8020", "Graz", "Steiermark"),
    ("8700", "Leoben", "Steiermark"),
    ("8200", "Gleisdorf", "Steiermark"),
    ("8934", "Altenmarkt bei Sankt Gallen", "Steiermark"),
    ("8330", "Feldbach", "Steiermark"),
    ("1010", "Wien", "Wien"),
    ("1100", "Wien", "Wien"),
    ("4020", "Linz", "Oberösterreich"),
    ("4730", "Waizenkirchen", "Oberösterreich"),
    ("5020", "Salzburg", "Salzburg"),
    ("6020", "Innsbruck", "Tirol"),
    ("9020", "Klagenfurt am Wörthersee", "Kärnten"),
    ("9500", "Villach", "Kärnten"),
    ("7000", "Eisenstadt", "Burgenland"),
    ("3100", "St. Pölten", "Niederösterreich"),
    ("6900", "Bregenz", "Vorarlberg"),
)
_GRAZ_PLACES: tuple[tuple[str, str, str], ...] = tuple(
    (code, "Graz", "Steiermark") for code in ("8010", "8020", "8036", "8042", "8043", "8045")
)
_FOREIGN_PLACES: dict[int, tuple[tuple[str, str, str | None], ...]] = {
    54: (("80331", "München", "Bayern"), ("10115", "Berlin", "Berlin")),
    98: (("39100", "Bozen", "Trentino-Südtirol"), ("20121", "Mailand", "Lombardei")),
    40: (("71000", "Sarajevo", None), ("88000", "Mostar", None)),
    197: (("34000", "Istanbul", None), ("06000", "Ankara", None)),
    11: (("11511", "Kairo", None),),
    257: (("10000", "Prishtina", None),),
    45: (("100000", "Peking", None), ("200000", "Shanghai", None)),
    4242: (("4242", "Ashalla", None),),
}
_STREETS = (
    "Hauptstraße",
    "Bahnhofstraße",
    "Schulgasse",
    "Kirchengasse",
    "Inffeldgasse",
    "Petersgasse",
    "Lessingstraße",
    "Elisabethstraße",
    "Mozartgasse",
    "Annenstraße",
    "Kopernikusgasse",
    "Rechbauerstraße",
    "Münzgrabenstraße",
    "Steyrergasse",
    "Lindenweg",
    "Am Feld",
)
_DORMS = ("Studierendenheim Hafnerriegel", "Home Base Graz", "Wohnheim Rosegger", "WG Zimmer 3")
_MOBILE_PREFIXES = ("0650", "0660", "0664", "0676", "0677", "0681", "0699")
_MAIL_DOMAINS = ("gmx.at", "gmail.com", "outlook.com", "aon.at", "icloud.com", "web.de")
_NOTES = (
    "Unterlagen nachgereicht",
    "Zeugnis im Original vorgelegt",
    "Studienbeitrag gestundet",
    "Rückfrage Studienservice",
    "Nostrifizierung beantragt",
)
_BROKEN_NOTE = f"Datensatz{BROKEN_BYTE} aus Altsystem übernommen"
_TUITION_FOREIGN = ("Ausländer gleichgestellt", "Drittstaatsangehörige/r", "Ausländer/in")
_TUITION_EXEMPTIONS = ("L Lehrgang", "B Beurlaubung", "E Erkrankung", "K Kinderbetreuung")
_TITLES_PRECEDING = ("Ing.", "Dipl.-Ing.", "Mag.", "BEd")
_TITLES_FOLLOWING = ("BSc", "MSc", "BA", "MA")
_SVNR_WEIGHTS = (3, 7, 9, 0, 5, 8, 4, 2, 1, 6)


def _pick(rng: random.Random, items: Sequence[Any]) -> Any:
    """``rng.choice`` with exactly one draw (faster; fixes the stream's position)."""
    return items[int(rng.random() * len(items))]


def _between(rng: random.Random, low: int, high: int) -> int:
    """``rng.randint`` with exactly one draw."""
    return low + int(rng.random() * (high - low + 1))


@functools.lru_cache(maxsize=4096)
def _ascii_lower(text: str) -> str:
    text = text.replace("ß", "ss")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded if ch.isalnum()).lower()


def _country(nr: int | None) -> str | None:
    return None if nr is None else _COUNTRY_NAMES.get(nr, f"Land {nr}")


def _date_value(day: date | None) -> dict[str, str | None]:
    return {"value": day.isoformat() if day else None}


def _mobile(rng: random.Random) -> str:
    return _pick(rng, _MOBILE_PREFIXES) + f"{_between(rng, 0, 9_999_999):07d}"


def _svnr(rng: random.Random, birth: date) -> str:
    """A valid Austrian social security number: serial, check digit, birth date ``DDMMYY``."""
    tail = f"{birth.day:02d}{birth.month:02d}{birth.year % 100:02d}"
    while True:
        serial = f"{_between(rng, 100, 999)}"
        digits = [int(ch) for ch in serial + "0" + tail]
        check = sum(d * w for d, w in zip(digits, _SVNR_WEIGHTS, strict=True)) % 11
        if check < 10:
            return f"{serial}{check}{tail}"


def _address(
    rng: random.Random,
    places: Sequence[tuple[str, str, str | None]],
    country: int,
    note: str | None,
) -> dict[str, Any]:
    postcode, place, region = _pick(rng, places)
    street = f"{_pick(rng, _STREETS)} {_between(rng, 1, 120)}"
    return {
        "NOTE": note,
        "STREET": street,
        "PLACE": place,
        "POSTCODE": postcode,
        "REGION": region,
        "COUNTRYNR": country,
        "COUNTRY": _country(country),
        "TELEPHONE": _mobile(rng) if rng.random() < 0.3 else None,
    }


def _address_fields(prefix: str, address: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("NOTE", "STREET", "PLACE", "POSTCODE", "REGION", "COUNTRYNR", "COUNTRY", "TELEPHONE")
    return {f"{prefix}{key}": (address or {}).get(key) for key in keys}


def _home_address(rng: random.Random, student: CoStudent, family: str) -> dict[str, Any] | None:
    present = rng.random() < 0.85
    abroad = student.nationality_nr in _FOREIGN_PLACES and rng.random() < 0.6
    note = (
        f"c/o {_pick(rng, ('Familie', 'Erika', 'Josef'))} {family}" if rng.random() < 0.08 else None
    )
    if abroad:
        country = student.nationality_nr
        address = _address(rng, _FOREIGN_PLACES[country], country, note)
    else:
        address = _address(rng, _AUSTRIAN_PLACES, _AUSTRIA, note)
    return address if present else None


def _study_address(rng: random.Random) -> dict[str, Any] | None:
    present, dorm = rng.random() < 0.6, _pick(rng, _DORMS)
    address = _address(rng, _GRAZ_PLACES, _AUSTRIA, dorm if rng.random() < 0.15 else None)
    return address if present else None


def _second_nationality(rng: random.Random, student: CoStudent) -> int | None:
    candidate = _pick(rng, [nr for nr, _, _ in NATIONALITIES if nr != student.nationality_nr])
    return candidate if rng.random() < 0.06 else None


def _qualification_state(rng: random.Random, student: CoStudent) -> int | None:
    known = rng.random() < 0.85
    if student.qualification_type_nr in _FOREIGN_QUALIFICATIONS:
        state = student.nationality_nr if student.nationality_nr != _AUSTRIA else 54
    else:
        state = _AUSTRIA
    return state if known else None


def _tuition(rng: random.Random, student: CoStudent) -> tuple[str | None, str | None]:
    status_draw, foreign, exemption = rng.random(), _pick(rng, _TUITION_FOREIGN), rng.random()
    if student.nationality_nr == _AUSTRIA:
        status = "Inländer/in" if status_draw < 0.7 else None
    elif student.nationality_nr in _EU:
        status = "EU/EWR-Bürger/in gleichgestellt" if status_draw < 0.7 else None
    else:
        status = foreign if status_draw < 0.8 else None
    return status, _pick(rng, _TUITION_EXEMPTIONS) if exemption < 0.07 else None


def _private_emails(
    rng: random.Random, person: Person, student: CoStudent
) -> tuple[str | None, str | None]:
    local = f"{_ascii_lower(person.given)}.{_ascii_lower(person.family)}"
    confirmed = f"{local}{_between(rng, 1, 99)}@{_pick(rng, _MAIL_DOMAINS)}"
    has_confirmed, has_temporary = rng.random() < 0.7, rng.random()
    temporary_share = 0.6 if student.status_key == "E" else 0.03
    temporary = f"{local}.temp@{_pick(rng, _MAIL_DOMAINS)}"
    return (
        confirmed if has_confirmed else None,
        temporary if has_temporary < temporary_share else None,
    )


def _term_limits(student: CoStudent) -> tuple[str | None, str | None]:
    """Study limits (``TERMSTART``/``TERMEND``) only for non-degree students (A, M)."""
    if student.status_key not in ("A", "M"):
        return None, None
    return semester_token(student.immat_date), semester_token(
        student.immat_date + timedelta(days=183)
    )


def _note(rng: random.Random, student: CoStudent) -> str | None:
    if student.stpersonnr % BROKEN_NOTE_MODULUS == 0:
        return _BROKEN_NOTE
    return _pick(rng, _NOTES) if rng.random() < 0.05 else None


def _bpk(rng: random.Random) -> str:
    return base64.b64encode(rng.getrandbits(160).to_bytes(20, "big")).decode("ascii")


def _student_extras(student: CoStudent, person: Person) -> dict[str, Any]:
    """Fields the world does not model, from ``random.Random(stpersonnr)``.

    The draws depend only on fields that never change, so a record keeps its values when the
    world changes its name or exmatriculates it.
    """
    rng = random.Random(student.stpersonnr)
    secondary = _second_nationality(rng, student)
    certificate = student.immat_date - timedelta(days=_between(rng, 60, 700))
    has_certificate = rng.random() < 0.8
    home = _home_address(rng, student, person.family)
    study = _study_address(rng)
    confirmed, temporary = _private_emails(rng, person, student)
    tuition, exemption = _tuition(rng, student)
    austrian = student.nationality_nr == _AUSTRIA
    svnr = _svnr(rng, person.birth)
    has_svnr = rng.random() < (0.9 if austrian else 0.15)
    bpk = _bpk(rng)
    return {
        "NATIONALITYSECONDARYNR": secondary,
        "NATIONALITYSECONDARY": _country(secondary),
        "SCHOOLCERTIFICATEDATE": _date_value(certificate if has_certificate else None),
        "_QUALIFICATION_STATE": _qualification_state(rng, student),
        "TELEPHONE": _mobile(rng) if rng.random() < 0.55 else None,
        "HOME": home,
        "STUD": study,
        "EMAILADDRESSCONFIRMED": confirmed,
        "EMAILADDRESSTEMPORARY": temporary,
        "TUITIONSTATUS": tuition,
        "TUITIONEXEMPTIONTYPE": exemption,
        "ACADEMICTITLEPRECEDING": _pick(rng, _TITLES_PRECEDING) if rng.random() < 0.05 else None,
        "ACADEMICTITLEFOLLOWING": _pick(rng, _TITLES_FOLLOWING) if rng.random() < 0.1 else None,
        "FORMERFAMILYNAME": _pick(rng, FAMILY) if rng.random() < 0.03 else None,
        "SOCIALSECURITYNR": svnr if has_svnr else None,
        "BPK": bpk if austrian and rng.random() < 0.7 else None,
        "NOTE": _note(rng, student),
    }


# --------------------------------------------------------------------------------------------
# Rows


def _stamp(ts: datetime | str, zone: ZoneInfo) -> str:
    return ts if isinstance(ts, str) else format_co_timestamp(ts, zone)


def student_row(
    world: World, student: CoStudent, source: str, ts: datetime | str, *, zone: ZoneInfo = VIENNA
) -> dict[str, Any]:
    """One ``DMSStudents`` row (reference §2a): field names, order and JSON types of CO.

    ``ts`` is the row's ``TIMESTAMP``: an aware datetime (written in ``zone``) or a CO string.
    The caller holds ``world.lock``.
    """
    person = world.persons[student.pid]
    extra = _student_extras(student, person)
    qualification_state = extra["_QUALIFICATION_STATE"]
    exmat_status = student.exmat_status_key
    term_start, term_end = _term_limits(student)
    return {
        "SOURCE": source,
        "TIMESTAMP": _stamp(ts, zone),
        "STPERSONNR": student.stpersonnr,
        "STUDID": student.studid,
        "GIVENNAME": person.given,
        "FAMILYNAME": person.family,
        "BIRTHDATE": _date_value(person.birth),
        "IDENTNROBFUSCATED": student.ident_obf,
        "NATIONALITYNR": student.nationality_nr,
        "NATIONALITY": _country(student.nationality_nr),
        "NATIONALITYSECONDARYNR": extra["NATIONALITYSECONDARYNR"],
        "NATIONALITYSECONDARY": extra["NATIONALITYSECONDARY"],
        "ADMISSIONQUALIFICATIONTYPENR": student.qualification_type_nr,
        "ADMISSIONQUALIFICATIONTYPE": _QUALIFICATION_TEXT.get(student.qualification_type_nr),
        "SCHOOLCERTIFICATEDATE": extra["SCHOOLCERTIFICATEDATE"],
        "ADMISSIONQUALIFICATIONSTATENR": qualification_state,
        "ADMISSIONQUALIFICATIONSTATE": _country(qualification_state),
        "TELEPHONE": extra["TELEPHONE"],
        **_address_fields("HOMEADDRESS", extra["HOME"]),
        **_address_fields("STUDADDRESS", extra["STUD"]),
        "EMAILADDRESSTU": student.email_tu,
        "EMAILADDRESSCONFIRMED": extra["EMAILADDRESSCONFIRMED"],
        "EMAILADDRESSTEMPORARY": extra["EMAILADDRESSTEMPORARY"],
        "PERSSTATUS": student.personal_status,
        "STUDSTATUSKEY": student.status_key,
        "STUDSTATUS": STUD_STATUS_TEXT.get(student.status_key, student.status_key),
        "TUITIONSTATUS": extra["TUITIONSTATUS"],
        "TUITIONEXEMPTIONTYPE": extra["TUITIONEXEMPTIONTYPE"],
        "IMMATRICULATIONDATE": _date_value(student.immat_date),
        "IMMATRICULATIONSEMESTER": student.immat_semester,
        "EXMATRICULATIONSTATUSKEY": exmat_status,
        "EXMATRICULATIONSTATUS": EXMAT_STATUS_TEXT.get(exmat_status) if exmat_status else None,
        "EXMATRICULATIONDATE": _date_value(student.exmat_date),
        "EXMATRICULATIONSEMESTER": student.exmat_semester,
        "TERMSTART": term_start,
        "TERMEND": term_end,
        "ACADEMICTITLEPRECEDING": extra["ACADEMICTITLEPRECEDING"],
        "ACADEMICTITLEFOLLOWING": extra["ACADEMICTITLEFOLLOWING"],
        "FORMERFAMILYNAME": extra["FORMERFAMILYNAME"],
        "SOCIALSECURITYNR": extra["SOCIALSECURITYNR"],
        "BPK": extra["BPK"],
        "GENDERKEY": person.gender,
        "GENDER": GENDER_TEXT.get(person.gender, person.gender),
        "NOTE": extra["NOTE"],
    }


def _study_qualification(
    world: World, study: CoStudy
) -> tuple[str | None, date | None, int | None]:
    """Type number, date and state of the qualification a study was admitted on (derived)."""
    rng = random.Random(study.ststudiumnr)
    known, offset, state_draw = rng.random() < 0.9, _between(rng, 30, 400), rng.random()
    student = world.co_students.get(study.stpersonnr)
    if PROGRAMS[study.program].type != "Bachelorstudium":
        type_nr = "41"
    else:
        type_nr = student.qualification_type_nr if student else QUALIFICATIONS[0][0]
    state = _AUSTRIA
    if type_nr in _FOREIGN_QUALIFICATIONS and student and student.nationality_nr != _AUSTRIA:
        state = student.nationality_nr
    if not known:
        return None, None, None
    return type_nr, study.immat_date - timedelta(days=offset), state if state_draw < 0.9 else None


def study_row(
    world: World, study: CoStudy, source: str, ts: datetime | str, *, zone: ZoneInfo = VIENNA
) -> dict[str, Any]:
    """One ``DMSStudies`` row (reference §2b). The caller holds ``world.lock``."""
    program = PROGRAMS[study.program]
    exmat_type = study.exmat_type_key
    qualification, qualification_date, qualification_state = _study_qualification(world, study)
    return {
        "SOURCE": source,
        "TIMESTAMP": _stamp(ts, zone),
        "STSTUDIUMNR": study.ststudiumnr,
        "STPERSONNR": study.stpersonnr,
        "STUDYKEY": program.key,
        "STUDYTYPE": program.type,
        "STUDYNAME": program.name,
        "STUDYSEMESTER": study.semester,
        "STUDYSTATUSKEY": study.status_key,
        "STUDYSTATUS": STUDY_STATUS_TEXT.get(study.status_key, study.status_key),
        "STUDYCURRICULUMVERSION": study.curriculum_version,
        "STUDYIMMATRICULATIONDATE": _date_value(study.immat_date),
        "STUDYIMMATRICULATIONSEMESTER": study.immat_semester,
        "STUDYEXMATRICULATIONDATE": _date_value(study.exmat_date),
        "STUDYEXMATRICULATIONSEMESTER": study.exmat_semester,
        "STUDYEXMATRICULATIONTYPEKEY": exmat_type,
        "STUDYEXMATRICULATIONTYPE": EXMAT_STATUS_TEXT.get(exmat_type) if exmat_type else None,
        "STUDYQUALIFICATIONTYPENR": qualification,
        "STUDYQUALIFICATIONTYPE": _QUALIFICATION_TEXT.get(qualification) if qualification else None,
        "STUDYQUALIFICATIONDATE": _date_value(qualification_date),
        "STUDYQUALIFICATIONSTATENR": qualification_state,
        "STUDYQUALIFICATIONSTATE": _country(qualification_state),
        "ADDITIONALCERTIFICATE": study.additional_certificates,
    }


def application_row(
    world: World,
    application: CoApplication,
    source: str,
    ts: datetime | str,
    *,
    zone: ZoneInfo = VIENNA,
) -> dict[str, Any]:
    """One ``DMSApplicants`` row (reference §2c). The caller holds ``world.lock``."""
    program = PROGRAMS[application.program]
    return {
        "SOURCE": source,
        "TIMESTAMP": _stamp(ts, zone),
        "BEWERBUNGNR": application.bewerbungnr,
        "STPERSONNR": application.stpersonnr,
        "STSTUDIUMNR": application.ststudiumnr,
        "APPLICANTSTARTOFSTUDY": application.start_semester,
        "APPLICANTSTUDYTYPE": program.type,
        "APPLICANTSTUDYNAME": program.name,
        "APPLICANTSTUDYKEY": program.key,
        "APPLICANTQUALIFICATIONTYPE": application.qualification,
        "APPLICANTQUALIFICATIONDATE": _date_value(application.qualification_date),
        "APPLICANTQUALIFICATIONSTATENR": application.qualification_state_nr,
        "APPLICANTQUALIFICATIONSTATE": _country(application.qualification_state_nr),
    }


# --------------------------------------------------------------------------------------------
# Services and queries


RowBuilder = Callable[..., dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Service:
    """One ``pl/rest`` data service."""

    name: str
    row_key: str
    filters: tuple[str, ...]
    has_inactive: bool
    build_row: RowBuilder


SERVICES: dict[str, Service] = {
    STUDENTS_SERVICE: Service(
        STUDENTS_SERVICE, "DMSStudents", ("StPersonNr", "IdentNrObfuscated"), True, student_row
    ),
    STUDIES_SERVICE: Service(
        STUDIES_SERVICE, "DMSStudies", ("StPersonNr", "StStudiumNr"), True, study_row
    ),
    APPLICANTS_SERVICE: Service(
        APPLICANTS_SERVICE, "DMSApplicants", ("StPersonNr", "StStudiumNr"), False, application_row
    ),
}


@dataclass(frozen=True, slots=True)
class CoQuery:
    """The validated query of one data request."""

    filter_name: str | None = None
    filter_value: str | None = None
    page_nr: int | None = None
    page_size: int | None = None
    last_sync: datetime | None = None
    only_inactive: bool = False


def _bad_request(message: str) -> HttpError:
    return HttpError(400, {"type": "error", "message": message})


def _single_parameters(request: Request, service: Service) -> dict[str, str]:
    """The parameters as a dict; unknown, repeated and misplaced ones are a 400."""
    seen: dict[str, str] = {}
    for name, value in request.query_list:
        if name in FILTERS and name not in service.filters:
            raise _bad_request(f"filter {name} is not supported by {service.name}")
        if name not in FILTERS and name not in OTHER_PARAMETERS:
            raise _bad_request(f"unknown parameter {name} for {service.name}")
        if name in seen:
            raise _bad_request(f"parameter {name} given more than once")
        seen[name] = value
    return seen


def _positive_int(params: dict[str, str], name: str) -> int | None:
    if name not in params:
        return None
    value = params[name]
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
        raise _bad_request(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _filter(params: dict[str, str]) -> tuple[str | None, str | None]:
    given = [name for name in FILTERS if name in params]
    if len(given) > 1:
        raise _bad_request(f"only one filter is allowed, got {', '.join(given)}")
    if not given:
        return None, None
    name, value = given[0], params[given[0]]
    if not value:
        raise _bad_request(f"filter {name} needs a value")
    if name != "IdentNrObfuscated" and not re.fullmatch(r"-?[0-9]+", value):
        raise _bad_request(f"filter {name} must be a number, got {value!r}")
    return name, value


def _only_inactive(params: dict[str, str], service: Service) -> bool:
    if "SyncOnlyInactive" not in params:
        return False
    if not service.has_inactive:
        raise _bad_request(f"SyncOnlyInactive is not supported by {service.name}")
    value = params["SyncOnlyInactive"].upper()
    if value not in ("YES", "NO"):
        raise _bad_request(f"SyncOnlyInactive must be YES or NO, got {value!r}")
    return value == "YES"


def _last_sync(params: dict[str, str], zone: ZoneInfo) -> datetime | None:
    if "LastSyncDate" not in params:
        return None
    try:
        return parse_co_timestamp(params["LastSyncDate"], zone)
    except ValueError:
        raise _bad_request(
            f"LastSyncDate must be DD.MM.YYYYTHH:MI:SS, got {params['LastSyncDate']!r}"
        ) from None


def parse_query(request: Request, service: Service, zone: ZoneInfo) -> CoQuery:
    """Validate a data request's query string like CO would (400 on anything wrong)."""
    params = _single_parameters(request, service)
    if params.get("$format", "json").lower() != "json":
        raise _bad_request(f"unsupported $format {params['$format']!r}; only json is served")
    filter_name, filter_value = _filter(params)
    only_inactive = _only_inactive(params, service)
    last_sync = _last_sync(params, zone)
    if only_inactive and last_sync is not None:
        raise _bad_request("LastSyncDate only works for active resources (SyncOnlyInactive)")
    page_nr, page_size = _positive_int(params, "PageNr"), _positive_int(params, "PageSize")
    if page_nr is not None and page_size is None:
        raise _bad_request("PageNr needs PageSize")
    if page_size is not None and page_nr is None:
        page_nr = 1
    return CoQuery(filter_name, filter_value, page_nr, page_size, last_sync, only_inactive)


# --------------------------------------------------------------------------------------------
# Record selection


def _record_id(record: Record) -> int:
    if isinstance(record, CoStudent):
        return record.stpersonnr
    if isinstance(record, CoStudy):
        return record.ststudiumnr
    return record.bewerbungnr


def _is_active(record: Record) -> bool:
    return record.active if isinstance(record, CoStudent | CoStudy) else True


def _deactivated_at(record: Record) -> datetime | None:
    return record.deactivated_at if isinstance(record, CoStudent | CoStudy) else None


def _all_records(world: World, service: Service) -> Iterable[Record]:
    if service.name == STUDENTS_SERVICE:
        return world.co_students.values()
    if service.name == STUDIES_SERVICE:
        return world.co_studies.values()
    return world.co_applications.values()


def _filtered_records(world: World, service: Service, name: str, value: str) -> list[Record]:
    """The records one filter matches, whatever their pool (uses the world's indexes)."""
    if name == "IdentNrObfuscated":
        found = world.find_student(ident=value)
        return [found] if found else []
    number = int(value)
    if service.name == STUDENTS_SERVICE:
        student = world.co_students.get(number)
        return [student] if student else []
    if service.name == STUDIES_SERVICE and name == "StStudiumNr":
        study = world.co_studies.get(number)
        return [study] if study else []
    if service.name == STUDIES_SERVICE:
        return [
            world.co_studies[nr]
            for nr in world.studies_by_person.get(number, ())
            if nr in world.co_studies
        ]
    if name == "StPersonNr":
        return [
            world.co_applications[nr]
            for nr in world.applications_by_person.get(number, ())
            if nr in world.co_applications
        ]
    return [a for a in world.co_applications.values() if a.ststudiumnr == number]


def _delta_row(record: Record, view: ViewClock, since: datetime) -> tuple[bool, bool]:
    """``(included, live)`` of a record in a delta call with ``LastSyncDate = since``."""
    if not _is_active(record):
        deactivated = _deactivated_at(record)
        return deactivated is not None and deactivated >= since, True
    if view.is_live(record.modified_at):
        return True, True
    return view.change_refresh(record.modified_at) >= since, False


def _classify(record: Record, query: CoQuery, view: ViewClock) -> tuple[bool, bool]:
    """``(included, live)`` of a record for a query's pool and delta rules."""
    if query.last_sync is not None:
        return _delta_row(record, view, query.last_sync)
    wanted = not _is_active(record) if query.only_inactive else _is_active(record)
    return wanted, view.is_live(record.modified_at)


def select_records(
    world: World, service: Service, query: CoQuery, view: ViewClock
) -> list[tuple[Record, bool]]:
    """The records of a query as ``(record, live)``, in id order, paged. Hold ``world.lock``."""
    if query.filter_name is not None and query.filter_value is not None:
        candidates = _filtered_records(world, service, query.filter_name, query.filter_value)
        narrowed = query.only_inactive or query.last_sync is not None
        chosen = [(r, True) for r in candidates if not narrowed or _classify(r, query, view)[0]]
    else:
        chosen = []
        for record in _all_records(world, service):
            included, live = _classify(record, query, view)
            if included:
                chosen.append((record, live))
    chosen.sort(key=lambda pair: _record_id(pair[0]))
    if query.page_nr is not None and query.page_size is not None:
        start = (query.page_nr - 1) * query.page_size
        chosen = chosen[start : start + query.page_size]
    return chosen


# --------------------------------------------------------------------------------------------
# Envelope


def envelope(row_key: str, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``pl/rest`` envelope around rows of one service."""
    return {
        "type": "resources",
        "link": [],
        "resource": [{"link": [], "content": {"type": CONTENT_TYPE, row_key: row}} for row in rows],
    }


def serialize_broken(payload: Any) -> bytes:
    """JSON like CO writes it, with U+0018 left raw (invalid JSON until ``\\x18`` is removed)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if "\\u0018" not in text:
        return text.encode("utf-8")
    if "\\\\u0018" in text:  # a literal backslash before "u0018": only the slow, exact way
        text = _ESCAPED_BROKEN_BYTE.sub(lambda m: m.group(1) + BROKEN_BYTE, text)
    else:
        text = text.replace("\\u0018", BROKEN_BYTE)
    return text.encode("utf-8")


def _co_error(status: int, message: str, **kwargs: Any) -> Response:
    return Response.json({"type": "error", "message": message}, status, **kwargs)


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _proxy_page(status: int, title: str) -> str:
    return (
        f'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>'
        f"<title>{status} {title}</title></head><body><h1>{title}</h1></body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Server


class CoServer(SandboxServer):
    """The CAMPUSonline DMS API over a :class:`World` (see the module docstring)."""

    name = "co"

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        client_id: str = "hubsync",
        client_secret: str = "sandbox-co-secret",
        token_ttl: int = 3600,
        view_refresh_seconds: int = 900,
        timezone: str | ZoneInfo = "Europe/Vienna",
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        if int(token_ttl) < 1 or int(view_refresh_seconds) < 1:
            raise ValueError("token_ttl and view_refresh_seconds must be at least 1 second")
        self.world = world
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = int(token_ttl)
        self.view_refresh_seconds = int(view_refresh_seconds)
        self.zone = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
        self._tokens: dict[str, datetime] = {}
        self._tokens_lock = threading.Lock()
        self.router.add("POST", "/wbOAuth2.token", self._token)
        self.router.add("GET", "/pl/rest/:service", self._data)
        self.router.add("GET", "/_sandbox/co/state", self._state)
        self.router.add("POST", "/_sandbox/co/tokens/revoke", self._revoke)

    # -- framework hooks ---------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return _co_error(404, f"no resource at {request.path}")

    def dispatch(self, request: Request) -> tuple[Response, str]:
        response, pattern = super().dispatch(request)
        if response.status == 405 and pattern == "(error)":
            response = _co_error(405, f"{request.method} is not allowed on {request.path}")
        return response, pattern

    def fault_response(self, kind: str, config: FaultConfig) -> Response:
        if kind == "rate_limit":
            return Response.text(
                _proxy_page(429, "Too Many Requests"),
                429,
                headers={"Retry-After": str(config.retry_after)},
            )
        status = config.error_status
        return Response.text(_proxy_page(status, "Service Unavailable"), status)

    def view_clock(self) -> ViewClock:
        return ViewClock(self.world.clock.now(), self.view_refresh_seconds)

    # -- OAuth2 --------------------------------------------------------------------------------

    def _client_credentials(self, request: Request, form: dict[str, str]) -> tuple[str, str]:
        if "client_id" in form:
            return form["client_id"], form.get("client_secret", "")
        scheme, _, encoded = request.header("authorization").partition(" ")
        if scheme.lower() != "basic":
            return "", ""
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return "", ""
        client_id, _, secret = decoded.partition(":")
        return client_id, secret

    def _token(self, request: Request) -> Response:
        form = request.form()
        client_id, secret = self._client_credentials(request, form)
        if not (_same(client_id, self.client_id) and _same(secret, self.client_secret)):
            raise HttpError(401, {"error": "invalid_client"})
        grant = form.get("grant_type")
        if not grant:
            raise HttpError(400, {"error": "invalid_request"})
        if grant != "client_credentials":
            raise HttpError(400, {"error": "unsupported_grant_type"})
        return Response.json(
            {
                "access_token": self._issue_token(),
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _issue_token(self) -> str:
        now = self.world.clock.now()
        token = secrets.token_urlsafe(32)
        with self._tokens_lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + timedelta(seconds=self.token_ttl)
        return token

    def _authorize(self, request: Request) -> None:
        scheme, _, token = request.header("authorization").partition(" ")
        with self._tokens_lock:
            expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None or self.world.clock.now() >= expires:
            raise HttpError(
                401,
                {"error": "invalid_token"},
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    # -- data ----------------------------------------------------------------------------------

    def _data(self, request: Request) -> Response:
        self._authorize(request)
        service = SERVICES.get(request.params["service"])
        if service is None:
            return _co_error(404, f"unknown service {request.params['service']}")
        query = parse_query(request, service, self.zone)
        with self.world.lock:
            view = self.view_clock()
            now_stamp = format_co_timestamp(view.now, self.zone)
            view_stamp = format_co_timestamp(view.refreshed_at, self.zone)
            rows = [
                service.build_row(
                    self.world,
                    record,
                    LIVE_SOURCE if live else VIEW_SOURCE,
                    now_stamp if live else view_stamp,
                )
                for record, live in select_records(self.world, service, query, view)
            ]
        return Response(200, serialize_broken(envelope(service.row_key, rows)))

    # -- admin ---------------------------------------------------------------------------------

    def _state(self, request: Request) -> Response:
        view = self.view_clock()
        with self._tokens_lock:
            live_tokens = sum(1 for exp in self._tokens.values() if exp > view.now)
        return Response.json(
            {
                "now": view.now.isoformat(),
                "now_co": format_co_timestamp(view.now, self.zone),
                "timezone": self.zone.key,
                "view_refresh_seconds": self.view_refresh_seconds,
                "view_refreshed_at": view.refreshed_at.isoformat(),
                "view_refreshed_at_co": format_co_timestamp(view.refreshed_at, self.zone),
                "next_refresh_at": view.next_refresh_at.isoformat(),
                "token_ttl": self.token_ttl,
                "live_tokens": live_tokens,
            }
        )

    def _revoke(self, request: Request) -> Response:
        with self._tokens_lock:
            revoked = len(self._tokens)
            self._tokens.clear()
        return Response.json({"revoked": revoked})
