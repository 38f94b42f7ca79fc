import re
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pydantic import SecretStr

from resources.hub import hub_resource
from resources.lms import lms_resource
from resources.settings import (
    PROJECT_ROOT,
    STUDIP_OAUTH_VARIABLES,
    VARIABLES,
    VARIABLES_BY_NAME,
    ConfigError,
    load_settings,
    secret_config,
)

SECRET_NAMES = [v.name for v in VARIABLES if v.secret]
# A complete configuration of real systems: every URL, and the credentials whose defaults are
# the sandbox's public values.
REAL = {
    "CO_API_URL": "https://campus.example.org/co/dms",
    "CO_CLIENT_SECRET": "co-secret-zz3",
    "STUDIP_API_URL": "https://studip.example.org/api.php",
    "STUDIP_PASSWORD": "studip-password-zz4",
    "LMS_API_URL": "https://example.marinels.com",
    "LMS_PASSWORD": "lms-password-zz5",
    "LMS_ORG_PATH": "/Root/Example",
    "HUB_API_URL": "https://apihub.example.org/prod",
    "HUB_API_KEY": "hub-key-zz6",
    "HUB_ORG_ID": "org-zz7",
}
OAUTH = {
    "STUDIP_OAUTH_CONSUMER_KEY": "consumer-key",
    "STUDIP_OAUTH_CONSUMER_SECRET": "oauth-consumer-secret-zz1",
    "STUDIP_OAUTH_TOKEN": "token",
    "STUDIP_OAUTH_TOKEN_SECRET": "oauth-token-secret-zz2",
}


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value


def test_defaults_point_at_the_sandbox() -> None:
    settings = load_settings({})

    assert settings.uses_sandbox
    assert settings.warehouse_path == PROJECT_ROOT / "data" / "warehouse.duckdb"
    assert (PROJECT_ROOT / "workspace.yaml").is_file()
    assert settings.co.api_url == "http://127.0.0.1:8701"
    assert settings.co.client_secret.get_secret_value() == "sandbox-co-secret"
    assert settings.co.timezone.key == "Europe/Vienna"
    assert (settings.co.page_size, settings.co.incremental_threshold) == (20000, 200)
    assert settings.studip.api_url == "http://127.0.0.1:8702/api.php"
    assert settings.studip.oauth1 is None
    assert settings.studip.seed_users == ("lehre.koordination",)
    assert settings.studip.semesters == ("current", "next")
    assert settings.studip.concurrency == 8
    assert settings.lms.org_path == "/Root/Sandbox"
    assert settings.lms.page_size == 10000
    assert settings.hub.api_url == "http://127.0.0.1:8704/sandbox"
    assert settings.hub.org_id == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert settings.hub.who == "sis.hubsync"
    assert (settings.hub.batch_size, settings.hub.max_delete_share) == (500, 0.10)
    assert settings.incremental_interval_s == 900
    assert settings.full_sync_cron == "0 2 * * *"
    assert settings.keep_days == 90


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CO_PAGE_SIZE", "123")
    assert load_settings().co.page_size == 123


def test_relative_warehouse_resolves_against_the_project_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"HUBSYNC_WAREHOUSE": "elsewhere/w.duckdb"})
    assert settings.warehouse_path == PROJECT_ROOT / "elsewhere" / "w.duckdb"

    absolute = tmp_path / "w.duckdb"
    assert load_settings({"HUBSYNC_WAREHOUSE": str(absolute)}).warehouse_path == absolute


def test_values_are_parsed_and_normalised() -> None:
    settings = load_settings(
        {
            **REAL,
            "STUDIP_API_URL": "https://studip.example.org/api.php/",
            "HUB_API_URL": " https://apihub.example.org/prod/ ",
            "LMS_ORG_PATH": "/Root/Uni/",
            "STUDIP_SEED_USERS": " alice, bob ,,",
            "STUDIP_SEMESTERS": "current",
            "CO_TIMEZONE": "Europe/London",
            "CO_INCREMENTAL_THRESHOLD": "0",
            "HUB_MAX_DELETE_SHARE": "1",
            "STUDIP_CONCURRENCY": "64",
        }
    )
    assert settings.studip.api_url == "https://studip.example.org/api.php"
    assert settings.hub.api_url == "https://apihub.example.org/prod"
    assert settings.lms.org_path == "/Root/Uni"
    assert settings.studip.seed_users == ("alice", "bob")
    assert load_settings({"STUDIP_SEED_USERS": ""}).studip.seed_users == (), "set empty: none"
    assert load_settings({"STUDIP_SEED_USERS": " , "}).studip.seed_users == ()
    assert load_settings({}).studip.seed_users == ("lehre.koordination",), "unset: the default"
    assert settings.studip.semesters == ("current",)
    assert settings.co.incremental_threshold == 0
    assert settings.hub.max_delete_share == 1.0
    assert settings.studip.concurrency == 64
    # reference/campusonline.md §5 test vector: 13.06.2024T11:52:43 London -> 1718275963
    stamp = datetime(2024, 6, 13, 11, 52, 43, tzinfo=settings.co.timezone)
    assert stamp.timestamp() == 1718275963


