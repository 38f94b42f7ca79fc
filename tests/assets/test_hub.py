"""HUB delivery end to end against the sandbox HUB, with the world's expected state as desired.

The desired state is loaded straight from ``sandbox.expected`` here; building it from the
sources is the student graph's job. What is tested is the diff, the batches, the delivery with
its acknowledgement, and the promises: nothing lost, nothing sent twice.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.hub import HUB_ASSETS, payload
from assets.hub.checks import DELIVERY_CHECKS
from assets.hub.delivery import deliver
from assets.hub.diff import PHASES, Change, compute_diff, read_diff
from assets.hub.payload import MAX_BATCH_BYTES, envelope_text, iter_batches
from resources.hub import HubClient, HubResource
from resources.warehouse import WarehouseResource, inflate
from sandbox.expected import HubState, expected_hub_state
from sandbox.http import FaultConfig
from sandbox.server import running_sandbox
from sandbox.world import World
from tests.instances import ephemeral_instance


@pytest.fixture
def sandbox():
    world = World(seed=13, students=120, today=date(2026, 11, 23))
    with running_sandbox(
        port_base=0, world=world, options={"hub": {"processing_delay_ms": 5}}
    ) as running:
        yield running


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))


def hub_resource(sandbox, **overrides) -> HubResource:
    options = {
        "api_url": sandbox.urls["hub"],
        "api_key": "sandbox-hub-key",
        "org_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "who": "sis.hubsync",
        "batch_size": 40,
        "ack_timeout_s": 20.0,
        "poll_interval_s": 0.02,
        **overrides,
    }
    return HubResource(**options)


def load_desired(warehouse: WarehouseResource, state: HubState) -> None:
    rows = [
        (kind, key, obj.get("sis_id"), json.dumps(obj))
        for kind, objects in state.items()
        for key, obj in objects.items()
    ]
    with warehouse.connection() as conn:
        conn.execute("DELETE FROM hub_desired")
        conn.executemany("INSERT INTO hub_desired VALUES (?, ?, ?, ?::JSON, NULL)", rows)


@pytest.fixture
def sync(sandbox, warehouse: WarehouseResource):
    """Run the HUB assets for a sync key (one Dagster instance per test)."""
    with ephemeral_instance() as instance:

        def run(
            key: str,
            *,
            tags: dict | None = None,
            hub: HubResource | None = None,
            raise_on_error: bool = True,
        ) -> dg.ExecuteInProcessResult:
            instance.add_dynamic_partitions("sync_runs", [key])
            return dg.materialize(
                [*HUB_ASSETS, *DELIVERY_CHECKS],
                partition_key=key,
                instance=instance,
                tags=tags,
                resources={"warehouse": warehouse, "hub": hub or hub_resource(sandbox)},
                raise_on_error=raise_on_error,
            )

        yield run


def batches(warehouse: WarehouseResource, key: str) -> list[tuple]:
    with warehouse.connection() as conn:
        return conn.execute(
            "SELECT batch_no, object_type, action, objects, status FROM "
            "hub_batches WHERE sync_key = ? ORDER BY batch_no",
            [key],
        ).fetchall()


def duplicate_entity_inserts(warehouse: WarehouseResource) -> int:
    """Inserts of entities the HUB already held: what nothing-doubled forbids."""
    with warehouse.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM hub_log l JOIN hub_events e ON "
            "e.sync_key = l.sync_key AND e.seq = l.seq WHERE e.action = 'insert' "
            "AND e.object_type IN ('term', 'subject', 'user', 'section') "
            "AND l.message LIKE '%já cadastrad%'"
        ).fetchone()
    return row[0]


def test_a_full_sync_from_empty_makes_the_hub_equal_the_world(sandbox, warehouse, sync) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    result = sync("full-20261123T100000Z")
    assert sandbox.hub.state_snapshot() == expected
    sent = batches(warehouse, "full-20261123T100000Z")
    assert {status for *_, status in sent} == {"acknowledged"}
    assert all(objects <= 40 for _, _, _, objects, _ in sent)
    kinds = [kind for _, kind, _, _, _ in sent]
    assert (
        kinds.index("term")
        < kinds.index("user")
        < kinds.index("section")
        < kinds.index("sectionstudent")
    ), "dependency order"
    metadata = result.asset_materializations_for_node("hub_delivery")[0].metadata
    assert metadata["items_applied"].value == sum(len(v) for v in expected.values())
    assert metadata["items_failed"].value == 0
    with warehouse.connection() as conn:
        state = conn.execute(
            "SELECT object_type, count(*) FROM hub_state WHERE certain GROUP BY ALL"
        ).fetchall()
    assert dict(state) == {k: len(v) for k, v in expected.items() if v}

    # an unchanged re-sync sends nothing
    messages = len(sandbox.hub.messages())
    sync("full-20261123T110000Z")
    assert batches(warehouse, "full-20261123T110000Z") == []
    assert len(sandbox.hub.messages()) == messages


def test_each_batch_keeps_the_exact_text_it_posted_compressed(
    sandbox, warehouse, sync, monkeypatch
) -> None:
    """``hub_batches.envelope_zlib`` is the text posted, zlib-compressed: DuckDB rewrites a row
    group's column whenever a row is added to it, and a first full sync's envelopes share one
    row group with every later sync's batches."""
    load_desired(warehouse, expected_hub_state(sandbox.world).state)
    real_post = HubClient.post_batch
    posted: list[str] = []

    def record(self, text):
        posted.append(text)
        return real_post(self, text)

    monkeypatch.setattr(HubClient, "post_batch", record)
    sync("full-20261123T100000Z")
    with warehouse.connection() as conn:
        rows = conn.execute(
            "SELECT envelope, envelope_zlib, bytes FROM hub_batches ORDER BY batch_no"
        ).fetchall()
    assert len(rows) == len(posted) > 5
    assert [inflate(compressed) for _, compressed, _ in rows] == posted
    assert all(text is None for text, _, _ in rows)
    assert sum(len(compressed) for _, compressed, _ in rows) < sum(n for *_, n in rows) / 4


