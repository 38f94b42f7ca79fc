"""A deterministic synthetic university: the ground truth behind the four sandbox servers.

Every record of every system points at one :class:`Person`, the human behind it. The servers turn
records into API rows on demand, so a world of 100,000 students is a few hundred thousand small
slot objects, not millions of dicts.

Time is a :class:`WorldClock`: real UTC time plus an offset that tests (and the admin endpoint)
can advance, so a test can jump past CAMPUSonline's 15-minute view refresh without waiting.
Every change records ``modified_at`` on that clock; each server shows it the way its API does.

Sizes scale from ``students`` (CO student records, active and exmatriculated):

* CO: ~80 % active students, the rest exmatriculated; 1–3 studies each; applications for ~30 %
  plus applicants who are not admitted yet (status E, no STUDID, an application without a study).
* Stud.IP: most active students have an account (half of them with their matriculation number in
  the ``Matrikelnummer`` datafield, e-mails in varying case), staff (dozent, tutor, admin), guests,
  the API account (root, a member of no course); three semesters of courses (previous, current,
  next) with memberships, a few courses running over two semesters (previous–current,
  current–next), a few unlimited ones (no start or end semester) and study groups (unlimited
  too, type 99; one founded by a student, who is its ``dozent``).
* LMS: learners (most active students, some staff, external crew), courses and registrations
  (pending, active, completed, retakes); a few external logins collide with Stud.IP usernames.
"""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

LOCAL_ZONE = ZoneInfo("Europe/Vienna")
API_ACCOUNT_USERNAME = "hubsync-api"
SEED_DOZENT_USERNAME = "lehre.koordination"
"""Teaches the university-wide lecture series every semester: the default crawl seed."""

STUDENT_ID_FIELD = "Matrikelnummer"
BIRTHDATE_FIELD = "Geburtsdatum"
CPF_FIELD = "CPF"
LMS_STUDENT_ID_FIELD = "StudentId"


# --------------------------------------------------------------------------------------------
# Clock


