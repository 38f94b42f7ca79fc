import json
import re
from collections.abc import Iterator
from datetime import date

import dagster as dg
import duckdb
import pytest

from cli.main import main
from pipelines.definitions import build_definitions
from resources import sources
from resources.settings import load_settings
from sandbox.server import Sandbox, running_sandbox
from sandbox.world import World
from tests.fake_source import FAKE


def test_every_source_system_is_declared_once_with_parts_that_load() -> None:
    codes = [s.code for s in sources.SOURCE_SYSTEMS]
    names = [s.name for s in sources.SOURCE_SYSTEMS]
    assert codes == ["co", "studip", "lms"]  # registry order = sandbox port order
    assert len(set(names)) == len(names)
    for system in sources.SOURCE_SYSTEMS:
        assert system.migrations() and system.asset_definitions()
        assert {spec.group_name for a in system.asset_definitions() for spec in a.specs} == {
            system.name
        }
        assert callable(sources.load(system.resource)) and sources.load(system.sandbox)
    with pytest.raises(KeyError, match="no source system 'moodle' .known: co, studip, lms"):
        sources.source_system("moodle")


@pytest.fixture
def fake_source_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """FAKE registered beside the real sources, and a sandbox (serving it too) that the
    settings point at."""
    monkeypatch.setattr(sources, "SOURCE_SYSTEMS", (*sources.SOURCE_SYSTEMS, FAKE))
    world = World(5, 30, today=date(2026, 11, 23))
    with running_sandbox(port_base=0, world=world) as sandbox:
        for name, value in sandbox.env.items():
            monkeypatch.setenv(name, value)
        yield sandbox


def test_a_registered_source_reaches_definitions_summary_migrations_and_cli(
    fake_source_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert set(fake_source_sandbox.servers) == {"co", "studip", "lms", "fake", "hub"}
    defs = build_definitions(load_settings())
    graph = defs.resolve_asset_graph()
    fake_keys = {dg.AssetKey("raw_fake_things"), dg.AssetKey("fake_things")}
    assert fake_keys <= set(graph.get_all_asset_keys())
    assert "fake" in defs.resources
    assert dg.AssetKey("fake_things") in graph.get(dg.AssetKey("sync_summary")).parent_keys
    assert fake_keys <= set(defs.resolve_job_def("sync_job").asset_layer.selected_asset_keys)

    assert main(["sync", "--source", "fake"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"raw_fake_things +success .* pages=1 records=2 requests=1", out), out
    assert re.search(r"sync_summary +success .* pages=1 records=2 quarantined=0", out), out

    with duckdb.connect(str(load_settings().warehouse_path), read_only=True) as conn:
        applied = [
            name for (name,) in conn.execute("SELECT name FROM schema_migrations").fetchall()
        ]
        things = conn.execute("SELECT thing_id, name FROM fake_things ORDER BY 1").fetchall()
        (summary,) = conn.execute("SELECT summary FROM sync_runs").fetchone() or (None,)
    assert "fake: raw pages and things" in applied
    assert things == [("t1", "first"), ("t2", "second")]
    assert json.loads(summary)["raw"]["raw_fake_things"] == {"pages": 1, "records": 2}
    assert main(["export", "fake_things"]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["thing_id"] for row in exported) == ["t1", "t2"]


def test_the_cli_offers_exactly_the_registered_sources(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["sync", "--source", "fake"])
    assert "invalid choice: 'fake' (choose from 'co', 'studip', 'lms')" in capsys.readouterr().err
    monkeypatch.setattr(sources, "SOURCE_SYSTEMS", (*sources.SOURCE_SYSTEMS, FAKE))
    with pytest.raises(SystemExit):
        main(["sync", "--source", "moodle"])
    assert "(choose from 'co', 'studip', 'lms', 'fake')" in capsys.readouterr().err
