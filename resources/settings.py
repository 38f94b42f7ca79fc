"""hubsync configuration.

Every setting comes from an environment variable; an unset (or empty) variable means the sandbox
default, so a fresh checkout talks to the simulated systems of ``hubsync sandbox`` out of the box.
``load_settings`` validates everything at once and raises one ``ConfigError`` listing each bad
variable; secret values never appear in error messages or reprs.

Real systems and the sandbox do not mix: once an ``*_API_URL`` names another machine, every
``*_API_URL`` must be set and that system's credentials too (their defaults are the sandbox's
public ones), and plain http to another machine needs ``HUBSYNC_ALLOW_HTTP=1``.
"""

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr

from resources import sources

# The folder holding workspace.yaml. Relative paths resolve against it, so a code server or run
# worker started in another working directory still finds the same warehouse.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One setting, declared once: its default (the sandbox's), whether it is secret, and for
    integers their bounds. The reader validates against them and the resources' fields take
    their defaults and bounds from here (``setting_field``)."""

    name: str
    default: str | None
    secret: bool = False
    minimum: int | None = None  # integers only
    maximum: int | None = None


# Below it CAMPUSonline staging cannot screen a page even row by row (it needs about 160 MB).
MIN_WAREHOUSE_MEMORY_MB = 256

VARIABLES: tuple[Variable, ...] = (
    Variable("HUBSYNC_WAREHOUSE", "data/warehouse.duckdb"),
    # What DuckDB may hold in memory; beyond it, it spills to <warehouse>.tmp/ (a sync's landing
    # and staging are one transaction each, which DuckDB otherwise keeps wholly in memory).
    Variable("HUBSYNC_WAREHOUSE_MEMORY_MB", "512", minimum=MIN_WAREHOUSE_MEMORY_MB),
    Variable("HUBSYNC_INCREMENTAL_INTERVAL", "900", minimum=1),
    Variable("HUBSYNC_FULL_SYNC_CRON", "0 2 * * *"),
    Variable("HUBSYNC_KEEP_DAYS", "90", minimum=1),
    # Identity matching (assets/graph/): the rules in priority order, and where the matriculation
    # number (CO STUDID) sits in Stud.IP and in the LMS.
    Variable("HUBSYNC_MATCH_RULES", "studid,email,login"),
    Variable("STUDIP_STUDENT_ID_FIELD", "Matrikelnummer"),
    Variable("LMS_STUDENT_ID_FIELD", "StudentId"),
    Variable("HUBSYNC_AUTOMATION", "on"),
    # Limits against broken or hostile upstreams: the decoded size of one response, and pages
    # per call (CO_MAX_PAGES etc., far above what any university needs).
    Variable("HUBSYNC_MAX_RESPONSE_MB", "256", minimum=1),
    Variable("HUBSYNC_ALLOW_HTTP", "0"),
    Variable("CO_API_URL", "http://127.0.0.1:8701"),
    Variable("CO_CLIENT_ID", "hubsync"),
    Variable("CO_CLIENT_SECRET", "sandbox-co-secret", secret=True),
    Variable("CO_TIMEZONE", "Europe/Vienna"),
    Variable("CO_PAGE_SIZE", "20000", minimum=1),
    Variable("CO_INCREMENTAL_THRESHOLD", "200", minimum=0),
    Variable("CO_MAX_PAGES", "10000", minimum=1),
    Variable("STUDIP_API_URL", "http://127.0.0.1:8702/api.php"),
    Variable("STUDIP_USERNAME", "hubsync-api"),
    Variable("STUDIP_PASSWORD", "sandbox-studip-password", secret=True),
    Variable("STUDIP_OAUTH_CONSUMER_KEY", None),
    Variable("STUDIP_OAUTH_CONSUMER_SECRET", None, secret=True),
    Variable("STUDIP_OAUTH_TOKEN", None),
    Variable("STUDIP_OAUTH_TOKEN_SECRET", None, secret=True),
    # The sandbox's lecture-series coordinator teaches every semester: a crawl from there reaches
    # the whole course graph. A real installation names a few well-connected users of its own;
    # set but empty means none (the crawl starts from the API account alone).
    Variable("STUDIP_SEED_USERS", "lehre.koordination"),
    Variable("STUDIP_SEMESTERS", "current,next"),
    Variable("STUDIP_CONCURRENCY", "8", minimum=1, maximum=64),
    Variable("STUDIP_MAX_PAGES", "10000", minimum=1),
    # auto: the JSON:API listing when /jsonapi.php/v1/users/me answers as root, else the crawl
    Variable("STUDIP_API_MODE", "auto"),
    # unset: jsonapi.php/v1 beside STUDIP_API_URL (this default is the sandbox's)
    Variable("STUDIP_JSONAPI_URL", "http://127.0.0.1:8702/jsonapi.php/v1"),
    Variable("STUDIP_PAGE_SIZE", "500", minimum=1),  # items per JSON:API listing page
    # a listing re-reads the datafields and institutes of 1/N of the users per full sync
    Variable("STUDIP_DETAILS_REFRESH_DAYS", "90", minimum=1, maximum=3650),
    # an incremental sync lists on every N-th incremental sync, and crawls the users CO or the
    # LMS changed in between (a listing reads every user: 36 s at 100,000 students)
    Variable("STUDIP_RELIST_EVERY", "1", minimum=1, maximum=96),
    Variable("LMS_API_URL", "http://127.0.0.1:8703"),
    Variable("LMS_USERNAME", "hubsync"),
    Variable("LMS_PASSWORD", "sandbox-lms-password", secret=True),
    Variable("LMS_ORG_PATH", "/Root/Sandbox"),
    Variable("LMS_PAGE_SIZE", "10000", minimum=1),
    Variable("LMS_MAX_PAGES", "10000", minimum=1),
    Variable("HUB_API_URL", "http://127.0.0.1:8704/sandbox"),
    Variable("HUB_API_KEY", "sandbox-hub-key", secret=True),
    Variable("HUB_ORG_ID", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    Variable("HUB_WHO", "sis.hubsync"),
    Variable("HUB_BATCH_SIZE", "500", minimum=1),
    Variable("HUB_MAX_DELETE_SHARE", "0.10"),
    Variable("HUB_ACK_TIMEOUT", "300"),
    Variable("HUB_POLL_INTERVAL", "0.1"),
    Variable("HUB_MESSAGE_MAX_AGE", "86400"),
)
VARIABLES_BY_NAME: Mapping[str, Variable] = {v.name: v for v in VARIABLES}

# studid: matriculation number (CO STUDID = Stud.IP datafield / LMS profile field); email:
# university e-mail, case-insensitive; login: LMS login = Stud.IP username.
MATCH_RULES = ("studid", "email", "login")
STUDIP_OAUTH_VARIABLES = (
    "STUDIP_OAUTH_CONSUMER_KEY",
    "STUDIP_OAUTH_CONSUMER_SECRET",
    "STUDIP_OAUTH_TOKEN",
    "STUDIP_OAUTH_TOKEN_SECRET",
)
# What a real system needs besides its URL: the defaults are the sandbox's public values.
REAL_SYSTEM_VARIABLES = {
    "CO_API_URL": ("CO_CLIENT_SECRET",),
    "STUDIP_API_URL": ("STUDIP_PASSWORD",),  # or the four STUDIP_OAUTH_* variables
    "LMS_API_URL": ("LMS_PASSWORD", "LMS_ORG_PATH"),
    "HUB_API_URL": ("HUB_API_KEY", "HUB_ORG_ID"),
}


class ConfigError(ValueError):
    """One or more environment variables hold unusable values; ``errors`` lists each problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True, kw_only=True)