def test_empty_values_mean_the_default() -> None:
    settings = load_settings({"CO_PAGE_SIZE": "", "CO_API_URL": "  ", "LMS_PASSWORD": ""})
    assert settings.co.page_size == 20000
    assert settings.lms.password.get_secret_value() == "sandbox-lms-password"
    assert settings.uses_sandbox


def test_api_urls_mean_real_systems() -> None:
    settings = load_settings(REAL)
    assert not settings.uses_sandbox
    assert settings.hub.api_key.get_secret_value() == "hub-key-zz6"
    # a sandbox on other ports of this machine is no real system: the sandbox credentials do
    local = {
        "CO_API_URL": "http://127.0.0.1:9701",
        "STUDIP_API_URL": "http://localhost:9702/api.php",
        "LMS_API_URL": "http://[::1]:9703",
        "HUB_API_URL": "http://127.0.0.2:9704/sandbox",
    }
    assert not load_settings(local).uses_sandbox
    assert load_settings({"HUB_API_URL": "http://127.0.0.1:9704/sandbox"}).hub.api_url


@pytest.mark.parametrize("name", ["CO_API_URL", "STUDIP_API_URL", "LMS_API_URL", "HUB_API_URL"])
def test_one_real_api_url_with_the_others_unset_is_refused(name: str) -> None:
    """A half-configured production would send real data to (or read it from) the sandbox
    defaults on this machine."""
    env = {name: REAL[name], **{k: v for k, v in REAL.items() if not k.endswith("_API_URL")}}
    error = config_error(env)
    (message,) = error.errors
    assert message.startswith(f"{name} names a real system but ")
    others = [
        n for n in ("CO_API_URL", "STUDIP_API_URL", "LMS_API_URL", "HUB_API_URL") if n != name
    ]
    assert f"{', '.join(others)} are not set" in message
    assert not any(secret in str(error) for secret in REAL.values() if "zz" in secret)


def test_a_real_system_with_sandbox_credentials_is_refused() -> None:
    needed = {
        "CO_CLIENT_SECRET": "CO_API_URL",
        "STUDIP_PASSWORD": "STUDIP_API_URL",
        "LMS_PASSWORD": "LMS_API_URL",
        "LMS_ORG_PATH": "LMS_API_URL",
        "HUB_API_KEY": "HUB_API_URL",
        "HUB_ORG_ID": "HUB_API_URL",
    }
    for variable, url in needed.items():
        env = {k: v for k, v in REAL.items() if k != variable}
        (message,) = config_error(env).errors
        assert message.startswith(f"{url} names a real system but {variable} is not set"), message
        assert "sandbox's public value" in message
    # the whole HUB at once: the public sandbox key and org would go to the real HUB
    env = {k: v for k, v in REAL.items() if k not in ("HUB_API_KEY", "HUB_ORG_ID")}
    assert "HUB_API_KEY, HUB_ORG_ID are not set" in str(config_error(env))
    # Stud.IP with OAuth1 needs no password
    oauth = {k: v for k, v in REAL.items() if k != "STUDIP_PASSWORD"} | OAUTH
    assert load_settings(oauth).studip.oauth1 is not None


def test_plain_http_to_another_machine_needs_hubsync_allow_http() -> None:
    env = REAL | {"LMS_API_URL": "http://lms.example.org", "HUB_API_URL": "http://hub.test/prod"}
    error = config_error(env)
    assert [e.split()[0] for e in error.errors] == ["LMS_API_URL", "HUB_API_URL"]
    assert "plain http to another machine (lms.example.org)" in error.errors[0]
    assert "HUBSYNC_ALLOW_HTTP=1" in error.errors[0]
    assert load_settings(env | {"HUBSYNC_ALLOW_HTTP": "1"}).allow_http
    assert not load_settings(REAL).allow_http


