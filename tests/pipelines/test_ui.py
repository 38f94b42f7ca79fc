"""What the Dagster UI shows: groups, descriptions, kinds, table schemas, automation."""

import dagster as dg
import pytest

from pipelines.definitions import defs

GROUPS = {"sync", "studip", "campusonline", "lms", "graph", "hub", "maintenance"}
SPECS = [spec for assets_def in defs.assets for spec in assets_def.specs]  # type: ignore[union-attr]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key.to_user_string())
def test_every_asset_is_grouped_described_and_typed(spec: dg.AssetSpec) -> None:
    assert spec.group_name in GROUPS
    assert spec.description and len(spec.description) > 20
    assert "duckdb" in spec.kinds
    schema = spec.metadata.get("dagster/column_schema")
    assert isinstance(schema, dg.TableSchema) and schema.columns


def test_groups_per_source_and_for_graph_and_hub() -> None:
    assert {spec.group_name for spec in SPECS} == GROUPS
    by_key = {spec.key.to_user_string(): spec for spec in SPECS}
    assert by_key["raw_co_students"].group_name == "campusonline"
    assert by_key["sync_retention"].group_name == "maintenance"  # not selected with "sync"
    assert by_key["hub_delivery"].kinds >= {"api", "duckdb"}
    assert by_key["hub_delivery"].metadata["dagster/table_name"] == "hub_batches"


def test_asset_checks_are_defined_inline_and_the_payload_guards_block() -> None:
    """The payload's guards and the persons check run inside their asset's step
    (``check_specs``), with no step of their own."""
    specs = {
        spec.name: spec
        for a in [*(defs.assets or []), *(defs.asset_checks or [])]
        for spec in getattr(a, "check_specs", ())  # type: ignore[union-attr]
    }
    assert {
        "persons_unmatched_and_conflicting",
        "hub_deletes_within_limit",
        "hub_desired_codes_unique",
        "hub_links_reference_known_objects",
        "hub_items_refused",
        "hub_messages_finish_in_time",
    } <= set(specs)
    assert all(
        specs[name].blocking
        for name in (
            "hub_deletes_within_limit",
            "hub_desired_codes_unique",
            "hub_links_reference_known_objects",
        )
    )
    steps = {node.name for node in defs.resolve_job_def("sync_job").graph.nodes}
    assert not any("hub_deletes_within_limit" in step for step in steps)
    # the delivery checks share a step that runs after hub_acknowledgement, whose wait is what
    # makes a message count as processing past HUB_ACK_TIMEOUT
    assert "hub_delivery_checks" in steps
    graph = defs.resolve_asset_graph()
    for name in ("hub_items_refused", "hub_messages_finish_in_time"):
        check = graph.get(dg.AssetCheckKey(dg.AssetKey("hub_delivery"), name))
        assert dg.AssetKey("hub_acknowledgement") in check.parent_entity_keys


def test_sensors_schedules_and_jobs_are_wired() -> None:
    assert {s.name for s in defs.sensors or []} == {
        "incremental_sync_sensor",
        "hub_log_sensor",
        "sync_failure_sensor",
        "sync_canceled_sensor",
    }
    assert {s.name for s in defs.schedules or []} == {
        "nightly_full_sync_schedule",
        "daily_prune_schedule",
    }
    for job in ("hub_acknowledgement_job", "prune_sync_runs_job", "record_sync_failure_job"):
        defs.resolve_job_def(job)