def test_a_batch_stored_before_envelopes_were_compressed_is_still_sent(sandbox, warehouse) -> None:
    """A pending batch of an older hubsync keeps its JSON in ``envelope``: it is posted as it is."""
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    hub = hub_resource(sandbox)
    key = "full-20261123T100000Z"
    with warehouse.connection() as conn:
        payload.build_payload(
            conn, key, full=True, batch_size=hub.batch_size, org_id=hub.org_id, who=hub.who
        )
        stored = conn.execute("SELECT batch_no, envelope_zlib FROM hub_batches").fetchall()
        assert len(stored) > 5
        for batch_no, compressed in stored:  # as a hubsync before the migration stored them
            conn.execute(
                "UPDATE hub_batches SET envelope = ?::JSON, envelope_zlib = NULL "
                "WHERE batch_no = ?",
                [inflate(compressed), batch_no],
            )
        summary = deliver(conn, hub.client(), key, ack_timeout_s=20.0, poll_s=0.02)
    assert not summary.stopped and summary.posted["accepted"] == len(stored)
    assert sandbox.hub.state_snapshot() == expected


def test_changes_send_exactly_the_changed_objects(sandbox, warehouse, sync) -> None:
    before = expected_hub_state(sandbox.world).state
    load_desired(warehouse, before)
    sync("full-20261123T100000Z")
    sandbox.world.step(seed=4)
    after = expected_hub_state(sandbox.world).state
    load_desired(warehouse, after)
    sync("full-20261123T120000Z")
    assert sandbox.hub.state_snapshot() == after

    wanted: Counter[str] = Counter()
    for kind in after:
        old, new = before[kind], after[kind]
        wanted[f"{kind}_insert"] += len(new.keys() - old.keys())
        wanted[f"{kind}_delete"] += len(old.keys() - new.keys())
        wanted[f"{kind}_update"] += sum(1 for k in new.keys() & old.keys() if new[k] != old[k])
    with warehouse.connection() as conn:
        sent = conn.execute(
            "SELECT object_type || '_' || action, count(*) FROM hub_events "
            "WHERE sync_key = 'full-20261123T120000Z' GROUP BY ALL"
        ).fetchall()
    assert dict(sent) == {k: n for k, n in wanted.items() if n}
    assert wanted["user_update"] > 0 and wanted["sectionstudent_insert"] > 0


