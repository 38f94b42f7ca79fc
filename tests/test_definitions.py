import importlib
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

import assets
import cli
import pipelines
import resources
from assets.partitions import sync_runs_partitions
from assets.sync import mark_sync_failed
from pipelines.definitions import defs
from resources.settings import PROJECT_ROOT, ConfigError

SYNC_ASSETS = {dg.AssetKey("sync_run"), dg.AssetKey("sync_summary")}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


@pytest.mark.parametrize("package", [assets, cli, pipelines, resources])
def test_top_level_packages_are_ours(package: object) -> None:
    # `assets`, `resources`, ... are generic names: a stray installed package would shadow them.
    assert Path(package.__file__).resolve().parent.parent == PROJECT_ROOT  # type: ignore[attr-defined]


def test_one_sync_job_whatever_the_mode() -> None:
    job = defs.resolve_job_def("sync_job")

    assert job.partitions_def == sync_runs_partitions
    assert job.tags["hubsync/sync"] == "true"
    assert "hubsync/mode" not in job.tags  # the key decides, not the job
    assert mark_sync_failed in job.hook_defs
    assert SYNC_ASSETS <= set(job.asset_layer.executable_asset_keys)  # plus the sources
    # no other job of ours offers the sync_runs keys (its picker would list keys it must
    # refuse); __ASSET_JOB is the asset graph's, where the key decides as well
    partitioned = [
        j.name
        for j in defs.resolve_all_job_defs()
        if j.partitions_def == sync_runs_partitions and not j.name.startswith("__")
    ]
    assert partitioned == ["sync_job"]


def test_sync_assets_share_the_duckdb_pool() -> None:
    for key in SYNC_ASSETS:
        spec = defs.resolve_assets_def(key).get_asset_spec(key)
        assert spec.group_name == "sync"
        assert spec.description
        assert defs.resolve_assets_def(key).op.pool == "duckdb"


def test_invalid_configuration_fails_the_code_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_BATCH_SIZE", "lots")
    monkeypatch.delitem(sys.modules, "pipelines.definitions")  # restored after the test
    with pytest.raises(
        ConfigError, match=r"HUB_BATCH_SIZE must be a positive integer \(got 'lots'\)"
    ):
        importlib.import_module("pipelines.definitions")


def test_workspace_points_at_the_definitions() -> None:
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    assert workspace == {
        "load_from": [
            {
                "python_module": {
                    "module_name": "pipelines.definitions",
                    "working_directory": ".",
                    "location_name": "hubsync",
                }
            }
        ]
    }


def test_instance_config_limits_duckdb_and_sync_runs(tmp_path: Path) -> None:
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        limits = concurrency.run_queue_config.tag_concurrency_limits
        assert limits == [{"key": "hubsync/sync", "limit": 1}]
        assert not instance.telemetry_enabled