class CampusOnlineSettings:
    api_url: str
    client_id: str
    client_secret: SecretStr
    timezone: ZoneInfo
    page_size: int
    incremental_threshold: int
    max_pages: int  # per call: more means the paging does not end
    max_response_mb: int  # decoded size of one response at most


@dataclass(frozen=True, kw_only=True)
class StudipOAuth1:
    consumer_key: str
    consumer_secret: SecretStr
    token: str
    token_secret: SecretStr


@dataclass(frozen=True, kw_only=True)
class StudipSettings:
    api_url: str
    username: str
    password: SecretStr
    oauth1: StudipOAuth1 | None  # when set, requests are OAuth1-signed instead of Basic auth
    seed_users: tuple[str, ...]
    semesters: tuple[str, ...]
    concurrency: int
    student_id_field: str  # the user datafield holding the matriculation number
    max_pages: int  # per call: more means the paging does not end
    max_response_mb: int  # decoded size of one response at most
    api_mode: str  # auto | jsonapi | rest
    jsonapi_url: str  # the JSON:API base, .../jsonapi.php/v1
    listing_page_size: int  # items per JSON:API listing page
    details_refresh_days: int  # a listing re-reads every user's details once in N days
    relist_every: int  # incremental syncs list on every N-th one, crawl in between