def test_incremental_syncs_delete_links_but_not_entities(sandbox, warehouse, sync) -> None:
    state = expected_hub_state(sandbox.world).state
    load_desired(warehouse, state)
    sync("full-20261123T100000Z")
    link_key = next(iter(state["sectionstudent"]))
    user_code = next(
        code
        for code in state["user"]
        if not any(
            code in key.split("|")
            for kind in ("sectionstudent", "sectionteacher")
            for key in state[kind]
        )
    )
    smaller = {kind: dict(objects) for kind, objects in state.items()}
    del smaller["sectionstudent"][link_key]
    del smaller["user"][user_code]
    load_desired(warehouse, smaller)
    sync("incr-20261123T103000Z")
    hub = sandbox.hub.state_snapshot()
    assert link_key not in hub["sectionstudent"]
    assert user_code in hub["user"], "an entity is only deleted after a full sync"
    sync("full-20261123T110000Z")
    assert sandbox.hub.state_snapshot() == smaller


def test_a_full_sync_after_deletions_sends_the_deletes(sandbox, warehouse, sync) -> None:
    load_desired(warehouse, expected_hub_state(sandbox.world).state)
    sync("full-20261123T100000Z")
    summary = sandbox.world.step(seed=8, include_deletes=True)
    assert summary.counts()["deleted_student"] >= 1
    after = expected_hub_state(sandbox.world).state
    load_desired(warehouse, after)
    sync("full-20261124T020000Z")
    assert sandbox.hub.state_snapshot() == after
    with warehouse.connection() as conn:
        deletes = conn.execute(
            "SELECT count(*) FROM hub_events WHERE sync_key = "
            "'full-20261124T020000Z' AND action = 'delete' AND "
            "object_type = 'user'"
        ).fetchone()[0]
    assert deletes >= 1


def test_mass_deletes_are_blocked_until_allowed(sandbox, warehouse, sync) -> None:
    state = expected_hub_state(sandbox.world).state
    load_desired(warehouse, state)
    sync("full-20261123T100000Z")
    load_desired(warehouse, {**state, "sectionstudent": {}, "sectionteacher": {}})
    result = sync("full-20261123T110000Z", raise_on_error=False)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["hub_deletes_within_limit"] is False
    assert not result.asset_materializations_for_node("hub_delivery")
    assert sandbox.hub.state_snapshot() == state, "nothing was deleted"
    sync("full-20261123T120000Z", tags={"hubsync/allow-deletes": "true"})
    assert sandbox.hub.state_snapshot()["sectionstudent"] == {}


def add_dangling_link(conn: Any) -> None:
    """A link to a section and a student nobody desires or holds."""
    conn.execute("""INSERT INTO hub_desired VALUES ('sectionstudent', 'nowhere|nobody|2026W',
                 'x', '{"sis_id": "x", "section": {"code": "nowhere"},
                 "student": {"code": "nobody"}, "term_code": "2026W"}', NULL)""")


def assert_blocked_by_duplicate_and_dangling_link(result: dg.ExecuteInProcessResult) -> None:
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["hub_desired_codes_unique"].passed is False
    assert checks["hub_links_reference_known_objects"].passed is False
    assert "nowhere" in json.dumps(
        checks["hub_links_reference_known_objects"].metadata["dangling"].value
    )


def test_guards_block_duplicate_codes_and_dangling_links(sandbox, warehouse, sync) -> None:
    state = expected_hub_state(sandbox.world).state
    load_desired(warehouse, state)
    with warehouse.connection() as conn:
        conn.execute(
            "INSERT INTO hub_desired SELECT * FROM hub_desired WHERE object_type = 'user' LIMIT 1"
        )
        add_dangling_link(conn)
    result = sync("full-20261123T100000Z", raise_on_error=False)
    assert_blocked_by_duplicate_and_dangling_link(result)
    assert sandbox.hub.messages() == []


