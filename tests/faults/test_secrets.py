"""Secrets and personal data: where they must never show up.

A full sync runs with recognisable secret values (the sandbox is told to expect them), then a
sync whose secrets are wrong fails in every source. Neither the secrets nor the people's names,
e-mails and birth dates may appear in anything an operator or a log shipper sees: captured log
and console output, the runs' Dagster events (messages and metadata) and run config, the error
messages; the secrets also not in the warehouse (which does hold personal data by design).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._serdes import serialize_value

from pipelines.definitions import build_definitions
from resources.settings import load_settings
from sandbox.expected import expected_hub_state
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance

SECRETS = {
    "CO_CLIENT_SECRET": "co-SECRET-7f3a9c",
    "STUDIP_PASSWORD": "studip-SECRET-2b8e4d",
    "LMS_PASSWORD": "lms-SECRET-91c0aa",
    "HUB_API_KEY": "hub-SECRET-5d6e1f",
}
SERVER_SECRET_OPTIONS = {
    "co": ("client_secret", "CO_CLIENT_SECRET"),
    "studip": ("password", "STUDIP_PASSWORD"),
    "lms": ("password", "LMS_PASSWORD"),
    "hub": ("api_key", "HUB_API_KEY"),
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    world = World(seed=53, students=30, today=date(2026, 11, 23))
    options = {
        server: {option: SECRETS[variable]}
        for server, (option, variable) in SERVER_SECRET_OPTIONS.items()
    }
    options["hub"]["processing_delay_ms"] = 0
    with running_sandbox(port_base=0, world=world, options=options) as running:
        yield running


def personal_data(world: World) -> set[str]:
    """Names, e-mail addresses and birth dates of everyone in the world (long enough to be
    unmistakable in other text)."""
    values: set[str] = set()
    for person in world.persons.values():
        values |= {person.given, person.family, f"{person.given} {person.family}"}
        values |= {person.birth.isoformat(), person.birth.strftime("%d.%m.%Y")}
    for student in world.co_students.values():
        values.add(student.email_tu or "")
    for user in world.studip_users.values():
        values.add(user.email)
    for learner in world.lms_learners.values():
        values |= {learner.email, learner.contact_email}
    return {value for value in values if len(value) >= 5}


def run_sync(
    sandbox: Sandbox, warehouse: Path, instance: dg.DagsterInstance, key: str
) -> dg.ExecuteInProcessResult:
    settings = load_settings({**sandbox.env, "HUBSYNC_WAREHOUSE": str(warehouse)})
    job = build_definitions(settings).resolve_job_def("sync_job")
    instance.add_dynamic_partitions("sync_runs", [key])
    return job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)


def everything_shown(instance: dg.DagsterInstance, results: list[dg.ExecuteInProcessResult]) -> str:
    """The runs' events (messages, metadata, errors) and run config, as one text."""
    parts = []
    for result in results:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        parts.append(json.dumps(run.run_config, default=str))
        parts.append(json.dumps(run.tags))
        parts.extend(serialize_value(entry) for entry in instance.all_logs(result.run_id))
    return "\n".join(parts)


def warehouse_text(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        ]
        return "\n".join(
            str(conn.execute(f'SELECT * FROM "{table}"').fetchall()) for table in tables
        )  # fmt: skip


def test_secrets_and_personal_data_stay_out_of_logs_metadata_and_errors(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    warehouse = tmp_path / "w.duckdb"
    with ephemeral_instance() as instance:
        good = run_sync(sandbox, warehouse, instance, "full-20261123T020000Z")
        assert good.success
        assert sandbox.hub.state_snapshot() == expected_hub_state(sandbox.world).state

        for variable, value in SECRETS.items():  # wrong secrets: every system refuses
            monkeypatch.setenv(variable, value[::-1])
        bad = run_sync(sandbox, warehouse, instance, "full-20261123T030000Z")
        assert not bad.success
        errors = [
            str(event.step_failure_data.error)
            for event in bad.all_events
            if event.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        assert errors
        shown = everything_shown(instance, [good, bad])

    output = capfd.readouterr()
    logs = "\n".join([caplog.text, output.out, output.err])
    stored = warehouse_text(warehouse)
    for value in SECRETS.values():
        for where, text in (("logs", logs), ("Dagster runs", shown), ("warehouse", stored)):
            assert value not in text, f"a secret in the {where}"
            assert value[::-1] not in text, f"a (wrong) secret in the {where}"
        assert all(value[::-1] not in error for error in errors)

    people = personal_data(sandbox.world)
    assert any(value in stored for value in people)  # the check below can find them
    leaked_logs = sorted(value for value in people if value in logs)
    leaked_runs = sorted(value for value in people if value in shown)
    assert leaked_logs == [], "personal data in the logs"
    assert leaked_runs == [], "personal data in Dagster events or metadata"
    assert os.environ["HUB_API_KEY"] == SECRETS["HUB_API_KEY"][::-1]  # the bad run really used it