STUDIP_API_MODES = ("auto", "jsonapi", "rest")


def jsonapi_url_beside(api_url: str) -> str:
    """``https://x/studip/api.php`` -> ``https://x/studip/jsonapi.php/v1``."""
    return api_url.rstrip("/").removesuffix("/api.php") + "/jsonapi.php/v1"


@dataclass(frozen=True, kw_only=True)
class LmsSettings:
    api_url: str
    username: str
    password: SecretStr
    org_path: str
    page_size: int
    student_id_field: str  # the OrgProfileFieldValue holding the matriculation number
    max_pages: int  # per call: more means the paging does not end
    max_response_mb: int  # decoded size of one response at most


@dataclass(frozen=True, kw_only=True)
class HubSettings:
    api_url: str  # includes the HUB environment segment; clients append /sync/v1 etc.
    api_key: SecretStr
    org_id: str
    who: str
    batch_size: int
    max_delete_share: float
    ack_timeout_s: float  # how long a sync waits for a phase's getLog before leaving it pending
    poll_interval_s: float  # first wait between getLog polls (it doubles up to 5 s)
    message_max_age_s: float  # a message still processing this long is given up as unknown


@dataclass(frozen=True, kw_only=True)
class Settings:
    warehouse_path: Path
    warehouse_memory_mb: int
    incremental_interval_s: int
    full_sync_cron: str
    keep_days: int
    match_rules: tuple[str, ...]  # identity rules in priority order: studid, email, login
    automation: bool  # sensors and schedules start running (on) or stopped (off)
    allow_http: bool  # plain http to hosts other than this machine is allowed
    co: CampusOnlineSettings
    studip: StudipSettings
    lms: LmsSettings
    hub: HubSettings
    uses_sandbox: bool  # no *_API_URL variable is set: everything points at the sandbox


def _is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