def test_an_incremental_sync_checks_codes_and_links_of_what_it_sends(
    sandbox, warehouse, sync
) -> None:
    """An incremental sync checks only the objects of its own batches (not the million desired
    objects at 100,000 students): a changed duplicate and a new dangling link block it; an
    identical copy of a user the HUB holds sends nothing and is left to the full syncs, which
    check everything."""
    state = expected_hub_state(sandbox.world).state
    load_desired(warehouse, state)
    assert sync("full-20261123T100000Z").success
    with warehouse.connection() as conn:
        conn.execute(
            "INSERT INTO hub_desired SELECT * FROM hub_desired WHERE object_type = 'user' "
            "ORDER BY key LIMIT 1"
        )
    quiet = sync("incr-20261123T103000Z", raise_on_error=False)
    checks = {c.check_name: c for c in quiet.get_asset_check_evaluations()}
    assert checks["hub_desired_codes_unique"].passed is True  # nothing sent for it
    full = sync("full-20261123T104500Z", raise_on_error=False)
    checks = {c.check_name: c for c in full.get_asset_check_evaluations()}
    assert checks["hub_desired_codes_unique"].passed is False  # a full sync checks everything
    with warehouse.connection() as conn:
        conn.execute(
            "DELETE FROM hub_desired WHERE rowid = (SELECT max(rowid) FROM hub_desired "
            "WHERE object_type = 'user')"
        )
    with warehouse.connection() as conn:
        conn.execute(
            "INSERT INTO hub_desired SELECT object_type, key, sis_id, "
            'json_merge_patch(payload, \'{"name": "Someone Else"}\'), origin FROM hub_desired '
            "WHERE object_type = 'user' ORDER BY key DESC LIMIT 1"
        )
        add_dangling_link(conn)
    result = sync("incr-20261123T110000Z", raise_on_error=False)
    assert_blocked_by_duplicate_and_dangling_link(result)
    assert not result.asset_materializations_for_node("hub_delivery")


def test_a_link_to_an_object_only_the_hub_holds_is_not_dangling(sandbox, warehouse, sync) -> None:
    """An incremental sync deletes no entity: a link may name a user the HUB acknowledged that
    this build no longer sends (``hub_state`` counts as known, not only ``hub_desired``)."""
    state = expected_hub_state(sandbox.world).state
    load_desired(warehouse, state)
    assert sync("full-20261123T100000Z").success
    with warehouse.connection() as conn:
        (code,) = conn.execute(
            "SELECT payload->>'$.student.code' FROM hub_desired "
            "WHERE object_type = 'sectionstudent' ORDER BY key LIMIT 1"
        ).fetchone()
        conn.execute("DELETE FROM hub_desired WHERE object_type = 'user' AND key = ?", [code])
    result = sync("incr-20261123T110000Z", raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["hub_links_reference_known_objects"].passed is True


class KilledAfterPosting(Exception):
    pass


def test_an_interrupted_delivery_resumes_without_duplicates_or_gaps(
    sandbox, warehouse, sync, monkeypatch
) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    real_post = HubClient.post_batch
    posts = {"n": 0}

    def post_then_die(self, text):  # the process dies right after its 4th POST went out
        result = real_post(self, text)
        posts["n"] += 1
        if posts["n"] == 4:
            raise KilledAfterPosting
        return result

    monkeypatch.setattr(HubClient, "post_batch", post_then_die)
    failed = sync("full-20261123T100000Z", raise_on_error=False)
    assert not failed.success
    assert "posting" in {status for *_, status in batches(warehouse, "full-20261123T100000Z")}
    monkeypatch.setattr(HubClient, "post_batch", real_post)
    # a dropped answer (the post may have arrived) and a 503 on the way, for good measure
    sandbox.hub.faults.configure(FaultConfig(script=["ok", "drop", "error"], path_filter="sync/v1"))
    sync("full-20261123T110000Z")
    sandbox.hub.faults.configure(FaultConfig())
    sync("full-20261123T120000Z")
    sync("full-20261123T130000Z")
    assert sandbox.hub.state_snapshot() == expected
    assert duplicate_entity_inserts(warehouse) == 0
    with warehouse.connection() as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM hub_batches GROUP BY ALL").fetchall()
        )
    assert statuses.get("unknown", 0) >= 2  # the killed one and the dropped one
    assert "posting" not in statuses and "pending" not in statuses