class WorldClock:
    """Real UTC time plus an offset that only ever grows (so no watermark can go backwards)."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self._offset = offset
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("the world clock only moves forward")
        with self._lock:
            self._offset += timedelta(seconds=seconds)
        return self.now()

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset.total_seconds()

    def __getstate__(self) -> dict[str, object]:
        return {"offset": self.offset_seconds}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(timedelta(seconds=float(state["offset"])))  # type: ignore[misc, arg-type]


# --------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class Person:
    pid: int
    given: str
    family: str
    gender: str  # CO GENDERKEY: M, W, X
    birth: date
    kind: str  # student | applicant | staff | guest | external


@dataclass(slots=True)
class CoStudent:
    stpersonnr: int
    pid: int
    studid: str | None
    ident_obf: str
    email_tu: str | None
    status_key: str  # STUDSTATUSKEY
    personal_status: str  # PERSSTATUS (German text, no key)
    nationality_nr: int
    qualification_type_nr: str
    immat_date: date
    immat_semester: str | None
    exmat_date: date | None = None
    exmat_status_key: str | None = None
    exmat_semester: str | None = None
    modified_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    deactivated_at: datetime | None = None  # moved from the active to the inactive pool

    @property
    def active(self) -> bool:
        return self.exmat_date is None


@dataclass(slots=True)
class CoStudy:
    ststudiumnr: int
    stpersonnr: int
    program: int  # index into PROGRAMS
    semester: int
    status_key: str
    curriculum_version: str
    immat_date: date
    immat_semester: str
    exmat_date: date | None = None
    exmat_semester: str | None = None
    exmat_type_key: str | None = None
    additional_certificates: str | None = None
    modified_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    deactivated_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.exmat_date is None


@dataclass(slots=True)
class CoApplication:
    bewerbungnr: int
    stpersonnr: int
    ststudiumnr: int | None
    program: int
    start_semester: str
    qualification: str  # "<nr> - <German text>"
    qualification_date: date | None
    qualification_state_nr: int | None
    modified_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class StudipUser:
    user_id: str
    username: str
    pid: int | None  # None for the API account
    perms: str  # user | autor | tutor | dozent | admin | root
    email: str
    datafields: dict[str, str]
    institute_ids: list[str]
    modified_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class StudipSemester:
    semester_id: str
    title: str
    begin: int
    end: int
    seminars_begin: int
    seminars_end: int
    code: str  # the HUB term code: YYYYS / YYYYW


@dataclass(slots=True)
class StudipInstitute:
    institute_id: str
    name: str
    faculty_name: str
    city: str


@dataclass(slots=True)
class StudipCourse:
    course_id: str
    number: str
    title: str
    subtitle: str
    sem_type: str  # key of SEM_TYPE in /studip/settings, as a string
    start_semester: str | None  # None (with end_semester): unlimited, runs in every semester
    end_semester: str | None
    institute_id: str
    group: int  # the colour group a member sees; the API account is a member of none
    modified_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class LmsCourse:
    course_id: str
    code: str
    name: str
    offering_short_id: str


@dataclass(slots=True)
class LmsLearner:
    login: str  # OrganizationLoginId
    unique_login: str
    pid: int
    email: str
    contact_email: str
    profile: dict[str, str]


@dataclass(slots=True)
class LmsRegistration:
    registration_id: str
    course_id: str
    login: str
    registration_date: datetime
    status: int  # 0 pending, 1 active, 2 completed
    creation_type: int
    completion_date: datetime | None
    modified_at: datetime


# --------------------------------------------------------------------------------------------
# Static tables


@dataclass(frozen=True, slots=True)
class Program:
    key: str
    type: str
    name: str
    short: str
    institute: int


PROGRAMS: tuple[Program, ...] = (
    Program("UF 033 521", "Bachelorstudium", "Bachelorstudium; Informatik", "INF", 0),
    Program("UF 066 921", "Masterstudium", "Masterstudium; Computer Science", "CS", 0),
    Program("UF 033 678", "Bachelorstudium", "Bachelorstudium; Physik", "PHY", 1),
    Program("UF 066 876", "Masterstudium", "Masterstudium; Technische Physik", "TPH", 1),
    Program("UF 033 245", "Bachelorstudium", "Bachelorstudium; Maschinenbau", "MB", 2),
    Program("UF 066 445", "Masterstudium", "Masterstudium; Maschinenbau", "MBM", 2),
    Program(
        "UF 033 235", "Bachelorstudium", "Bachelorstudium; Bauingenieurwissenschaften", "BAU", 3
    ),
    Program("UF 033 661", "Bachelorstudium", "Bachelorstudium; Chemie", "CHE", 4),
    Program("UF 066 862", "Masterstudium", "Masterstudium; Chemie", "CHM", 4),
    Program("UF 033 217", "Bachelorstudium", "Bachelorstudium; Elektrotechnik", "ET", 5),
    Program("UF 066 439", "Masterstudium", "Masterstudium; Elektrotechnik", "ETM", 5),
    Program(
        "UF 786 600", "Doktoratsstudium", "Doktoratsstudium der Technischen Wissenschaften", "DR", 0
    ),
)

INSTITUTES: tuple[tuple[str, str], ...] = (
    ("Institut für Softwaretechnologie", "Fakultät für Informatik"),
    ("Institut für Experimentalphysik", "Fakultät für Physik"),
    ("Institut für Maschinenbau", "Fakultät für Maschinenbau"),
    ("Institut für Baustatik", "Fakultät für Bauingenieurwissenschaften"),
    ("Institut für Anorganische Chemie", "Fakultät für Chemie"),
    ("Institut für Elektrische Messtechnik", "Fakultät für Elektrotechnik"),
)

TOPICS = (
    "Grundlagen",
    "Algorithmen",
    "Analysis",
    "Lineare Algebra",
    "Mechanik",
    "Thermodynamik",
    "Werkstoffkunde",
    "Messtechnik",
    "Statistik",
    "Numerik",
    "Programmierung",
    "Datenbanken",
    "Regelungstechnik",
    "Elektronik",
    "Optik",
    "Quantenmechanik",
    "Festkörperphysik",
    "Strömungslehre",
    "Konstruktion",
    "Signalverarbeitung",
    "Betriebssysteme",
    "Netzwerke",
)
LEVELS = ("1", "2", "3", "für Fortgeschrittene", "Seminar", "Labor", "Projekt")

SEM_TYPES: dict[str, tuple[str, str]] = {
    "1": ("Vorlesung", "1"),
    "2": ("Seminar", "1"),
    "3": ("Übung", "1"),
    "4": ("Praktikum", "1"),
    "5": ("Vorlesung mit Übung", "1"),
    "9": ("Projektgruppe", "2"),
    "99": ("Studiengruppe", "99"),
}
SEM_CLASSES: dict[str, str] = {
    "1": "Lehre",
    "2": "Forschung",
    "3": "Organisation",
    "99": "Studiengruppen",
}
STUDYGROUP_CLASSES = frozenset({"99"})  # SEM_CLASS entries with studygroup_mode 1
INST_TYPES: dict[str, str] = {"1": "Einrichtung", "7": "Fakultät"}

GIVEN_M = (
    "Max",
    "Lukas",
    "Jonas",
    "Felix",
    "Paul",
    "David",
    "Jakob",
    "Tobias",
    "Stefan",
    "Andreas",
    "Michael",
    "Florian",
    "Matthias",
    "Sebastian",
    "Ömer",
    "Luca",
    "Elias",
    "Johannes",
    "Simon",
    "Julian",
    "Noah",
    "Leon",
    "Fabian",
    "Dominik",
)
GIVEN_W = (
    "Anna",
    "Lena",
    "Sophie",
    "Laura",
    "Julia",
    "Sarah",
    "Hannah",
    "Katharina",
    "Lisa",
    "Marie",
    "Elena",
    "Johanna",
    "Theresa",
    "Valentina",
    "Zoë",
    "Leonie",
    "Emma",
    "Mia",
    "Clara",
    "Magdalena",
    "Verena",
    "Nina",
    "Selina",
    "Jana",
)
FAMILY = (
    "Müller",
    "Gruber",
    "Huber",
    "Wagner",
    "Pichler",
    "Steiner",
    "Moser",
    "Mayer",
    "Hofer",
    "Leitner",
    "Berger",
    "Fuchs",
    "Eder",
    "Fischer",
    "Schmid",
    "Winkler",
    "Weber",
    "Schwarz",
    "Maier",
    "Schneider",
    "Reiter",
    "Mayr",
    "Schmidt",
    "Wimmer",
    "Egger",
    "Brunner",
    "Lang",
    "Baumgartner",
    "Auer",
    "Binder",
    "Lechner",
    "Wolf",
    "Wallner",
    "Aigner",
    "Ebner",
    "Koller",
    "Lehner",
    "Haas",
    "Schuster",
    "Heilig",
    "Kovačević",
    "Yılmaz",
    "Nguyen",
    "Öztürk",
    "Jäger",
    "Köhler",
    "Sommer",
    "Strauß",
)

NATIONALITIES: tuple[tuple[int, str, float], ...] = (
    (168, "Österreich", 0.62),
    (54, "Deutschland", 0.12),
    (98, "Italien", 0.05),
    (40, "Bosnien und Herzegowina", 0.05),
    (197, "Türkei", 0.04),
    (11, "Ägypten", 0.03),
    (257, "Kosovo", 0.03),
    (4242, "Bajor", 0.01),
    (45, "China", 0.05),
)
QUALIFICATIONS: tuple[tuple[str, str], ...] = (
    ("02", "Humanistisches Gymnasium"),
    ("03", "Realgymnasium"),
    ("25", "ausländische Reifeprüfung"),
    ("46", "IB Diploma (Ausland)"),
    ("41", "Master-/Diplomst.eigene Univ."),
)
GENDER_TEXT = {"M": "Männlich", "W": "Weiblich", "X": "Divers"}
STUD_STATUS_TEXT = {
    "O": "ordentlich",
    "A": "außerordentlich",
    "E": "nicht zugelassen",
    "M": "mitbelegend",
}
STUDY_STATUS_TEXT = {
    "I": "gemeldet",
    "B": "beurlaubt",
    "Z": "abgeschlossen",
    "U": "unterbrochen",
    "X": "storniert",
}
EXMAT_STATUS_TEXT = {"EZ": "ex lege", "A": "auf Antrag", "E": "Studienabschluss", "U": "unbekannt"}
ADDITIONAL_EXAMS = ("EDG", "EGR", "ELA", "EPH", "ECH", "EBI")
VESSELS = ("MS Danubia", "MV Alpina", "MS Graz", "MV Tauern", "MS Styria")
RANKS = ("none", "Cadet", "Officer", "Engineer", "Captain")


# --------------------------------------------------------------------------------------------
# Helpers


def _hex_id(seed: int, *parts: object) -> str:
    return hashlib.md5(":".join(map(str, (seed, *parts))).encode()).hexdigest()


def _ascii(text: str) -> str:
    table = str.maketrans(
        {
            "ä": "ae",
            "ö": "oe",
            "ü": "ue",
            "ß": "ss",
            "Ä": "Ae",
            "Ö": "Oe",
            "Ü": "Ue",
            "č": "c",
            "ı": "i",
            "ë": "e",
            "Ç": "C",
            "ç": "c",
        }
    )
    return "".join(ch for ch in text.translate(table) if ch.isascii() and ch.isalnum())


def semester_token(day: date) -> str:
    """CO semester token (``24W``/``25S``) of the semester containing ``day``."""
    if 4 <= day.month <= 9:
        return f"{day.year % 100:02d}S"
    year = day.year if day.month >= 10 else day.year - 1
    return f"{year % 100:02d}W"


def _semester_start(day: date) -> date:
    if 4 <= day.month <= 9:
        return date(day.year, 4, 1)
    return date(day.year if day.month >= 10 else day.year - 1, 10, 1)


def _next_semester_start(start: date) -> date:
    return date(start.year, 10, 1) if start.month == 4 else date(start.year + 1, 4, 1)


def _previous_semester_start(start: date) -> date:
    return date(start.year - 1, 10, 1) if start.month == 4 else date(start.year, 4, 1)


def _local_ts(day: date, end_of_day: bool = False) -> int:
    moment = datetime(day.year, day.month, day.day, tzinfo=LOCAL_ZONE)
    if end_of_day:
        moment += timedelta(days=1, seconds=-1)
    return int(moment.timestamp())


def make_semester(seed: int, start: date) -> StudipSemester:
    summer = start.month == 4
    end = (date(start.year, 10, 1) if summer else date(start.year + 1, 4, 1)) - timedelta(days=1)
    title = f"SS {start.year}" if summer else f"WS {start.year}/{start.year + 1}"
    lectures_begin = start + timedelta(days=(0 if summer else 14))
    lectures_end = end - timedelta(days=(60 if summer else 50))
    return StudipSemester(
        semester_id=_hex_id(seed, "semester", start.isoformat()),
        title=title,
        begin=_local_ts(start),
        end=_local_ts(end, end_of_day=True),
        seminars_begin=_local_ts(lectures_begin),
        seminars_end=_local_ts(lectures_end, end_of_day=True),
        code=f"{start.year}{'S' if summer else 'W'}",
    )


# --------------------------------------------------------------------------------------------
# The world


@dataclass
class StepSummary:
    """What one :meth:`World.step` changed, by kind (ids only)."""

    seed: int
    at: datetime
    changes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, ident: object) -> None:
        self.changes[kind].append(str(ident))

    def counts(self) -> dict[str, int]:
        return {kind: len(ids) for kind, ids in sorted(self.changes.items())}


class World:
    """The synthetic university. Reads and writes go through :attr:`lock`."""

    def __init__(
        self,
        seed: int = 42,
        students: int = 500,
        *,
        today: date | None = None,
        clock: WorldClock | None = None,
        populate: bool = True,
    ) -> None:
        """``populate=False`` gives only semesters, institutes and the API account (tests)."""
        if populate and students < 1:
            raise ValueError("a world needs at least one student")
        self.seed = seed
        self.size = students
        self.clock = clock or WorldClock()
        self.lock = threading.RLock()
        self.today = today or self.clock.now().astimezone(LOCAL_ZONE).date()
        self._rng = random.Random(seed)
        self.step_count = 0

        self.persons: dict[int, Person] = {}
        self.co_students: dict[int, CoStudent] = {}
        self.co_studies: dict[int, CoStudy] = {}
        self.co_applications: dict[int, CoApplication] = {}
        self.studies_by_person: dict[int, list[int]] = defaultdict(list)
        self.applications_by_person: dict[int, list[int]] = defaultdict(list)
        self.student_by_ident: dict[str, int] = {}

        self.studip_users: dict[str, StudipUser] = {}
        self.studip_user_by_pid: dict[int, str] = {}
        self.studip_semesters: dict[str, StudipSemester] = {}
        self.studip_institutes: dict[str, StudipInstitute] = {}
        self.studip_courses: dict[str, StudipCourse] = {}
        self.memberships: dict[str, dict[str, str]] = defaultdict(dict)
        self.user_courses: dict[str, set[str]] = defaultdict(set)

        self.lms_courses: dict[str, LmsCourse] = {}
        self.lms_learners: dict[str, LmsLearner] = {}
        self.lms_learner_by_pid: dict[int, str] = {}
        self.lms_registrations: dict[str, LmsRegistration] = {}

        self._next_pid = 1
        self._next_stpersonnr = 100_000
        self._next_ststudiumnr = 500_000
        self._next_bewerbungnr = 900_000
        self._next_studid = 1_200_000
        self._usernames: set[str] = set()
        self._username_suffix: dict[str, int] = {}
        self._generate_studip_structure()
        if populate:
            self._generate()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    # -- identifiers ---------------------------------------------------------------------

    def _uuid(self, rng: random.Random) -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def _new_person(self, rng: random.Random, kind: str, age: tuple[int, int]) -> Person:
        gender = rng.choices("MWX", weights=(48, 50, 2))[0]
        given = rng.choice(
            GIVEN_M if gender == "M" else GIVEN_W if gender == "W" else GIVEN_M + GIVEN_W
        )
        years = rng.randint(*age)
        birth = self.today - timedelta(days=years * 365 + rng.randint(0, 364))
        person = Person(self._next_pid, given, rng.choice(FAMILY), gender, birth, kind)
        self.persons[person.pid] = person
        self._next_pid += 1
        return person

    def _username(self, person: Person) -> str:
        base = (_ascii(person.given)[:1] + _ascii(person.family)).lower() or "user"
        name = base
        while name in self._usernames:
            self._username_suffix[base] = self._username_suffix.get(base, 1) + 1
            name = f"{base}{self._username_suffix[base]}"
        self._usernames.add(name)
        return name

    def _email_local(self, person: Person) -> str:
        return f"{_ascii(person.given).lower()}.{_ascii(person.family).lower()}{person.pid}"

    @staticmethod
    def _vary_case(rng: random.Random, email: str) -> str:
        local, _, domain = email.partition("@")
        style = rng.random()
        if style < 0.15:
            return email.upper()
        if style < 0.35:
            return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain
        return email

    # -- generation ----------------------------------------------------------------------

    def _generate(self) -> None:
        rng = self._rng
        created = self.clock.now() - timedelta(days=1)
        staff = self._generate_staff(rng, created)
        self._generate_courses(rng, staff, created)
        for index in range(self.size):
            self._generate_student(rng, created, active=rng.random() < 0.8, index=index)
        for _ in range(max(1, self.size // 50)):
            self._generate_guest(rng, created)
        self._generate_lms(rng, staff, created)
        # after everything else, from a generator of their own: the records above stay as they
        # were before these courses existed
        self._generate_long_courses(random.Random(self.seed * 1_000_003 + 17), staff, created)

    def _generate_studip_structure(self) -> None:
        for index, (name, faculty) in enumerate(INSTITUTES):
            inst = StudipInstitute(_hex_id(self.seed, "institute", index), name, faculty, "Graz")
            self.studip_institutes[inst.institute_id] = inst
        start = _semester_start(self.today)
        starts = [start]
        for _ in range(4):
            starts.insert(0, _previous_semester_start(starts[0]))
        starts.append(_next_semester_start(start))
        for semester_start in starts:
            semester = make_semester(self.seed, semester_start)
            self.studip_semesters[semester.semester_id] = semester
        self._fix_semesters()
        self.api_account = StudipUser(
            _hex_id(self.seed, "user", "api"),
            API_ACCOUNT_USERNAME,
            None,
            "root",
            "hubsync-api@tu-sandbox.at",
            {},
            [],
            datetime(2020, 1, 1, tzinfo=UTC),
        )
        self.studip_users[self.api_account.user_id] = self.api_account
        self._usernames.add(API_ACCOUNT_USERNAME)

    @property
    def semesters_in_order(self) -> list[StudipSemester]:
        return sorted(self.studip_semesters.values(), key=lambda s: s.begin)

    def semester_at(self, day: date) -> StudipSemester:
        moment = _local_ts(day)
        for semester in self.studip_semesters.values():
            if semester.begin <= moment <= semester.end:
                return semester
        raise LookupError(f"no semester contains {day}")

    def _fix_semesters(self) -> None:
        """The semesters around ``today``, looked up once (they are used on every enrolment)."""
        ordered = self.semesters_in_order
        self.current_semester = self.semester_at(self.today)
        position = ordered.index(self.current_semester)
        self.previous_semester = ordered[position - 1]
        self.next_semester = ordered[position + 1]

    def _staff_user(
        self,
        rng: random.Random,
        person: Person,
        perms: str,
        created: datetime,
        username: str | None = None,
        with_ids: bool = True,
    ) -> StudipUser:
        if username:
            self._usernames.add(username)
        username = username or self._username(person)
        datafields = {}
        if with_ids:
            datafields = {BIRTHDATE_FIELD: person.birth.isoformat(), CPF_FIELD: _cpf(rng)}
        institute = rng.choice(list(self.studip_institutes))
        user = StudipUser(
            _hex_id(self.seed, "user", person.pid),
            username,
            person.pid,
            perms,
            f"{self._email_local(person)}@tu-sandbox.at",
            datafields,
            [institute],
            created,
        )
        self.studip_users[user.user_id] = user
        self.studip_user_by_pid[person.pid] = user.user_id
        return user

    def _generate_staff(self, rng: random.Random, created: datetime) -> dict[str, list[str]]:
        staff: dict[str, list[str]] = {"dozent": [], "tutor": [], "admin": []}
        coordinator = self._new_person(rng, "staff", (40, 60))
        seed_user = self._staff_user(rng, coordinator, "dozent", created, SEED_DOZENT_USERNAME)
        self.seed_dozent_id = seed_user.user_id
        counts = {"dozent": max(3, self.size // 25), "tutor": max(2, self.size // 60), "admin": 3}
        for perms, count in counts.items():
            for _ in range(count):
                person = self._new_person(rng, "staff", (26, 65))
                # A few staff lack the identifiers the HUB requires: they cannot be sent.
                user = self._staff_user(rng, person, perms, created, with_ids=rng.random() > 0.03)
                staff[perms].append(user.user_id)
        return staff

    def _course_semesters(self) -> list[StudipSemester]:
        return [self.previous_semester, self.current_semester, self.next_semester]

    def _generate_courses(
        self, rng: random.Random, staff: dict[str, list[str]], created: datetime
    ) -> None:
        per_program = max(2, round(self.size * 4 / 70 / len(PROGRAMS)))
        self.course_titles: dict[str, str] = {}
        institutes = list(self.studip_institutes)
        for p_index, program in enumerate(PROGRAMS):
            for n in range(per_program * 2):
                number = f"{program.short}.{100 + n:03d}"
                topic = TOPICS[(n + p_index * 3) % len(TOPICS)]
                level = LEVELS[(n // len(TOPICS)) % len(LEVELS)]
                self.course_titles[number] = f"{program.short}: {topic} {level} ({n + 1})"
        self.courses_by_semester_program: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.lecture_series: dict[str, str] = {}
        for semester in self._course_semesters():
            offset = 0 if semester.code.endswith("W") else per_program
            for p_index, program in enumerate(PROGRAMS):
                for n in range(per_program):
                    number = f"{program.short}.{100 + n + offset:03d}"
                    groups = 2 if rng.random() < 0.12 else 1
                    for group in range(1, groups + 1):
                        course = self._add_course(
                            rng,
                            number,
                            self.course_titles[number],
                            f"Gruppe {group}" if groups > 1 else "",
                            semester,
                            institutes[program.institute],
                            created,
                        )
                        self.enrol(course.course_id, rng.choice(staff["dozent"]), "dozent")
                        if rng.random() < 0.4:
                            self.enrol(course.course_id, rng.choice(staff["tutor"]), "tutor")
                        self.courses_by_semester_program[(semester.semester_id, p_index)].append(
                            course.course_id
                        )
            number = "RV.001"
            self.course_titles[number] = "Ringvorlesung: Wissenschaft und Gesellschaft"
            series = self._add_course(
                rng, number, self.course_titles[number], "", semester, institutes[0], created
            )
            self.enrol(series.course_id, self.seed_dozent_id, "dozent")
            self.lecture_series[semester.semester_id] = series.course_id
        # A study group: no semester, type 99 (never a HUB section).
        group = StudipCourse(
            _hex_id(self.seed, "course", "studygroup"),
            "",
            "Lerngruppe Analysis",
            "",
            "99",
            None,
            None,
            institutes[0],
            8,
            created,
        )
        self.studip_courses[group.course_id] = group
        self.enrol(group.course_id, self.seed_dozent_id, "dozent")

    def _add_course(
        self,
        rng: random.Random,
        number: str,
        title: str,
        subtitle: str,
        semester: StudipSemester,
        institute_id: str,
        created: datetime,
    ) -> StudipCourse:
        course = StudipCourse(
            _hex_id(self.seed, "course", number, subtitle, semester.semester_id),
            number,
            title,
            subtitle,
            rng.choice(("1", "2", "3", "4", "5")),
            semester.semester_id,
            semester.semester_id,
            institute_id,
            5,
            created,
        )
        self.studip_courses[course.course_id] = course
        return course

    def _generate_long_courses(
        self, rng: random.Random, staff: dict[str, list[str]], created: datetime
    ) -> None:
        """Courses over two semesters, unlimited courses and a study group founded by a
        student, each with a few active students."""
        students = sorted(
            u.user_id
            for u in self.studip_users.values()
            if u.perms == "autor" and u.pid is not None and self.persons[u.pid].kind == "student"
        )
        if not students:
            return
        spans = [
            (self.previous_semester, self.current_semester),
            (self.current_semester, self.next_semester),
            (None, None),
        ]
        count = max(1, self.size // 150)
        for kind, (start, end) in enumerate(spans):
            for n in range(count):
                number = f"LV.{kind + 1}{n:02d}"
                title = ("Projektseminar", "Forschungspraktikum", "Mentoring")[kind]
                course = StudipCourse(
                    _hex_id(self.seed, "course", "long", kind, n),
                    number,
                    f"{title} ({n + 1})",
                    "",
                    rng.choice(("2", "4")),
                    start.semester_id if start else None,
                    end.semester_id if end else None,
                    rng.choice(list(self.studip_institutes)),
                    rng.randint(1, 8),
                    created,
                )
                self.studip_courses[course.course_id] = course
                self.enrol(course.course_id, rng.choice(staff["dozent"]), "dozent")
                for user_id in rng.sample(students, min(len(students), rng.randint(3, 6))):
                    self.enrol(course.course_id, user_id, "autor")
        founder, *members = rng.sample(students, min(len(students), 3))
        group = StudipCourse(
            _hex_id(self.seed, "course", "studygroup", "students"),
            "",
            "Lerngruppe Statistik",
            "",
            "99",
            None,
            None,
            rng.choice(list(self.studip_institutes)),
            8,
            created,
        )
        self.studip_courses[group.course_id] = group
        self.enrol(group.course_id, founder, "dozent")  # the founder is the group's dozent
        for user_id in members:
            self.enrol(group.course_id, user_id, "autor")

    def course_runs_in(self, course: StudipCourse, semester_id: str) -> bool:
        """Whether Stud.IP returns ``course`` for ``?semester=<semester_id>``: from its start to
        its end semester, every semester when it has none (unlimited)."""
        if course.start_semester is None:
            return True
        begin = self.studip_semesters[semester_id].begin
        start = self.studip_semesters[course.start_semester].begin
        end = self.studip_semesters[course.end_semester or course.start_semester].begin
        return start <= begin <= end

    def enrol(self, course_id: str, user_id: str, status: str) -> None:
        self.memberships[course_id][user_id] = status
        self.user_courses[user_id].add(course_id)

    def drop(self, course_id: str, user_id: str) -> None:
        self.memberships[course_id].pop(user_id, None)
        self.user_courses[user_id].discard(course_id)

    def _generate_student(
        self, rng: random.Random, created: datetime, *, active: bool, index: int
    ) -> CoStudent:
        applicant = active and rng.random() < 0.04
        person = self._new_person(rng, "applicant" if applicant else "student", (18, 34))
        nationality = rng.choices(
            [n[0] for n in NATIONALITIES], weights=[n[2] for n in NATIONALITIES]
        )[0]
        immat = self.today - timedelta(days=rng.randint(30, 365 * 6))
        student = CoStudent(
            stpersonnr=self._next_stpersonnr,
            pid=person.pid,
            studid=None if applicant else f"0{self._next_studid:07d}",
            ident_obf=_hex_id(self.seed, "ident", self._next_stpersonnr).upper(),
            email_tu=None if applicant else f"{self._email_local(person)}@student.tu-sandbox.at",
            status_key="E" if applicant else rng.choices("OAM", weights=(90, 7, 3))[0],
            personal_status="Voranmeldung" if applicant else "Studierende/r",
            nationality_nr=nationality,
            qualification_type_nr=rng.choice(QUALIFICATIONS)[0],
            immat_date=immat,
            immat_semester=None if applicant else semester_token(immat),
            modified_at=created,
        )
        self._next_stpersonnr += 1
        if not applicant:
            self._next_studid += 1
        if not active:
            student.exmat_date = immat + timedelta(days=rng.randint(200, 1500))
            student.exmat_date = min(student.exmat_date, self.today - timedelta(days=2))
            student.exmat_status_key = rng.choice(("EZ", "A", "E"))
            student.exmat_semester = semester_token(student.exmat_date)
            person.kind = "alumnus"
        self.co_students[student.stpersonnr] = student
        self.student_by_ident[student.ident_obf] = student.stpersonnr
        if applicant:
            self._add_application(rng, student, None, rng.randrange(len(PROGRAMS)), created)
            return student
        programs = self._add_studies(rng, student, created)
        if rng.random() < 0.3:
            study_nr = rng.choice(self.studies_by_person[student.stpersonnr])
            self._add_application(
                rng, student, study_nr, self.co_studies[study_nr].program, created
            )
        if active and rng.random() < 0.9:
            self._student_account(rng, student, person, programs[0], created)
        elif not active and rng.random() < 0.5:
            self._student_account(rng, student, person, None, created)
        return student

    def _add_studies(self, rng: random.Random, student: CoStudent, created: datetime) -> list[int]:
        count = rng.choices((1, 2, 3), weights=(70, 24, 6))[0]
        programs = rng.sample(range(len(PROGRAMS)), count)
        for position, program in enumerate(programs):
            study = CoStudy(
                ststudiumnr=self._next_ststudiumnr,
                stpersonnr=student.stpersonnr,
                program=program,
                semester=rng.randint(1, 12),
                status_key="I",
                curriculum_version=f"{2015 + rng.randint(0, 8)}W",
                immat_date=student.immat_date,
                immat_semester=semester_token(student.immat_date),
                additional_certificates=" | ".join(rng.sample(ADDITIONAL_EXAMS, rng.randint(0, 2)))
                or None,
                modified_at=created,
            )
            self._next_ststudiumnr += 1
            closed = not student.active or (position > 0 and rng.random() < 0.4)
            if closed:
                study.exmat_date = student.exmat_date or (
                    self.today - timedelta(days=rng.randint(10, 400))
                )
                study.exmat_semester = semester_token(study.exmat_date)
                study.exmat_type_key = rng.choice(("EZ", "A", "E"))
                study.status_key = "Z"
            self.co_studies[study.ststudiumnr] = study
            self.studies_by_person[student.stpersonnr].append(study.ststudiumnr)
        return programs

    def _add_application(
        self,
        rng: random.Random,
        student: CoStudent,
        study_nr: int | None,
        program: int,
        created: datetime,
    ) -> CoApplication:
        nr, text = rng.choice(QUALIFICATIONS)
        application = CoApplication(
            bewerbungnr=self._next_bewerbungnr,
            stpersonnr=student.stpersonnr,
            ststudiumnr=study_nr,
            program=program,
            start_semester=semester_token(self.today + timedelta(days=120)),
            qualification=f"{int(nr)} - {text}",
            qualification_date=(
                student.immat_date - timedelta(days=rng.randint(30, 400))
                if rng.random() < 0.8
                else None
            ),
            qualification_state_nr=rng.choice((168, 54, 40, None)),
            modified_at=created,
        )
        self._next_bewerbungnr += 1
        self.co_applications[application.bewerbungnr] = application
        self.applications_by_person[student.stpersonnr].append(application.bewerbungnr)
        return application

    def _student_account(
        self,
        rng: random.Random,
        student: CoStudent,
        person: Person,
        program: int | None,
        created: datetime,
    ) -> StudipUser:
        datafields = {}
        if student.studid and rng.random() < 0.5:
            datafields[STUDENT_ID_FIELD] = student.studid
        email = self._vary_case(rng, student.email_tu or f"{self._email_local(person)}@x.at")
        institute = list(self.studip_institutes)[PROGRAMS[program or 0].institute]
        user = StudipUser(
            _hex_id(self.seed, "user", person.pid),
            self._username(person),
            person.pid,
            "autor",
            email,
            datafields,
            [institute],
            created,
        )
        self.studip_users[user.user_id] = user
        self.studip_user_by_pid[person.pid] = user.user_id
        if program is not None:
            self._enrol_student_in_semester(rng, user.user_id, program)
        return user

    def _enrol_student_in_semester(
        self,
        rng: random.Random,
        user_id: str,
        program: int,
        semesters: Iterable[StudipSemester] | None = None,
    ) -> None:
        for semester in semesters or self._course_semesters():
            share = 0.3 if semester is self.next_semester else 1.0
            if rng.random() > share:
                continue
            courses = self.courses_by_semester_program[(semester.semester_id, program)]
            for course_id in rng.sample(courses, min(len(courses), rng.randint(2, 4))):
                self.enrol(course_id, user_id, "autor" if rng.random() < 0.95 else "user")
            if rng.random() < 0.35:
                self.enrol(self.lecture_series[semester.semester_id], user_id, "autor")

    def _generate_guest(self, rng: random.Random, created: datetime) -> None:
        person = self._new_person(rng, "guest", (20, 70))
        datafields = {BIRTHDATE_FIELD: person.birth.isoformat()} if rng.random() < 0.6 else {}
        user = StudipUser(
            _hex_id(self.seed, "user", person.pid),
            self._username(person),
            person.pid,
            "autor",
            f"{self._email_local(person)}@gmx.at",
            datafields,
            [],
            created,
        )
        self.studip_users[user.user_id] = user
        self.studip_user_by_pid[person.pid] = user.user_id
        series = self.lecture_series[self.current_semester.semester_id]
        self.enrol(series, user.user_id, "user")

    # -- LMS -----------------------------------------------------------------------------

    def _generate_lms(
        self, rng: random.Random, staff: dict[str, list[str]], created: datetime
    ) -> None:
        names = (
            "Basic Safety Training",
            "Laboratory Safety",
            "Fire Prevention",
            "First Aid Refresher",
            "Radiation Protection",
            "Data Protection Essentials",
            "OSHA 1",
            "Crane Operation",
            "Hazardous Materials",
            "Research Ethics",
        )
        for index in range(max(3, min(len(names), 3 + self.size // 200))):
            course = LmsCourse(
                self._uuid(rng), f"{9_973_400 + index * 7}", names[index], f"OFF{index + 1:02d}"
            )
            self.lms_courses[course.course_id] = course
        for student in list(self.co_students.values()):
            if student.active and student.studid and rng.random() < 0.45:
                self._student_learner(rng, student)
        for user_id in staff["dozent"][: max(1, len(staff["dozent"]) // 10)]:
            user = self.studip_users[user_id]
            self._learner(rng, user.username, user.pid or 0, user.email.lower(), {})
        externals = max(2, self.size // 20)
        # A few crew logins equal the Stud.IP username of an unrelated student who has no
        # learner account: the login rule of identity matching will (wrongly) join them.
        collisions = [
            u.username
            for u in self.studip_users.values()
            if u.perms == "autor" and u.username not in self.lms_learners
        ][:3]
        for index in range(externals):
            person = self._new_person(rng, "external", (20, 60))
            login = collisions[index] if index < len(collisions) else (f"crew{person.pid}")
            self._learner(
                rng,
                login,
                person.pid,
                f"{login}@crew.marinels.com",
                {"Vessel": rng.choice(VESSELS)},
            )
        for learner in list(self.lms_learners.values()):
            for _ in range(rng.choices((1, 2, 3), weights=(60, 30, 10))[0]):
                self._register(rng, learner.login, created, initial=True)

    def _student_learner(self, rng: random.Random, student: CoStudent) -> LmsLearner:
        person = self.persons[student.pid]
        user_id = self.studip_user_by_pid.get(person.pid)
        login = self.studip_users[user_id].username if user_id else f"s{student.studid}"
        profile = {"Rank": "none"}
        if rng.random() < 0.7:
            profile[LMS_STUDENT_ID_FIELD] = student.studid or ""
        email = self._vary_case(rng, student.email_tu or "")
        return self._learner(rng, login, person.pid, email, profile)

    def _learner(
        self, rng: random.Random, login: str, pid: int, email: str, profile: dict[str, str]
    ) -> LmsLearner:
        profile.setdefault("Rank", rng.choice(RANKS))
        if login in self.lms_learners:
            raise ValueError(f"LMS login {login!r} exists already")
        learner = LmsLearner(login, login, pid, email, email.lower(), profile)
        self.lms_learners[login] = learner
        self.lms_learner_by_pid.setdefault(pid, login)
        return learner

    def _register(
        self,
        rng: random.Random,
        login: str,
        now: datetime,
        *,
        initial: bool,
        course_id: str | None = None,
    ) -> LmsRegistration:
        course_id = course_id or rng.choice(list(self.lms_courses))
        if initial:
            registered = now - timedelta(days=rng.randint(1, 400), seconds=rng.randint(0, 86399))
            status = rng.choices((0, 1, 2), weights=(10, 45, 45))[0]
            modified = registered + (now - registered) * rng.random()
        else:
            registered, status, modified = now, 1, now
        completion = modified if status == 2 else None
        registration = LmsRegistration(
            self._uuid(rng),
            course_id,
            login,
            registered,
            status,
            rng.choice((2, 3, 4, 5)),
            completion,
            modified,
        )
        self.lms_registrations[registration.registration_id] = registration
        return registration

    # -- views for the servers -------------------------------------------------------------

    def studip_user_of(self, pid: int) -> StudipUser | None:
        user_id = self.studip_user_by_pid.get(pid)
        return self.studip_users.get(user_id) if user_id else None

    def iter_studip_course_members(self, course_id: str) -> Iterator[tuple[StudipUser, str]]:
        for user_id, status in self.memberships.get(course_id, {}).items():
            yield self.studip_users[user_id], status

    # -- changes ---------------------------------------------------------------------------

    def _touch_student(self, student: CoStudent, now: datetime) -> None:
        student.modified_at = now
        user = self.studip_user_of(student.pid)
        if user:
            user.modified_at = now

    def step(
        self, seed: int | None = None, *, include_deletes: bool = False, scale: float = 1.0
    ) -> StepSummary:
        """Apply one realistic batch of changes, all stamped with the world clock's now.

        Every change is one an incremental sync can see (a CO delta row or an LMS modified
        date), and Stud.IP enrolments change only for students who change in CO in the same
        step. Deleted records (only with ``include_deletes``) show only to a full sync.
        """
        with self.lock:
            self.step_count += 1
            seed = self.seed * 1000 + self.step_count if seed is None else seed
            rng = random.Random(seed)
            now = self.clock.now()
            summary = StepSummary(seed, now)
            k = max(1, round(self.size * 0.004 * scale))
            self._step_new_students(rng, now, k, summary)
            self._step_exmatriculations(rng, now, k, summary)
            self._step_name_and_email_changes(rng, now, k, summary)
            self._step_study_status_changes(rng, now, k, summary)
            self._step_lms(rng, now, k, summary)
            if include_deletes:
                self._step_deletes(rng, now, k, summary)
            return summary

    def _active_students(self) -> list[CoStudent]:
        return [s for s in self.co_students.values() if s.active and s.studid]

    def _step_new_students(
        self, rng: random.Random, now: datetime, k: int, summary: StepSummary
    ) -> None:
        for _ in range(k):
            student = self._generate_student(rng, now, active=True, index=-1)
            for study_nr in self.studies_by_person[student.stpersonnr]:
                self.co_studies[study_nr].modified_at = now
            for app_nr in self.applications_by_person[student.stpersonnr]:
                self.co_applications[app_nr].modified_at = now
            summary.add("new_student", student.stpersonnr)
            if student.studid and rng.random() < 0.5:
                self._student_learner(rng, student)
                self._register(rng, self.lms_learner_by_pid[student.pid], now, initial=False)
                summary.add("new_lms_registration", student.stpersonnr)
        for _ in range(max(1, k // 2)):
            # An application of an existing active student for another programme.
            student = rng.choice(self._active_students())
            application = self._add_application(
                rng, student, None, rng.randrange(len(PROGRAMS)), now
            )
            summary.add("new_application", application.bewerbungnr)

    def _step_exmatriculations(
        self, rng: random.Random, now: datetime, k: int, summary: StepSummary
    ) -> None:
        for student in rng.sample(self._active_students(), min(k, len(self._active_students()))):
            today = now.astimezone(LOCAL_ZONE).date()
            student.exmat_date = today
            student.exmat_status_key = rng.choice(("EZ", "A", "E"))
            student.exmat_semester = semester_token(today)
            student.deactivated_at = now
            self._touch_student(student, now)
            self.persons[student.pid].kind = "alumnus"
            for study_nr in self.studies_by_person[student.stpersonnr]:
                study = self.co_studies[study_nr]
                if study.active:
                    study.exmat_date, study.exmat_semester = today, semester_token(today)
                    study.exmat_type_key, study.status_key = student.exmat_status_key, "Z"
                    study.modified_at, study.deactivated_at = now, now
            user = self.studip_user_of(student.pid)
            if user:
                for course_id in self._current_and_next_courses(user.user_id):
                    self.drop(course_id, user.user_id)
            summary.add("exmatriculation", student.stpersonnr)

    def _current_and_next_courses(self, user_id: str) -> list[str]:
        wanted = (self.current_semester.semester_id, self.next_semester.semester_id)
        return sorted(
            c
            for c in self.user_courses.get(user_id, ())
            if any(self.course_runs_in(self.studip_courses[c], s) for s in wanted)
        )

    def _step_name_and_email_changes(
        self, rng: random.Random, now: datetime, k: int, summary: StepSummary
    ) -> None:
        for student in rng.sample(self._active_students(), min(k, len(self._active_students()))):
            person = self.persons[student.pid]
            person.family = rng.choice([f for f in FAMILY if f != person.family])
            self._touch_student(student, now)
            summary.add("name_change", student.stpersonnr)
            user = self.studip_user_of(student.pid)
            if user and rng.random() < 0.5:
                # A late enrolment into another course of the current semester.
                program = self.co_studies[self.studies_by_person[student.stpersonnr][0]].program
                self._enrol_student_in_semester(rng, user.user_id, program, [self.current_semester])
                summary.add("enrolment", student.stpersonnr)
        for student in rng.sample(self._active_students(), min(k, len(self._active_students()))):
            person = self.persons[student.pid]
            student.email_tu = (
                f"{_ascii(person.given).lower()}.{_ascii(person.family).lower()}"
                f".{student.stpersonnr}@student.tu-sandbox.at"
            )
            user = self.studip_user_of(student.pid)
            if user:
                user.email = student.email_tu
            self._touch_student(student, now)
            summary.add("email_change", student.stpersonnr)

    def _step_study_status_changes(
        self, rng: random.Random, now: datetime, k: int, summary: StepSummary
    ) -> None:
        candidates = [
            s
            for s in self.co_studies.values()
            if s.active
            and s.status_key == "I"
            and self.co_students[s.stpersonnr].active
            and self.co_students[s.stpersonnr].studid
        ]
        for study in rng.sample(candidates, min(k, len(candidates))):
            study.status_key = "B"  # on leave: drops the courses of this semester
            study.modified_at = now
            student = self.co_students[study.stpersonnr]
            summary.add("study_status_change", study.ststudiumnr)
            user = self.studip_user_of(student.pid)
            if user:
                dropped = self._current_and_next_courses(user.user_id)[:2]
                for course_id in dropped:
                    self.drop(course_id, user.user_id)
                if dropped:
                    summary.add("drop_out", student.stpersonnr)

    def _step_lms(self, rng: random.Random, now: datetime, k: int, summary: StepSummary) -> None:
        open_regs = [r for r in self.lms_registrations.values() if r.status in (0, 1)]
        for index, registration in enumerate(rng.sample(open_regs, min(k * 2, len(open_regs)))):
            registration.status = 2
            registration.modified_at = now
            if index % 3 == 1:
                # Arrives from a vessel late: completed days ago, modified now.
                registration.completion_date = now - timedelta(days=rng.randint(2, 30))
                summary.add("late_vessel_completion", registration.registration_id)
            else:
                registration.completion_date = now
                summary.add("completion", registration.registration_id)
        completed = [r for r in self.lms_registrations.values() if r.status == 2]
        for registration in rng.sample(completed, min(max(1, k // 2), len(completed))):
            retake = self._register(
                rng, registration.login, now, initial=False, course_id=registration.course_id
            )
            summary.add("retake", retake.registration_id)

    def _step_deletes(
        self, rng: random.Random, now: datetime, k: int, summary: StepSummary
    ) -> None:
        applications = sorted(self.co_applications)
        for nr in rng.sample(applications, min(k, len(applications))):
            application = self.co_applications.pop(nr)
            self.applications_by_person[application.stpersonnr].remove(nr)
            summary.add("deleted_application", nr)
        inactive = [s for s in self.co_students.values() if not s.active]
        for student in rng.sample(inactive, min(max(1, k // 2), len(inactive))):
            self.delete_student(student.stpersonnr)
            summary.add("deleted_student", student.stpersonnr)

    def delete_student(self, stpersonnr: int) -> None:
        """Remove a CO student with their studies and applications (and nothing else)."""
        with self.lock:
            student = self.co_students.pop(stpersonnr)
            self.student_by_ident.pop(student.ident_obf, None)
            for nr in self.studies_by_person.pop(stpersonnr, []):
                self.co_studies.pop(nr, None)
            for nr in self.applications_by_person.pop(stpersonnr, []):
                self.co_applications.pop(nr, None)

    # -- lookups -----------------------------------------------------------------------------

    def find_student(
        self, *, stpersonnr: int | None = None, ident: str | None = None
    ) -> CoStudent | None:
        if ident is not None:
            nr = self.student_by_ident.get(ident.upper())
            return self.co_students.get(nr) if nr is not None else None
        return self.co_students.get(stpersonnr) if stpersonnr is not None else None


def _cpf(rng: random.Random) -> str:
    """A syntactically valid Brazilian CPF (the HUB requires one for non-students)."""
    digits = [rng.randint(0, 9) for _ in range(9)]
    for length in (9, 10):
        total = sum(d * w for d, w in zip(digits, range(length + 1, 1, -1), strict=True))
        digits.append((total * 10 % 11) % 10)
    return "".join(map(str, digits))