class _Reader:
    """Reads typed values from ``env``, recording an error (and returning the default) per bad
    value so that every problem is reported in one go."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []
        self.values: dict[str, Any] = {}  # name -> the typed value read

    def _default(self, name: str) -> str:
        default = VARIABLES_BY_NAME[name].default
        assert default is not None, f"{name} has no default"
        return default

    def _value(self, name: str) -> str:
        if not _is_set(self.env, name):
            return self._default(name)
        value = self.env[name]
        return value if VARIABLES_BY_NAME[name].secret else value.strip()

    def _keep(self, name: str, value: T) -> T:
        self.values[name] = value
        return value

    def _parse(self, name: str, parse: Callable[[str], T], requirement: str) -> T:
        value = self._value(name)
        try:
            return self._keep(name, parse(value))
        except ValueError:
            self.errors.append(f"{name} {requirement} (got {_shown(name, value)})")
            return self._keep(name, parse(self._default(name)))

    def text(self, name: str) -> str:
        return self._keep(name, self._value(name))

    def secret(self, name: str) -> SecretStr:
        return self._keep(name, SecretStr(self._value(name)))

    def integer(self, name: str) -> int:
        variable = VARIABLES_BY_NAME[name]
        minimum, maximum = variable.minimum, variable.maximum
        assert minimum is not None, f"{name} declares no minimum: not an integer setting"
        if maximum is not None:
            requirement = f"must be an integer from {minimum} to {maximum}"
        elif minimum == 1:
            requirement = "must be a positive integer"
        elif minimum == 0:
            requirement = "must be a non-negative integer"
        else:
            requirement = f"must be an integer of at least {minimum}"

        def parse(value: str) -> int:
            number = int(value)
            if number < minimum or (maximum is not None and number > maximum):
                raise ValueError(value)
            return number

        return self._parse(name, parse, requirement)

    def fraction(self, name: str) -> float:
        def parse(value: str) -> float:
            number = float(value)
            if not (math.isfinite(number) and 0.0 <= number <= 1.0):
                raise ValueError(value)
            return number

        return self._parse(name, parse, "must be a number from 0 to 1")

    def seconds(self, name: str) -> float:
        def parse(value: str) -> float:
            number = float(value)
            if not (math.isfinite(number) and number > 0):
                raise ValueError(value)
            return number

        return self._parse(name, parse, "must be a positive number of seconds")

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        def parse(value: str) -> str:
            if value.lower() not in choices:
                raise ValueError(value)
            return value.lower()

        return self._parse(name, parse, f"must be one of {', '.join(choices)}")

    def url(self, name: str, *, path_suffix: str = "") -> str:
        def parse(value: str) -> str:
            url = value.rstrip("/")
            parts = urlsplit(url)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.port == 0  # .port itself raises ValueError for a malformed port
                or any(char.isspace() for char in url)
            ):
                raise ValueError(value)
            if path_suffix and not parts.path.endswith(path_suffix):
                raise ValueError(value)
            return url

        requirement = "must be an http(s) URL with a host"
        if path_suffix:
            requirement = f"must be an http(s) URL ending in {path_suffix}"
        return self._parse(name, parse, requirement)

    def zone(self, name: str) -> ZoneInfo:
        def parse(value: str) -> ZoneInfo:
            try:
                return ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:  # ValueError: malformed keys
                raise ValueError(value) from exc

        return self._parse(name, parse, "must be an IANA time zone such as Europe/Vienna")

    def org_path(self, name: str) -> str:
        def parse(value: str) -> str:
            path = value.rstrip("/")
            if path != "/Root" and not path.startswith("/Root/"):
                raise ValueError(value)
            return path

        return self._parse(name, parse, "must be an LMS org path starting with /Root")

    def cron(self, name: str) -> str:
        def parse(value: str) -> str:
            if value != self._default(name) and not _is_valid_cron(value):
                raise ValueError(value)
            return value

        return self._parse(name, parse, "must be a 5-field cron expression such as '0 2 * * *'")

    def rules(self, name: str) -> tuple[str, ...]:
        def parse(value: str) -> tuple[str, ...]:
            rules = tuple(item.strip() for item in value.split(",") if item.strip())
            if not rules or len(set(rules)) < len(rules) or set(rules) - set(MATCH_RULES):
                raise ValueError(value)
            return rules

        requirement = (
            f"must list identity rules in priority order, each once, from {', '.join(MATCH_RULES)}"
        )
        return self._parse(name, parse, requirement)

    def flag(self, name: str) -> bool:
        def parse(value: str) -> bool:
            if value not in ("0", "1"):
                raise ValueError(value)
            return value == "1"

        return self._parse(name, parse, "must be 0 or 1")

    def switch(self, name: str) -> bool:
        def parse(value: str) -> bool:
            if value.lower() not in ("on", "off"):
                raise ValueError(value)
            return value.lower() == "on"

        return self._parse(name, parse, "must be on or off")

    def items(
        self, name: str, *, required: str = "", empty_means_none: bool = False
    ) -> tuple[str, ...]:
        """Comma-separated items; with ``required`` (what they name), at least one. With
        ``empty_means_none``, a variable set to nothing means no items (unset: the default)."""
        if empty_means_none and name in self.env and not self.env[name].strip():
            return self._keep(name, ())
        value = self._value(name)
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if required and not items:
            self.errors.append(
                f"{name} must name at least one {required} (got {_shown(name, value)})"
            )
            items = tuple(item.strip() for item in self._default(name).split(","))
        return self._keep(name, items)

    def path(self, name: str) -> Path:
        value = self._value(name)
        path = Path(value).expanduser()
        path = path if path.is_absolute() else PROJECT_ROOT / path
        if path.is_dir():
            self.errors.append(
                f"{name} must be a file path, not a directory (got {_shown(name, value)})"
            )
            return self._keep(name, PROJECT_ROOT / self._default(name))
        return self._keep(name, path)


def _is_valid_cron(value: str) -> bool:
    # Dagster is imported here, not at the top: the CLI reads the settings before it needs
    # Dagster, and importing it takes seconds (`hubsync --help`, a configuration error).
    from dagster._utils.schedules import is_valid_cron_string  # the rule schedules apply

    return is_valid_cron_string(value)


def _shown(name: str, value: str) -> str:
    """How a bad value appears in an error: secrets never, passwords inside URLs masked."""
    if VARIABLES_BY_NAME[name].secret:
        return "a value that is not shown because it is secret"
    parts = urlsplit(value)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        value = urlunsplit(parts._replace(netloc=netloc))
    return repr(value)


def _studip_oauth1(read: _Reader) -> StudipOAuth1 | None:
    present = [name for name in STUDIP_OAUTH_VARIABLES if _is_set(read.env, name)]
    if not present:
        return None
    if len(present) < len(STUDIP_OAUTH_VARIABLES):
        missing = [name for name in STUDIP_OAUTH_VARIABLES if name not in present]
        read.errors.append(
            "Stud.IP OAuth1 needs all four STUDIP_OAUTH_* variables or none; "
            f"set {', '.join(present)} but not {', '.join(missing)}"
        )
        return None
    return StudipOAuth1(
        consumer_key=read.text("STUDIP_OAUTH_CONSUMER_KEY"),
        consumer_secret=read.secret("STUDIP_OAUTH_CONSUMER_SECRET"),
        token=read.text("STUDIP_OAUTH_TOKEN"),
        token_secret=read.secret("STUDIP_OAUTH_TOKEN_SECRET"),
    )


def _message_max_age(read: _Reader, ack_timeout: float) -> float:
    """HUB_MESSAGE_MAX_AGE, longer than HUB_ACK_TIMEOUT: a sync must have waited for a message
    before it may give it up."""
    max_age = read.seconds("HUB_MESSAGE_MAX_AGE")
    unread = ("HUB_ACK_TIMEOUT ", "HUB_MESSAGE_MAX_AGE ")
    if max_age <= ack_timeout and not any(e.startswith(unread) for e in read.errors):
        read.errors.append(
            f"HUB_MESSAGE_MAX_AGE must be longer than HUB_ACK_TIMEOUT ({ack_timeout:g} s) "
            f"(got {_shown('HUB_MESSAGE_MAX_AGE', read.text('HUB_MESSAGE_MAX_AGE'))})"
        )
    return max_age


def is_loopback(host: str) -> bool:
    """``host`` is this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_url_variables() -> list[str]:
    """The settings naming each system's URL (``sources.url_variables``). Setting any of them
    means "talk to real systems": the CLI then does not start the sandbox."""
    return list(sources.url_variables().values())