def test_items_the_hub_fails_after_accepting_are_sent_again(sandbox, warehouse, sync) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    sandbox.hub.configure(item_error_rate=0.3, item_error_seed=5)
    result = sync("full-20261123T100000Z")
    failed = result.asset_materializations_for_node("hub_delivery")[0].metadata
    assert failed["items_failed"].value > 0
    assert "Erro interno ao processar o item" in failed["errors_by_message"].value
    sandbox.hub.configure(item_error_rate=0.0)
    for hour in (11, 12, 13):
        sync(f"full-20261123T{hour}0000Z")
    assert sandbox.hub.state_snapshot() == expected
    assert duplicate_entity_inserts(warehouse) == 0


def test_a_slow_hub_leaves_batches_pending_for_later(sandbox, warehouse, sync) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    sandbox.hub.configure(processing_delay_ms=400)
    result = sync("full-20261123T100000Z", hub=hub_resource(sandbox, ack_timeout_s=0.05))
    metadata = result.asset_materializations_for_node("hub_delivery")[0].metadata
    assert metadata["batches_unfinished"].value >= 1
    assert metadata["stopped"].value != "no"
    sandbox.hub.configure(processing_delay_ms=5)
    # the next sync leaves the straggler out of its diff, acknowledges it, then sends the rest
    sync("full-20261123T110000Z", hub=hub_resource(sandbox, ack_timeout_s=5))
    assert sandbox.hub.state_snapshot() == expected
    sync("full-20261123T120000Z")
    assert batches(warehouse, "full-20261123T120000Z") == []
    assert duplicate_entity_inserts(warehouse) == 0


class DiedBuilding(Exception):
    pass


def test_a_payload_build_that_dies_half_way_sends_nothing_and_is_replaced(
    sandbox, warehouse, sync, monkeypatch
) -> None:
    """Chunks are committed as they are written (one transaction held every uncommitted row
    in memory), as ``building`` batches: a build that dies leaves those, never sent, and the
    next build deletes them."""
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    monkeypatch.setattr(payload, "STORE_CHUNK", 100)
    real_insert = payload._insert_rows
    inserts = {"n": 0}

    def insert_then_die(conn, table, *args):
        inserts["n"] += 1
        if inserts["n"] == 5:  # the third chunk's batches: two chunks are committed
            raise DiedBuilding
        real_insert(conn, table, *args)

    monkeypatch.setattr(payload, "_insert_rows", insert_then_die)
    failed = sync("full-20261123T100000Z", raise_on_error=False)
    assert not failed.success
    left = batches(warehouse, "full-20261123T100000Z")
    assert left and {status for *_, status in left} == {"building"}
    assert sandbox.hub.messages() == []

    monkeypatch.setattr(payload, "_insert_rows", real_insert)
    sync("full-20261123T110000Z")
    assert sandbox.hub.state_snapshot() == expected
    assert batches(warehouse, "full-20261123T100000Z") == []
    with warehouse.connection() as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM hub_batches GROUP BY ALL").fetchall()
        )
        orphans = conn.execute(
            "SELECT count(*) FROM hub_events e WHERE NOT EXISTS (SELECT 1 FROM hub_batches b "
            "WHERE b.sync_key = e.sync_key AND b.batch_no = e.batch_no)"
        ).fetchone()
    assert statuses == {"acknowledged": statuses["acknowledged"]}
    assert orphans == (0,)
    assert duplicate_entity_inserts(warehouse) == 0


def test_batches_keep_to_the_object_and_byte_limits() -> None:
    changes = [
        Change("user", "insert", f"u{i}", {"code": f"u{i}", "name": "x" * 300}) for i in range(25)
    ] + [Change("user", "update", "u99", {"code": "u99"})]
    batches = list(iter_batches(changes, batch_size=10, max_bytes=2_000))
    for batch in batches:
        assert len(envelope_text(batch, org_id="o" * 32, who="sis.x", doo="x" * 24)) <= 2_000
        assert len({(c.object_type, c.action) for c in batch.changes}) == 1
    assert [len(b.changes) for b in batches] == [4, 4, 4, 4, 4, 4, 1, 1]
    assert [b.batch_no for b in batches] == list(range(1, 9))
    big = list(iter_batches(changes, batch_size=10, max_bytes=MAX_BATCH_BYTES))
    assert [len(b.changes) for b in big] == [10, 10, 5, 1]
    assert PHASES[0] == ("delete", "sectionteacher") and PHASES[-1] == ("upsert", "sectionteacher")