@pytest.mark.parametrize(
    ("name", "value", "requirement"),
    [
        ("CO_PAGE_SIZE", "abc", "must be a positive integer"),
        ("CO_PAGE_SIZE", "0", "must be a positive integer"),
        ("CO_PAGE_SIZE", "2.5", "must be a positive integer"),
        ("CO_INCREMENTAL_THRESHOLD", "-1", "must be a non-negative integer"),
        ("LMS_PAGE_SIZE", "many", "must be a positive integer"),
        ("HUB_BATCH_SIZE", "0", "must be a positive integer"),
        ("HUBSYNC_INCREMENTAL_INTERVAL", "15m", "must be a positive integer"),
        ("HUBSYNC_KEEP_DAYS", "-3", "must be a positive integer"),
        ("HUBSYNC_MATCH_RULES", "studid,name", "must list identity rules in priority order"),
        ("HUBSYNC_MATCH_RULES", "email,email", "must list identity rules in priority order"),
        ("HUBSYNC_MATCH_RULES", " , ", "must list identity rules in priority order"),
        ("HUBSYNC_KEEP_DAYS", "0", "must be a positive integer"),
        ("HUBSYNC_INCREMENTAL_INTERVAL", "0", "must be a positive integer"),
        ("HUBSYNC_AUTOMATION", "yes", "must be on or off"),
        ("STUDIP_CONCURRENCY", "0", "must be an integer from 1 to 64"),
        ("STUDIP_CONCURRENCY", "65", "must be an integer from 1 to 64"),
        ("HUB_MAX_DELETE_SHARE", "1.5", "must be a number from 0 to 1"),
        ("HUB_MAX_DELETE_SHARE", "-0.1", "must be a number from 0 to 1"),
        ("HUB_MAX_DELETE_SHARE", "nan", "must be a number from 0 to 1"),
        ("HUB_MAX_DELETE_SHARE", "ten percent", "must be a number from 0 to 1"),
        ("CO_TIMEZONE", "Mars/Olympus_Mons", "must be an IANA time zone"),
        ("CO_TIMEZONE", "../etc/passwd", "must be an IANA time zone"),
        ("CO_API_URL", "127.0.0.1:8701", "must be an http(s) URL with a host"),
        ("LMS_API_URL", "ftp://lms.example.org", "must be an http(s) URL with a host"),
        ("HUB_API_URL", "https://", "must be an http(s) URL with a host"),
        ("HUB_API_URL", "http://hub:port/x", "must be an http(s) URL with a host"),
        ("STUDIP_API_URL", "https://studip.example.org/api", "must be an http(s) URL ending in"),
        ("LMS_ORG_PATH", "/Sandbox", "must be an LMS org path starting with /Root"),
        ("LMS_ORG_PATH", "/Rooted", "must be an LMS org path starting with /Root"),
        ("HUBSYNC_FULL_SYNC_CRON", "every night", "must be a 5-field cron expression"),
        ("HUBSYNC_FULL_SYNC_CRON", "0 2 * *", "must be a 5-field cron expression"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(
    name: str, value: str, requirement: str
) -> None:
    error = config_error({name: value})
    assert str(error).startswith(f"{name} {requirement}")
    assert str(error).endswith(f"(got {value.strip()!r})")
    assert isinstance(error, ValueError)


def test_match_rules_keep_their_order_and_may_leave_rules_out() -> None:
    assert load_settings({}).match_rules == ("studid", "email", "login")
    assert load_settings({"HUBSYNC_MATCH_RULES": " email , studid"}).match_rules == (
        "email",
        "studid",
    )


def test_all_errors_are_reported_together() -> None:
    error = config_error({"CO_PAGE_SIZE": "x", "LMS_PAGE_SIZE": "y", "CO_TIMEZONE": "Nowhere"})
    names = [e.split()[0] for e in error.errors]
    assert sorted(names) == ["CO_PAGE_SIZE", "CO_TIMEZONE", "LMS_PAGE_SIZE"]
    assert all(name in str(error) for name in names)


def test_studip_oauth1_needs_all_four_variables() -> None:
    oauth1 = load_settings(OAUTH).studip.oauth1
    assert oauth1 is not None
    assert oauth1.consumer_key == "consumer-key"
    assert oauth1.token_secret.get_secret_value() == "oauth-token-secret-zz2"

    partial = {k: v for k, v in OAUTH.items() if k != "STUDIP_OAUTH_TOKEN"}
    partial.pop("STUDIP_OAUTH_TOKEN_SECRET")
    message = str(config_error(partial))
    assert "not STUDIP_OAUTH_TOKEN, STUDIP_OAUTH_TOKEN_SECRET" in message
    assert "oauth-consumer-secret-zz1" not in message


def test_url_passwords_are_masked_in_errors() -> None:
    message = str(config_error({"LMS_API_URL": "ftp://user:hunter2@lms.example.org"}))
    assert "hunter2" not in message
    assert "ftp://user:***@lms.example.org" in message


def test_secrets_never_show_in_repr_or_str() -> None:
    secrets = {name: f"very-secret-{i}-value" for i, name in enumerate(SECRET_NAMES)}
    settings = load_settings(
        secrets | {"STUDIP_OAUTH_CONSUMER_KEY": "k", "STUDIP_OAUTH_TOKEN": "t"}
    )
    for text in (repr(settings), str(settings)):
        assert not re.search(r"very-secret-\d+-value", text)
    assert settings.hub.api_key.get_secret_value() == secrets["HUB_API_KEY"]


def test_secret_config_uses_envvar_only_when_the_secret_is_set() -> None:
    configured = secret_config("HUB_API_KEY", env={"HUB_API_KEY": "real-key"})
    assert isinstance(configured, dg.EnvVar)
    assert configured == "HUB_API_KEY"  # the variable's name, not its value

    assert secret_config("HUB_API_KEY", env={}) == "sandbox-hub-key"
    with pytest.raises(ValueError, match="not set and has no sandbox default"):
        secret_config("STUDIP_OAUTH_TOKEN_SECRET", env={})
    with pytest.raises(ValueError, match="not a secret"):
        secret_config("CO_CLIENT_ID", env={})


def test_every_resource_takes_its_secrets_by_the_one_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets reach resources only through secret_config: an EnvVar when the variable is set,
    else the value the settings read (not the sandbox default, which is what LMS and HUB used to
    get for settings read from anything but os.environ); in process (the CLI) the value."""
    read = SecretStr("read-from-the-settings")
    monkeypatch.delenv("LMS_PASSWORD", raising=False)
    assert secret_config("LMS_PASSWORD", read) == "read-from-the-settings"
    monkeypatch.setenv("LMS_PASSWORD", "from-the-environment")
    assert isinstance(secret_config("LMS_PASSWORD", read), dg.EnvVar)
    assert secret_config("LMS_PASSWORD", read, in_process=True) == "read-from-the-settings"

    env = {"LMS_PASSWORD": "an-explicit-one", "HUB_API_KEY": "another-one"}
    monkeypatch.delenv("LMS_PASSWORD")
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    settings = load_settings(env)
    assert lms_resource(settings.lms).password == "an-explicit-one"
    assert hub_resource(settings.hub).api_key == "another-one"


def _documented_names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:HUBSYNC|CO|STUDIP|LMS|HUB)_[A-Z0-9_]+\b", text))


def test_every_variable_is_documented_with_its_default() -> None:
    names = {v.name for v in VARIABLES}
    env_example = (PROJECT_ROOT / ".env.example").read_text()
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert _documented_names(env_example) == names
    assert names <= _documented_names(readme)
    for variable in VARIABLES:
        # commented out, so that copying the file changes nothing (and sets no secret)
        line = f"# {variable.name}={variable.default or ''}"
        assert re.search(rf"^{re.escape(line)}$", env_example, re.M), line


def test_defaults_match_what_the_sandbox_serves() -> None:
    """Unset settings must reach the sandbox: same credentials, seed user and HUB org."""
    import inspect

    from sandbox.campusonline import CoServer
    from sandbox.hub import HubServer
    from sandbox.lms import LmsServer
    from sandbox.studip import StudipServer
    from sandbox.world import SEED_DOZENT_USERNAME

    def default(server: type, option: str) -> object:
        return inspect.signature(server).parameters[option].default

    settings = load_settings({})
    assert settings.co.client_id == default(CoServer, "client_id")
    assert settings.co.client_secret.get_secret_value() == default(CoServer, "client_secret")
    assert settings.studip.username == default(StudipServer, "username")
    assert settings.studip.password.get_secret_value() == default(StudipServer, "password")
    assert settings.studip.seed_users == (SEED_DOZENT_USERNAME,)
    assert settings.lms.username == default(LmsServer, "username")
    assert settings.lms.password.get_secret_value() == default(LmsServer, "password")
    assert settings.lms.org_path == default(LmsServer, "org_path")
    assert settings.hub.api_key.get_secret_value() == default(HubServer, "api_key")
    assert settings.hub.org_id == default(HubServer, "org_id")
    assert settings.hub.api_url.endswith("/" + str(default(HubServer, "env")))


def test_automation_switch() -> None:
    assert load_settings({}).automation
    assert not load_settings({"HUBSYNC_AUTOMATION": "OFF"}).automation
    assert load_settings({"HUBSYNC_AUTOMATION": " on "}).automation


def test_hub_waits_are_positive_seconds() -> None:
    settings = load_settings({"HUB_ACK_TIMEOUT": "12.5", "HUB_POLL_INTERVAL": "0.05"})
    assert (settings.hub.ack_timeout_s, settings.hub.poll_interval_s) == (12.5, 0.05)
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(
            ConfigError,
            match=f"HUB_POLL_INTERVAL must be a positive number of seconds \\(got '{bad}'\\)",
        ):
            load_settings({"HUB_POLL_INTERVAL": bad})


def test_hub_message_max_age_defaults_to_a_day() -> None:
    assert load_settings({}).hub.message_max_age_s == 86400
    settings = load_settings({"HUB_ACK_TIMEOUT": "0.5", "HUB_MESSAGE_MAX_AGE": "1.5"})
    assert settings.hub.message_max_age_s == 1.5


# One unusable value per validated variable, each with the start of its message; the variables
# left out take any text (names, ids, secrets).
INVALID_VALUES: dict[str, list[tuple[str, str]]] = {
    "HUBSYNC_WAREHOUSE": [(".", "must be a file path, not a directory")],
    "HUBSYNC_INCREMENTAL_INTERVAL": [("0", "must be a positive integer")],
    "HUBSYNC_FULL_SYNC_CRON": [("61 * * * *", "must be a 5-field cron expression")],
    "HUBSYNC_KEEP_DAYS": [("ninety", "must be a positive integer")],
    "HUBSYNC_WAREHOUSE_MEMORY_MB": [
        ("200", "must be an integer of at least 256"),
        ("1GB", "must be an integer of at least 256"),
    ],
    "CO_API_URL": [
        ("http://campus.example.org:99999", "must be an http(s) URL with a host"),
        ("campus.example.org", "must be an http(s) URL with a host"),
    ],
    "CO_TIMEZONE": [("CET+1", "must be an IANA time zone")],
    "CO_PAGE_SIZE": [("-5", "must be a positive integer")],
    "CO_INCREMENTAL_THRESHOLD": [("lots", "must be a non-negative integer")],
    "STUDIP_API_URL": [("http://studip example.org/api.php", "must be an http(s) URL ending")],
    "STUDIP_SEMESTERS": [(",,", "must name at least one semester")],
    "STUDIP_CONCURRENCY": [("1e3", "must be an integer from 1 to 64")],
    "STUDIP_API_MODE": [("fast", "must be one of auto, jsonapi, rest")],
    "STUDIP_JSONAPI_URL": [
        ("https://studip.example.org/api.php", "must be an http(s) URL ending in /jsonapi.php/v1")
    ],
    "STUDIP_PAGE_SIZE": [("0", "must be a positive integer")],
    "STUDIP_RELIST_EVERY": [
        ("0", "must be an integer from 1 to 96"),
        ("hourly", "must be an integer from 1 to 96"),
    ],
    "STUDIP_DETAILS_REFRESH_DAYS": [
        ("0", "must be an integer from 1 to 3650"),
        ("3651", "must be an integer from 1 to 3650"),
    ],
    "LMS_API_URL": [("https:///no-host", "must be an http(s) URL with a host")],
    "LMS_ORG_PATH": [("Root/Sandbox", "must be an LMS org path starting with /Root")],
    "LMS_PAGE_SIZE": [("0", "must be a positive integer")],
    "HUB_API_URL": [("mailto:hub@example.org", "must be an http(s) URL with a host")],
    "HUB_BATCH_SIZE": [("-1", "must be a positive integer")],
    "HUB_MAX_DELETE_SHARE": [("10%", "must be a number from 0 to 1")],
    "HUB_ACK_TIMEOUT": [("-5", "must be a positive number of seconds")],
    "HUB_POLL_INTERVAL": [("nan", "must be a positive number of seconds")],
    "HUB_MESSAGE_MAX_AGE": [
        ("1d", "must be a positive number of seconds"),
        ("300", "must be longer than HUB_ACK_TIMEOUT (300 s)"),
    ],
    "HUBSYNC_MATCH_RULES": [("studid;email", "must list identity rules in priority order")],
    "HUBSYNC_AUTOMATION": [("true", "must be on or off")],
    "HUBSYNC_MAX_RESPONSE_MB": [("0", "must be a positive integer")],
    "HUBSYNC_ALLOW_HTTP": [("yes", "must be 0 or 1")],
    "CO_MAX_PAGES": [("unlimited", "must be a positive integer")],
    "STUDIP_MAX_PAGES": [("0", "must be a positive integer")],
    "LMS_MAX_PAGES": [("-1", "must be a positive integer")],
}
FREE_TEXT = {
    "CO_CLIENT_ID",
    "CO_CLIENT_SECRET",
    "STUDIP_USERNAME",
    "STUDIP_PASSWORD",
    *STUDIP_OAUTH_VARIABLES,  # all four or none: test_studip_oauth1_needs_all_four_variables
    "STUDIP_SEED_USERS",  # may be empty: the crawl also starts from the API account
    "LMS_USERNAME",
    "LMS_PASSWORD",
    "HUB_API_KEY",
    "HUB_ORG_ID",
    "HUB_WHO",
    "STUDIP_STUDENT_ID_FIELD",  # any datafield name
    "LMS_STUDENT_ID_FIELD",  # any profile field name
}


def test_every_validated_variable_has_an_invalid_value_tested() -> None:
    assert set(INVALID_VALUES) == {v.name for v in VARIABLES} - FREE_TEXT


@pytest.mark.parametrize(
    ("name", "value", "requirement"),
    [(name, value, message) for name, cases in INVALID_VALUES.items() for value, message in cases],
)
def test_each_invalid_value_is_refused_at_load_naming_the_variable(
    name: str, value: str, requirement: str
) -> None:
    error = config_error({name: value})
    assert len(error.errors) == 1
    assert str(error).startswith(f"{name} {requirement}")
    assert repr(value.strip()) in str(error)


def test_limits_reach_the_clients() -> None:
    """The page caps and the response limit are not only validated: the clients apply them."""
    from resources.campusonline import campusonline_resource
    from resources.http import MB
    from resources.lms import lms_resource
    from resources.studip import studip_resource

    defaults = load_settings({})
    assert (defaults.co.max_pages, defaults.studip.max_pages, defaults.lms.max_pages) == (
        10000,
        10000,
        10000,
    )
    assert defaults.co.max_response_mb == 256 and not defaults.allow_http
    settings = load_settings(
        {
            "CO_MAX_PAGES": "7",
            "STUDIP_MAX_PAGES": "8",
            "LMS_MAX_PAGES": "9",
            "HUBSYNC_MAX_RESPONSE_MB": "3",
        }
    )
    with campusonline_resource(settings.co, in_process=True).client() as co:
        assert (co.max_pages, co.http.max_response_bytes) == (7, 3 * MB)
    studip = studip_resource(settings.studip).client()
    assert (studip.max_pages, studip.http.max_response_bytes) == (8, 3 * MB)
    with lms_resource(settings.lms).client() as lms:
        assert (lms.max_pages, lms.http.max_response_bytes) == (9, 3 * MB)


def test_studip_api_mode_and_the_jsonapi_url_beside_the_classic_one() -> None:
    real = {**REAL, "STUDIP_API_URL": "https://uni.example/studip/api.php"}
    studip = load_settings(real).studip
    assert (studip.api_mode, studip.listing_page_size) == ("auto", 500)
    assert studip.jsonapi_url == "https://uni.example/studip/jsonapi.php/v1"
    env = {"STUDIP_API_MODE": "REST", "STUDIP_JSONAPI_URL": "https://x.example/jsonapi.php/v1"}
    studip = load_settings(env).studip
    assert (studip.api_mode, studip.jsonapi_url) == ("rest", "https://x.example/jsonapi.php/v1")
    with pytest.raises(Exception) as raised:
        load_settings({"STUDIP_API_MODE": "fast", "STUDIP_JSONAPI_URL": "https://x/api"})
    assert "STUDIP_API_MODE must be one of auto, jsonapi, rest" in str(raised.value)
    assert "STUDIP_JSONAPI_URL must be an http(s) URL ending in /jsonapi.php/v1" in str(
        raised.value
    )


def _resource_fields() -> dict[str, list[tuple[str, Any]]]:
    """Setting name -> (resource class, field) of every resource field naming a setting."""
    from resources.campusonline import CampusOnlineResource
    from resources.hub import HubResource
    from resources.lms import LmsResource
    from resources.studip import StudIPResource
    from resources.warehouse import WarehouseResource

    found: dict[str, list[tuple[str, Any]]] = {}
    for cls in (CampusOnlineResource, StudIPResource, LmsResource, HubResource, WarehouseResource):
        for info in cls.model_fields.values():
            named = re.search(r"\(([A-Z][A-Z0-9_]+)[,)]", info.description or "")
            if named and named.group(1) in VARIABLES_BY_NAME:
                found.setdefault(named.group(1), []).append((cls.__name__, info))
    return found


def test_resource_fields_take_their_default_and_bounds_from_the_one_declaration() -> None:
    defaults = load_settings({})
    fields = _resource_fields()
    expected = {
        "CO_PAGE_SIZE": 20000,
        "STUDIP_PAGE_SIZE": 500,
        "LMS_PAGE_SIZE": 10000,
        "HUB_BATCH_SIZE": 500,
        "HUBSYNC_MAX_RESPONSE_MB": 256,
        "CO_TIMEZONE": "Europe/Vienna",
        "STUDIP_SEMESTERS": ["current", "next"],
        "HUB_ACK_TIMEOUT": 300.0,
        "HUBSYNC_WAREHOUSE_MEMORY_MB": 512,
    }
    for name, value in expected.items():
        assert fields[name] and all(info.default == value for _, info in fields[name]), name
    for name, found in fields.items():
        variable = VARIABLES_BY_NAME[name]
        declared = {"Ge": variable.minimum, "Le": variable.maximum}
        for owner, info in found:
            if variable.secret or variable.default is None or info.is_required():
                continue
            bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in info.metadata}
            assert bounds == {k: v for k, v in declared.items() if v is not None}, (owner, name)
    assert defaults.co.page_size == 20000  # the settings read the same declaration


def test_every_setting_reaches_its_resource_by_the_one_hand_off() -> None:
    from resources.campusonline import campusonline_resource
    from resources.studip import studip_resource
    from resources.warehouse import WarehouseResource

    env = {
        "CO_PAGE_SIZE": "777", "CO_INCREMENTAL_THRESHOLD": "3", "CO_TIMEZONE": "Europe/Berlin",
        "STUDIP_PAGE_SIZE": "333", "STUDIP_CONCURRENCY": "3", "STUDIP_RELIST_EVERY": "4",
        "STUDIP_SEMESTERS": "all", "LMS_PAGE_SIZE": "555", "LMS_STUDENT_ID_FIELD": "Nr",
        "HUB_BATCH_SIZE": "44", "HUB_POLL_INTERVAL": "0.5", "HUBSYNC_WAREHOUSE_MEMORY_MB": "256",
    }  # fmt: skip
    settings = load_settings(env)
    co = campusonline_resource(settings.co)
    studip = studip_resource(settings.studip)
    lms = lms_resource(settings.lms)
    hub = hub_resource(settings.hub)
    warehouse = WarehouseResource.of(settings)
    assert (co.page_size, co.incremental_threshold, co.timezone) == (777, 3, "Europe/Berlin")
    assert (studip.listing_page_size, studip.concurrency, studip.relist_every) == (333, 3, 4)
    assert studip.semesters == ["all"]
    assert (lms.page_size, lms.student_id_field) == (555, "Nr")
    assert (hub.batch_size, hub.poll_interval_s, warehouse.memory_mb) == (44, 0.5, 256)
