"""HUB delivery: diff the desired state against what the HUB acknowledged, send it, record it.

``hub_payload`` turns the difference between ``hub_desired`` and ``hub_state`` into events and
batches (stored as the exact JSON to post); blocking checks guard it; ``hub_delivery`` posts the
batches phase by phase, each phase acknowledged through ``getLog`` before the next starts (so a
section never arrives before its term); ``hub_acknowledgement`` applies whatever finished later.

Nothing is sent twice and nothing is lost:

* Objects of batches still in flight (posted, log not finished) are left out of every diff.
* A batch is marked ``posting`` before its POST and gets its fate after: a crash in between
  leaves ``posting``, which the next run treats as *unknown*.
* When a post's fate is unknown (it went out, no usable answer came back) its objects become
  *uncertain* in ``hub_state``: the next diff sends an entity again as an ``update`` (harmless if
  the HUB has it; on "not found" a follow-up batch of the same phase inserts it, before the
  links that name it), never as a second insert. Links have no update, so an uncertain link is
  inserted again and "already exists" reconciles it.
* "Already exists" on an insert and "not found" on an update or delete are reconciled, other
  errors leave ``hub_state`` unchanged so the next diff tries again.
* A batch the HUB refuses (400) does not hold back the rest: the phase's other batches go, then
  the refused one is split in halves and re-posted until the objects the HUB refuses are
  isolated (at most 2·ceil(log2 n) extra posts per refused batch). A refused object is logged
  (outcome ``refused``), stays out of ``hub_state`` and is sent again by the next sync; the sync
  fails once everything deliverable was delivered.
* A message the HUB does not know (getLog 404, e.g. a HUB restored from a backup) or still
  processes past HUB_MESSAGE_MAX_AGE is an unknown outcome, like a lost answer: its objects
  become uncertain and are sent again (outcome ``unknown`` in ``hub_log``).
* Entity deletes (users, sections, subjects, terms) only come from full syncs; link deletes also
  from incremental ones (they come from re-read course memberships).
"""

import time
from collections import Counter, defaultdict
from typing import Any

import dagster as dg
import duckdb

from assets.hub.acknowledgement import (
    ItemOutcomes,
    acknowledge,
    errors_by_type,
    in_flight_batches,
    pending_message_ids,
    settle_in_flight,
    stuck_messages,
    stuck_metadata,
)
from assets.hub.checks import (
    ALLOW_DELETES_TAG,
    PAYLOAD_CHECKS,
    payload_check_results,
)
from assets.hub.delivery import DeliverySummary, deliver
from assets.hub.payload import Envelope, build_payload
from assets.partitions import parse_sync_key, sync_runs_partitions
from assets.sync import sync_run
from resources.hub import HubClient, HubResource
from resources.hub.identity import HubIdentity, HubIdentityError, check_hub_identity
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource

# Delivery and acknowledgement list the messageIds left processing; hub_log_sensor polls them.
PENDING_MESSAGES_METADATA = "pending_message_ids"


HUB_DESIRED = dg.AssetKey("hub_desired")


def _errors_table(outcomes: ItemOutcomes) -> str:
    rows = ["| object | key | message |", "|---|---|---|"]
    rows += [f"| {t} | {k} | {m} |" for t, k, m in outcomes.first_errors]
    return "\n".join(rows)