def test_the_diff_streams_in_sending_order(warehouse) -> None:
    """Read back in chunks, the diff comes phase by phase (deletes first, in reverse dependency
    order), updates before inserts, then by key; and the batches built from it follow it."""
    desired = [("term", "2026W"), ("user", "u2"), ("user", "u5"), ("section", "s1")]
    desired += [("sectionstudent", f"s1|u{i}|2026W") for i in (1, 2)]
    held = [("user", "u5"), ("user", "u9"), ("subject", "old"), ("sectionstudent", "s1|u9|2026W")]
    with warehouse.connection() as conn:
        for kind, key in desired:
            conn.execute(
                "INSERT INTO hub_desired VALUES (?, ?, NULL, ?, NULL)",
                [kind, key, json.dumps({"code": key, "v": 2})],
            )
        for kind, key in held:
            conn.execute(
                "INSERT INTO hub_state VALUES (?, ?, NULL, ?, true, 'full-x', NULL, now())",
                [kind, key, json.dumps({"code": key, "v": 1})],
            )
        compute_diff(conn, full=True)
        changes = list(read_diff(conn, chunk=2))

    python_order = sorted(
        changes, key=lambda c: (c.phase, {"delete": 0, "update": 1, "insert": 2}[c.action], c.key)
    )
    assert [(c.object_type, c.action, c.key) for c in changes] == [
        (c.object_type, c.action, c.key) for c in python_order
    ]
    assert [(c.object_type, c.action, c.key) for c in changes] == [
        ("sectionstudent", "delete", "s1|u9|2026W"),
        ("user", "delete", "u9"),
        ("subject", "delete", "old"),
        ("term", "insert", "2026W"),
        ("user", "update", "u5"),  # updates before inserts
        ("user", "insert", "u2"),
        ("section", "insert", "s1"),
        ("sectionstudent", "insert", "s1|u1|2026W"),
        ("sectionstudent", "insert", "s1|u2|2026W"),
    ]
    batches = list(iter_batches(changes, batch_size=1))
    assert [b.changes[0] for b in batches] == changes


# -- a refused batch, an unknown messageId, a message that never finishes ---------------------


def _log_id(obj: dict) -> str:
    return str(obj.get("sis_id") or obj.get("code"))


def _split_posts(warehouse: WarehouseResource, key: str) -> int:
    with warehouse.connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM hub_batches WHERE sync_key = ? AND split_from IS NOT NULL",
            [key],
        ).fetchall()[0][0]


def _refused(warehouse: WarehouseResource, key: str) -> dict[str, str]:
    """key -> the HUB's answer, for every object logged as refused in this sync."""
    with warehouse.connection() as conn:
        rows = conn.execute(
            "SELECT e.key, l.message FROM hub_log l JOIN hub_events e "
            "ON e.sync_key = l.sync_key AND e.seq = l.seq "
            "WHERE l.sync_key = ? AND l.outcome = 'refused' AND l.message_id IS NULL",
            [key],
        ).fetchall()
    return dict(rows)