def _real_system_errors(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Problems of a configuration that mixes real systems (a URL naming another machine) with
    sandbox settings, or sends to another machine over plain http."""
    urls = {s.url_variable: s.api_url(settings) for s in sources.SOURCE_SYSTEMS}
    urls[sources.HUB_URL_VARIABLE] = settings.hub.api_url
    real = [name for name, url in urls.items() if not is_loopback(urlsplit(url).hostname or "")]
    errors = []
    unset = [name for name in api_url_variables() if not _is_set(env, name)]
    if real and unset:
        errors.append(
            f"{', '.join(real)} name{'s' if len(real) == 1 else ''} a real system but "
            f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set and would point "
            "at the sandbox on this machine; set every *_API_URL (or none, for the sandbox)"
        )
    for name in real:
        needed = REAL_SYSTEM_VARIABLES.get(name, ())
        if name == "STUDIP_API_URL" and settings.studip.oauth1 is not None:
            needed = ()
        missing = [variable for variable in needed if not _is_set(env, variable)]
        if missing:
            errors.append(
                f"{name} names a real system but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: the default is the sandbox's "
                "public value; set it for the real system"
            )
        if urlsplit(urls[name]).scheme == "http" and not settings.allow_http:
            errors.append(
                f"{name} sends credentials and personal data over plain http to another "
                f"machine ({urlsplit(urls[name]).hostname}); use https, or set "
                "HUBSYNC_ALLOW_HTTP=1 if the network is trusted"
            )
    return errors


def _read_settings(read: _Reader) -> Settings:
    max_response_mb = read.integer("HUBSYNC_MAX_RESPONSE_MB")
    return Settings(
        warehouse_path=read.path("HUBSYNC_WAREHOUSE"),
        warehouse_memory_mb=read.integer("HUBSYNC_WAREHOUSE_MEMORY_MB"),
        incremental_interval_s=read.integer("HUBSYNC_INCREMENTAL_INTERVAL"),
        full_sync_cron=read.cron("HUBSYNC_FULL_SYNC_CRON"),
        keep_days=read.integer("HUBSYNC_KEEP_DAYS"),
        match_rules=read.rules("HUBSYNC_MATCH_RULES"),
        automation=read.switch("HUBSYNC_AUTOMATION"),
        allow_http=read.flag("HUBSYNC_ALLOW_HTTP"),
        co=CampusOnlineSettings(
            api_url=read.url("CO_API_URL"),
            client_id=read.text("CO_CLIENT_ID"),
            client_secret=read.secret("CO_CLIENT_SECRET"),
            timezone=read.zone("CO_TIMEZONE"),
            page_size=read.integer("CO_PAGE_SIZE"),
            incremental_threshold=read.integer("CO_INCREMENTAL_THRESHOLD"),
            max_pages=read.integer("CO_MAX_PAGES"),
            max_response_mb=max_response_mb,
        ),
        studip=StudipSettings(
            api_url=(studip_api_url := read.url("STUDIP_API_URL", path_suffix="/api.php")),
            username=read.text("STUDIP_USERNAME"),
            password=read.secret("STUDIP_PASSWORD"),
            oauth1=_studip_oauth1(read),
            seed_users=read.items("STUDIP_SEED_USERS", empty_means_none=True),
            semesters=read.items("STUDIP_SEMESTERS", required="semester"),
            concurrency=read.integer("STUDIP_CONCURRENCY"),
            student_id_field=read.text("STUDIP_STUDENT_ID_FIELD"),
            max_pages=read.integer("STUDIP_MAX_PAGES"),
            max_response_mb=max_response_mb,
            api_mode=read.choice("STUDIP_API_MODE", STUDIP_API_MODES),
            jsonapi_url=(
                read.url("STUDIP_JSONAPI_URL", path_suffix="/jsonapi.php/v1")
                if _is_set(read.env, "STUDIP_JSONAPI_URL")
                else jsonapi_url_beside(studip_api_url)
            ),
            listing_page_size=read.integer("STUDIP_PAGE_SIZE"),
            details_refresh_days=read.integer("STUDIP_DETAILS_REFRESH_DAYS"),
            relist_every=read.integer("STUDIP_RELIST_EVERY"),
        ),
        lms=LmsSettings(
            api_url=read.url("LMS_API_URL"),
            username=read.text("LMS_USERNAME"),
            password=read.secret("LMS_PASSWORD"),
            org_path=read.org_path("LMS_ORG_PATH"),
            page_size=read.integer("LMS_PAGE_SIZE"),
            student_id_field=read.text("LMS_STUDENT_ID_FIELD"),
            max_pages=read.integer("LMS_MAX_PAGES"),
            max_response_mb=max_response_mb,
        ),
        hub=HubSettings(
            api_url=read.url("HUB_API_URL"),
            api_key=read.secret("HUB_API_KEY"),
            org_id=read.text("HUB_ORG_ID"),
            who=read.text("HUB_WHO"),
            batch_size=read.integer("HUB_BATCH_SIZE"),
            max_delete_share=read.fraction("HUB_MAX_DELETE_SHARE"),
            ack_timeout_s=(ack_timeout := read.seconds("HUB_ACK_TIMEOUT")),
            poll_interval_s=read.seconds("HUB_POLL_INTERVAL"),
            message_max_age_s=_message_max_age(read, ack_timeout),
        ),
        uses_sandbox=not any(_is_set(read.env, name) for name in api_url_variables()),
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate all settings from ``env`` (default: ``os.environ``).

    Raises ``ConfigError`` naming every variable that holds an unusable value; once every value
    is usable, also for a mix of real systems and sandbox settings (see the module docstring).
    """
    read = _Reader(os.environ if env is None else env)
    settings = _read_settings(read)
    if read.errors:
        raise ConfigError(read.errors)
    errors = _real_system_errors(settings, read.env)
    if errors:
        raise ConfigError(errors)
    return settings


@cache
def _defaults() -> Mapping[str, Any]:
    read = _Reader({})
    _read_settings(read)
    return read.values


def setting_default(name: str) -> Any:
    """The default of the setting ``name``, typed as the settings read it (``512``, not
    ``"512"``): for code that needs it without reading the environment."""
    return _defaults()[name]


def _plain(value: Any) -> Any:
    """A settings value as resource config takes it."""
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value


def setting_field(name: str, description: str) -> Any:
    """The pydantic field of a resource that holds the setting ``name``: its default and bounds
    are the ones declared in ``VARIABLES`` (read as the settings read them), so they are
    written once."""
    variable = VARIABLES_BY_NAME[name]
    if variable.secret or variable.default is None:
        raise ValueError(f"{name} has no default to give a resource field")
    bounds = {"ge": variable.minimum, "le": variable.maximum}
    return Field(
        default=_plain(setting_default(name)),
        description=f"{description} ({name}).",
        **{key: bound for key, bound in bounds.items() if bound is not None},
    )


def resource_config(section: Any) -> dict[str, Any]:
    """The plain values of a settings section (``settings.co`` …) as keyword arguments of its
    resource, whose fields have the same names. Secrets and nested parts are left out: they
    are passed on their own (secrets by ``secret_config``); unset parts (None) keep the
    resource's default."""
    config = {}
    for item in fields(section):
        value = getattr(section, item.name)
        if value is not None and not isinstance(value, SecretStr) and not is_dataclass(value):
            config[item.name] = _plain(value)
    return config


def secret_config(
    name: str,
    value: SecretStr | None = None,
    *,
    in_process: bool = False,
    env: Mapping[str, str] | None = None,
) -> str:
    """The value to put in a resource's config for the secret variable ``name``: the one path
    by which every resource gets its secrets.

    ``dagster.EnvVar(name)`` when the variable is set, so the real secret is resolved inside the
    run and never stored in run config, the UI or logs. Otherwise, or for a resource used
    directly rather than by a run (``in_process``, the CLI), the secret itself: ``value`` as the
    settings read it, else the (public) sandbox default.
    """
    variable = VARIABLES_BY_NAME.get(name)
    if variable is None or not variable.secret:
        raise ValueError(f"{name} is not a secret hubsync setting")
    if not in_process and _is_set(os.environ if env is None else env, name):
        import dagster as dg

        return dg.EnvVar(name)
    if value is not None:
        return value.get_secret_value()
    if variable.default is None:
        raise ValueError(f"{name} is not set and has no sandbox default")
    return variable.default