@dg.asset(
    partitions_def=sync_runs_partitions,
    group_name="hub",
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[sync_run, HUB_DESIRED],
    check_specs=PAYLOAD_CHECKS,
)
def hub_payload(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """The events this sync sends the HUB: the diff of ``hub_desired`` against ``hub_state``,
    grouped into batches (one object type and action each, at most HUB_BATCH_SIZE objects and
    1 MB), stored as the exact JSON to post. Re-running replaces the unsent batches.

    First every message still in flight is asked once: finished ones are applied, and one the
    HUB no longer knows (getLog 404) or still processes past HUB_MESSAGE_MAX_AGE is settled as
    an unknown outcome, so its objects are in this diff (sent again as updates)."""
    started = time.monotonic()
    full = parse_sync_key(context.partition_key).mode == "full"
    client = hub.client()
    with warehouse.connection() as conn:
        settled = settle_in_flight(
            conn,
            client,
            context.partition_key,
            lost_after_s=hub.ack_timeout_s,
            max_age_s=hub.message_max_age_s,
        )
        summary = build_payload(
            conn,
            context.partition_key,
            full=full,
            batch_size=hub.batch_size,
            org_id=hub.org_id,
            who=hub.who,
        )
        checks = payload_check_results(
            conn,
            context.partition_key,
            hub,
            full=full,
            deletes_allowed=context.run.tags.get(ALLOW_DELETES_TAG) == "true",
        )
    notes = []
    if settled.messages_lost:
        notes.append(
            f"{settled.messages_lost} message(s) the HUB does not know (getLog 404): outcome "
            "unknown, objects sent again"
        )
    if settled.messages_given_up:
        notes.append(
            f"{settled.messages_given_up} message(s) still processing past HUB_MESSAGE_MAX_AGE "
            f"({hub.message_max_age_s:g} s) given up: outcome unknown, objects sent again"
        )
    for note in notes:
        context.log.warning(note)
    metadata: dict[str, Any] = {f"events_{name}": n for name, n in sorted(summary.changes.items())}
    metadata.update(
        events=sum(summary.changes.values()),
        batches=summary.batches,
        bytes=summary.bytes,
        superseded_batches=summary.superseded,
        recovered_batches=summary.recovered,
        items_acknowledged_late=settled.applied + settled.reconciled + settled.failed,
        messages_lost=settled.messages_lost,
        messages_given_up=settled.messages_given_up,
        diff_s=summary.diff_s,
        duration_s=_since(started),
    )
    metadata[HUB_NOTES_METADATA] = dg.MetadataValue.json(notes)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset(
    partitions_def=sync_runs_partitions,
    group_name="hub",
    kinds={"api", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[hub_payload],
)
def hub_delivery(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """Posts this sync's batches to the HUB phase by phase (terms, subjects, users, sections,
    links; deletes first, in reverse), waiting for each phase's getLog before the next, and
    applies the acknowledged items to ``hub_state``. A POST is repeated only when it provably
    did not arrive; batches still processing when the wait ends are picked up later."""
    started = time.monotonic()
    client = hub.client()
    with warehouse.connection() as conn:
        ensure_same_hub(conn, hub)
        summary = deliver(
            conn,
            client,
            context.partition_key,
            ack_timeout_s=hub.ack_timeout_s,
            poll_s=hub.poll_interval_s,
            envelope=Envelope(hub.org_id, hub.who, hub.batch_size),
        )
        pending = pending_message_ids(conn)
        stuck = stuck_messages(conn, hub.ack_timeout_s)
    if summary.stopped:
        context.log.warning("delivery stopped early: %s", summary.stopped)
    metadata = _delivery_metadata(summary, client, pending)
    metadata.update(stuck_metadata(stuck))
    notes = hub_notes(summary, stuck, hub)
    for note in notes:
        context.log.warning(note)
    metadata[HUB_NOTES_METADATA] = dg.MetadataValue.json(notes)
    return dg.MaterializeResult(metadata={**metadata, "duration_s": _since(started)})


def ensure_same_hub(conn: duckdb.DuckDBPyConnection, hub: HubResource) -> None:
    """Before any request to the HUB: refuse one other than the HUB ``hub_state`` came from
    (see resources/hub/identity.py; ``hubsync hub-reset`` switches)."""
    try:
        check_hub_identity(conn, HubIdentity.of(hub.api_url, hub.org_id))
    except HubIdentityError as exc:
        raise dg.Failure(str(exc)) from None


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _delivery_metadata(
    summary: DeliverySummary, client: HubClient, pending: list[str]
) -> dict[str, Any]:
    outcomes = summary.outcomes
    return {
        **{f"batches_{name}": n for name, n in sorted(summary.posted.items())},
        "batches_posted": sum(summary.posted.values()),
        "batches_unfinished": summary.unfinished,
        "items_applied": outcomes.applied,
        "items_reconciled": outcomes.reconciled,
        "items_failed": outcomes.failed,
        "errors_by_message": dg.MetadataValue.json(dict(outcomes.errors.most_common(20))),
        "items_failed_by_type": dg.MetadataValue.json(errors_by_type(outcomes.errors_by_type)),
        "objects_refused": sum(summary.refused.values()),
        "objects_refused_by_type": dg.MetadataValue.json(dict(sorted(summary.refused.items()))),
        "refused_objects": dg.MetadataValue.json(
            [{"object": t, "key": k, "answer": a} for t, k, a in summary.refusals]
        ),
        "batches_split_posts": summary.split_posts,
        "messages_lost": outcomes.messages_lost,
        "messages_given_up": outcomes.messages_given_up,
        "first_errors": dg.MetadataValue.md(_errors_table(outcomes)),
        "stopped": summary.stopped or "no",
        PENDING_MESSAGES_METADATA: dg.MetadataValue.json(pending),
        **client.http.stats.as_metadata(),
    }


# Lines the CLI summary prints under "HUB:" (metadata of hub_delivery).
HUB_NOTES_METADATA = "hub_notes"


def hub_notes(summary: DeliverySummary, stuck: list[tuple], hub: HubResource) -> list[str]:
    """What went wrong at the HUB, one line each, for the CLI summary and the run's log."""
    notes = []
    if summary.refused:
        by_answer: dict[tuple[str, str], list[str]] = defaultdict(list)
        for object_type, key, answer in summary.refusals:
            by_answer[(object_type, answer)].append(key)
        counts = ", ".join(f"{t} {n}" for t, n in sorted(summary.refused.items()))
        notes.append(f"refused by the HUB, not delivered, sent again next sync: {counts}")
        notes += [
            f"  {t} {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}: {answer}"
            for (t, answer), keys in by_answer.items()
        ]
    for object_type, messages in errors_by_type(summary.outcomes.errors_by_type).items():
        notes += [
            f"item errors (getLog level e), sent again next sync: {object_type} {n} × {message}"
            for message, n in messages.items()
        ]
    if stuck:
        objects: Counter[str] = Counter()
        for _, _, _, object_type, count, _ in stuck:
            objects[object_type] += count
        notes.append(
            f"{len(stuck)} message(s) still processing at the HUB after HUB_ACK_TIMEOUT "
            f"({hub.ack_timeout_s:g} s), oldest {float(stuck[0][5]) / 3600:.2f} h "
            f"({', '.join(f'{t} {n}' for t, n in sorted(objects.items()))}); given up as "
            f"unknown after HUB_MESSAGE_MAX_AGE ({hub.message_max_age_s:g} s)"
        )
    if summary.outcomes.messages_lost:
        notes.append(
            f"{summary.outcomes.messages_lost} message(s) the HUB does not know (getLog 404): "
            "outcome unknown, objects sent again"
        )
    return notes


@dg.asset(group_name="hub", kinds={"api", "duckdb"}, pool=WAREHOUSE_POOL, deps=[hub_delivery])
def hub_acknowledgement(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> dg.MaterializeResult:
    """Applies the getLog results of every batch still in flight (from any sync) to
    ``hub_state``: what a sync's delivery did not wait for, or what the log sensor found
    finished."""
    started = time.monotonic()
    client = hub.client()
    with warehouse.connection() as conn:
        ensure_same_hub(conn, hub)
        outcomes, unfinished = acknowledge(
            conn,
            client,
            in_flight_batches(conn),
            timeout_s=hub.ack_timeout_s,
            poll_s=hub.poll_interval_s,
        )
        pending = pending_message_ids(conn)
    summary = DeliverySummary(outcomes=outcomes, unfinished=unfinished)
    metadata = _delivery_metadata(summary, client, pending)
    return dg.MaterializeResult(metadata={**metadata, "duration_s": _since(started)})


HUB_ASSETS = [hub_payload, hub_delivery, hub_acknowledgement]