def test_a_refused_object_is_isolated_and_everything_else_is_delivered(
    sandbox, warehouse, sync
) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    bad_key, bad = sorted(expected["user"].items())[5]  # in the first user batch of 40
    sandbox.hub.configure(refuse_objects=[f"user:{_log_id(bad)}"])
    result = sync("full-20261123T100000Z")

    refused = _refused(warehouse, "full-20261123T100000Z")
    assert list(refused) == [bad_key]
    assert refused[bad_key].startswith("HTTP 400: ")
    assert f"Invalid Request: user {_log_id(bad)}" in refused[bad_key]
    assert "not isolated" not in refused[bad_key]
    # one bad object in 40: two posts per halving, 40 -> 20 -> 10 -> 5 -> 3 -> 2 -> 1
    assert _split_posts(warehouse, "full-20261123T100000Z") <= 2 * 6
    metadata = result.asset_materializations_for_node("hub_delivery")[0].metadata
    assert metadata["objects_refused"].value == 1
    assert metadata["objects_refused_by_type"].value == {"user": 1}
    assert any(bad_key in note for note in metadata["hub_notes"].value)
    state = sandbox.hub.state_snapshot()
    assert set(state["user"]) == set(expected["user"]) - {bad_key}
    for kind in ("term", "subject", "section"):
        assert state[kind] == expected[kind], kind
    with warehouse.connection() as conn:
        held = conn.execute(
            "SELECT count(*) FROM hub_state WHERE object_type = 'user' AND key = ?", [bad_key]
        ).fetchall()[0][0]
    assert held == 0  # not delivered, so the next sync sends it again

    sandbox.hub.configure(refuse_objects=[])
    sync("full-20261123T110000Z")
    assert sandbox.hub.state_snapshot() == expected
    assert duplicate_entity_inserts(warehouse) == 0


@pytest.mark.parametrize("bad_objects", [1, 3])
def test_isolating_refused_objects_costs_at_most_two_posts_per_halving(
    sandbox, warehouse, sync, bad_objects: int
) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    users = sorted(expected["user"].items())  # 122 users: one batch of 122 at batch size 500
    bad = [users[i] for i in (7, 61, 100)[:bad_objects]]
    sandbox.hub.configure(refuse_objects=[f"user:{_log_id(obj)}" for _, obj in bad])
    key = "full-20261123T100000Z"
    sync(key, hub=hub_resource(sandbox, batch_size=500))
    budget = 2 * math.ceil(math.log2(len(users)))  # 14
    assert _split_posts(warehouse, key) <= budget
    refused = _refused(warehouse, key)
    assert {k for k, _ in bad} <= set(refused)
    isolated = [k for k, answer in refused.items() if "not isolated" not in answer]
    assert isolated, "at least one refused object is cornered"
    if bad_objects == 1:
        assert list(refused) == [bad[0][0]]
    delivered = set(sandbox.hub.state_snapshot()["user"])
    assert delivered == set(expected["user"]) - set(refused)


def test_a_post_answered_with_a_null_message_id_is_an_unknown_outcome(
    sandbox, warehouse, sync
) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    sandbox.hub.configure(null_message_ids=1)
    sync("full-20261123T100000Z")
    with warehouse.connection() as conn:
        first = conn.execute(
            "SELECT status, message_id FROM hub_batches WHERE sync_key = ? AND batch_no = 1",
            ["full-20261123T100000Z"],
        ).fetchall()[0]
    assert first == ("unknown", None)  # not the text "None"
    sync("full-20261123T110000Z")
    assert sandbox.hub.state_snapshot() == expected
    assert duplicate_entity_inserts(warehouse) == 0


def test_messages_the_hub_no_longer_knows_are_sent_again(sandbox, warehouse, sync) -> None:
    """A HUB restored from a backup: getLog answers 404 for the messageIds it gave; today's
    delivery failed on that for every later sync."""
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    sandbox.hub.configure(processing_delay_ms=60_000)
    sync("full-20261123T100000Z", hub=hub_resource(sandbox, ack_timeout_s=0.05))
    assert sandbox.hub.forget_messages() >= 1  # lost before the HUB processed them
    sandbox.hub.configure(processing_delay_ms=5)
    time.sleep(0.1)  # older than HUB_ACK_TIMEOUT: not a message the HUB has yet to register
    result = sync("full-20261123T110000Z", hub=hub_resource(sandbox, ack_timeout_s=0.05))
    payload = result.asset_materializations_for_node("hub_payload")[0].metadata
    assert payload["messages_lost"].value >= 1
    with warehouse.connection() as conn:
        lost = conn.execute(
            "SELECT count(*) FROM hub_log WHERE outcome = 'unknown' AND message LIKE "
            "'getLog does not know messageId%'"
        ).fetchall()[0][0]
    assert lost >= 1
    assert sandbox.hub.wait_idle(10)
    assert sandbox.hub.state_snapshot() == expected  # sent again in the same sync
    assert duplicate_entity_inserts(warehouse) == 0


def test_a_message_stuck_processing_warns_then_is_given_up_and_sent_again(
    sandbox, warehouse, sync
) -> None:
    expected = expected_hub_state(sandbox.world).state
    load_desired(warehouse, expected)
    sandbox.hub.configure(stall_messages=1)  # the first message stays at status 1 for ever
    patient = hub_resource(sandbox, ack_timeout_s=0.05, message_max_age_s=60)
    first = sync("full-20261123T100000Z", hub=patient)
    check = first.get_asset_check_evaluations()
    stuck = next(c for c in check if c.check_name == "hub_messages_finish_in_time")
    assert not stuck.passed and stuck.severity is dg.AssetCheckSeverity.WARN
    assert sandbox.hub.state_snapshot() != expected

    # younger than HUB_MESSAGE_MAX_AGE: still waited for, nothing sent again
    again = sync("full-20261123T110000Z", hub=patient)
    assert (
        again.asset_materializations_for_node("hub_payload")[0].metadata["messages_given_up"].value
        == 0
    )
    delivery = again.asset_materializations_for_node("hub_delivery")[0].metadata
    assert delivery["messages_processing_past_ack_timeout"].value == 1
    assert any("HUB_ACK_TIMEOUT" in note for note in delivery["hub_notes"].value)

    time.sleep(0.3)
    impatient = hub_resource(sandbox, ack_timeout_s=0.05, message_max_age_s=0.2)
    gave_up = sync("full-20261123T120000Z", hub=impatient)
    payload = gave_up.asset_materializations_for_node("hub_payload")[0].metadata
    assert payload["messages_given_up"].value == 1
    with warehouse.connection() as conn:
        settled = conn.execute(
            "SELECT status, given_up_in FROM hub_batches WHERE given_up_in IS NOT NULL"
        ).fetchall()
    assert settled == [("unknown", "full-20261123T120000Z")]
    assert sandbox.hub.wait_idle(10)
    assert sandbox.hub.state_snapshot() == expected  # sent again in the same sync
    assert duplicate_entity_inserts(warehouse) == 0


def test_a_refusal_no_half_could_pass_stops_delivery(sandbox, warehouse, sync) -> None:
    """403 (a wrong API key) refuses every batch alike: no splitting, no further posts."""
    load_desired(warehouse, expected_hub_state(sandbox.world).state)
    key = "full-20261123T100000Z"
    result = sync(key, hub=hub_resource(sandbox, api_key="not-the-key"))
    metadata = result.asset_materializations_for_node("hub_delivery")[0].metadata
    assert metadata["batches_posted"].value == 1 and metadata["batches_split_posts"].value == 0
    assert "refused batch 1" in metadata["stopped"].value
    refused = _refused(warehouse, key)
    assert refused and all(a.startswith("HTTP 403: ") for a in refused.values())
    assert sandbox.hub.messages() == []


def test_waiting_for_a_log_lasts_the_whole_timeout(warehouse) -> None:
    """With polls 0.1 s apart, doubling, a message still processing after a 0.35 s wait was
    given up at 0.3 s: the next wait (0.4 s) would have passed the deadline. At a 60 s timeout
    that ended the wait up to 5 s early. Now the last wait is cut to the deadline and followed
    by one more poll."""
    from assets.hub.acknowledgement import acknowledge
    from resources.hub import SyncLog

    class StillProcessing:
        def __init__(self) -> None:
            self.polls: list[float] = []

        def get_log(self, message_id: str, *, only_if_finished: bool = False) -> SyncLog:
            self.polls.append(time.monotonic())
            return SyncLog(message_id, status=1, items=[])

    hub = StillProcessing()
    with warehouse.connection() as conn:
        started = time.monotonic()
        outcomes, unfinished = acknowledge(
            conn,
            hub,
            [("incr-1", 1, "m-1")],
            timeout_s=0.35,
            poll_s=0.1,  # type: ignore[arg-type]
        )
    assert unfinished == 1 and outcomes.applied == 0
    assert hub.polls[-1] - started >= 0.35  # polled at the deadline, not 0.05 s before it
    assert len(hub.polls) == 4  # at 0, 0.1, 0.3 and 0.35 s
