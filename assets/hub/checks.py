"""The checks guarding ``hub_payload`` (blocking: deletes within limit, unique codes, links
to known objects) and ``hub_delivery`` (refused items, messages finishing in time).

``hub_payload``'s are inline checks (``check_specs``): they run on its own connection at the
end of its step. As steps of their own they cost an incremental sync about 70 ms each (a
DuckDB connection and Dagster's step events) for queries of a few ms. A blocking check that
fails fails the step, so nothing downstream runs. ``hub_delivery``'s share one step after
``hub_acknowledgement`` (``hub_delivery_checks``)."""

from collections import Counter
from collections.abc import Iterator

import dagster as dg
import duckdb

from assets.hub.acknowledgement import errors_by_type, stuck_messages, stuck_metadata
from resources.hub import OBJECT_TYPES, HubResource
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource

ALLOW_DELETES_TAG = "hubsync/allow-deletes"
# The assets the checks guard (keys: the assets are defined beside, in assets/hub/__init__.py).
HUB_PAYLOAD = dg.AssetKey("hub_payload")
HUB_DELIVERY = dg.AssetKey("hub_delivery")

DELETES_WITHIN_LIMIT = dg.AssetCheckSpec(
    "hub_deletes_within_limit",
    asset=HUB_PAYLOAD,
    blocking=True,
    description="Deletes and archivals (updates to status ``arquived``, e.g. every student "
    "exmatriculated) above HUB_MAX_DELETE_SHARE of an object type's acknowledged state block "
    f"delivery, unless the run carries the tag ``{ALLOW_DELETES_TAG}=true``.",
)
DESIRED_CODES_UNIQUE = dg.AssetCheckSpec(
    "hub_desired_codes_unique",
    asset=HUB_PAYLOAD,
    blocking=True,
    description="Two desired objects of one type with the same business key block delivery.",
)
LINKS_REFERENCE_KNOWN_OBJECTS = dg.AssetCheckSpec(
    "hub_links_reference_known_objects",
    asset=HUB_PAYLOAD,
    blocking=True,
    description="Every link and section references an object the HUB holds or this sync sends.",
)
PAYLOAD_CHECKS = [DELETES_WITHIN_LIMIT, DESIRED_CODES_UNIQUE, LINKS_REFERENCE_KNOWN_OBJECTS]


# What this sync's pending batches take away from the HUB, per object type: deletes, and updates
# that archive an object (status -> 'arquived'), which hides it as surely as a delete does.
REMOVALS_SQL = """
WITH pending AS (
    SELECT e.object_type, e.action, e.key, e.payload
    FROM hub_events e JOIN hub_batches b USING (sync_key, batch_no)
    WHERE e.sync_key = $sync_key AND b.status = 'pending'
),
removals AS (
    SELECT p.object_type,
           count(*) FILTER (WHERE p.action = 'delete') AS deletes,
           count(*) FILTER (WHERE p.action = 'update') AS archivals
    FROM pending p LEFT JOIN hub_state s USING (object_type, key)
    WHERE p.action = 'delete'
       OR (p.action = 'update' AND p.payload->>'$.status' = 'arquived'
           AND (s.payload->>'$.status') IS DISTINCT FROM 'arquived')
    GROUP BY 1
)
SELECT s.object_type, count(*) AS state,
       coalesce(any_value(r.deletes), 0) AS deletes,
       coalesce(any_value(r.archivals), 0) AS archivals
FROM hub_state s LEFT JOIN removals r USING (object_type)
GROUP BY 1 ORDER BY 1
"""


def removals_by_type(
    conn: duckdb.DuckDBPyConnection, sync_key: str
) -> list[tuple[str, int, int, int]]:
    """(object type, acknowledged objects, deletes, archivals) of this sync's pending batches."""
    return conn.execute(REMOVALS_SQL, {"sync_key": sync_key}).fetchall()


def payload_check_results(
    conn: duckdb.DuckDBPyConnection,
    sync_key: str,
    hub: HubResource,
    *,
    full: bool,
    deletes_allowed: bool,
) -> list[dg.AssetCheckResult]:
    """The results of ``PAYLOAD_CHECKS`` for the batches ``hub_payload`` just stored (an
    incremental sync checks codes and references of what it sends)."""
    return [
        deletes_within_limit(conn, sync_key, hub.max_delete_share, allowed=deletes_allowed),
        desired_codes_unique(conn, sync_key, full=full),
        links_reference_known_objects(conn, sync_key, full=full),
    ]


def deletes_within_limit(
    conn: duckdb.DuckDBPyConnection, sync_key: str, max_share: float, *, allowed: bool
) -> dg.AssetCheckResult:
    shares = removals_by_type(conn, sync_key)
    over = {t: d + a for t, n, d, a in shares if n and (d + a) / n > max_share}
    archivals = {t: a for t, _, _, a in shares if a}
    return dg.AssetCheckResult(
        check_name=DELETES_WITHIN_LIMIT.name,
        passed=not over or allowed,
        metadata={
            "deletes_over_limit": dg.MetadataValue.json(over),
            "archivals": dg.MetadataValue.json(archivals),
            "max_delete_share": max_share,
            "override": allowed,
        },
        description=(
            f"deletes and archivals above {max_share:.0%} of {', '.join(over)}; "
            f"launch the run with tag {ALLOW_DELETES_TAG}=true to allow them"
        )
        if over
        else None,
    )


# What this sync sends: the objects of its pending batches. An incremental sync checks only
# those (a few hundred at 100,000 students instead of a million desired objects): a duplicate
# key with no event is one whose copies both equal what the HUB holds, so nothing is sent for
# it, and every full sync checks everything.
SENT_EVENTS = """
    SELECT e.object_type, e.key, e.payload
    FROM hub_events e JOIN hub_batches b USING (sync_key, batch_no)
    WHERE e.sync_key = $sync_key AND b.status = 'pending' AND e.action <> 'delete'"""
SENT_THIS_SYNC = f"SEMI JOIN ({SENT_EVENTS}) e USING (object_type, key)"


def desired_codes_unique(
    conn: duckdb.DuckDBPyConnection, sync_key: str, *, full: bool
) -> dg.AssetCheckResult:
    scope = "" if full else SENT_THIS_SYNC
    rows = conn.execute(
        f"SELECT object_type, key, count(*) FROM hub_desired d {scope} "
        "GROUP BY ALL HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 20",
        {"sync_key": sync_key} if scope else {},
    ).fetchall()
    return dg.AssetCheckResult(
        check_name=DESIRED_CODES_UNIQUE.name,
        passed=not rows,
        metadata={
            "duplicates": dg.MetadataValue.json(
                [{"object": t, "key": k, "count": n} for t, k, n in rows]
            )
        },
    )


def _references_sql(objects: str) -> str:
    """The references of ``objects`` (desired objects: ``object_type``, ``key``, ``payload``)
    to objects neither desired nor acknowledged: one SELECT per referencing field of
    ``OBJECT_TYPES`` (a field that may be absent refers to nothing when it is)."""
    refs = " UNION ALL ".join(
        f"SELECT object_type, key, '{target}' AS ref_type, payload->>'{path}' AS ref "
        f"FROM {objects} WHERE object_type = '{t.name}'"
        + (f" AND payload->>'{path}' IS NOT NULL" if t.optional(path) else "")
        for t in OBJECT_TYPES
        for path, target in t.references
    )
    # two anti-joins, not one against the UNION of both tables: that de-duplicated a million
    # keys on every sync (0.2-0.3 s at 100,000 students, 0.13 s this way)
    return f"""
WITH refs AS ({refs})
SELECT r.object_type, r.key, r.ref_type, r.ref FROM refs r
WHERE NOT EXISTS (SELECT 1 FROM hub_desired k WHERE k.object_type = r.ref_type AND k.key = r.ref)
  AND NOT EXISTS (SELECT 1 FROM hub_state k WHERE k.object_type = r.ref_type AND k.key = r.ref)
ORDER BY 1, 2 LIMIT 20
"""


REFERENCES_SQL = _references_sql("hub_desired")
# an incremental sync's inserts and updates carry the desired objects' payloads
SENT_REFERENCES_SQL = _references_sql(f"({SENT_EVENTS})")


def links_reference_known_objects(
    conn: duckdb.DuckDBPyConnection, sync_key: str, *, full: bool
) -> dg.AssetCheckResult:
    if full:
        rows = conn.execute(REFERENCES_SQL).fetchall()
    else:
        rows = conn.execute(SENT_REFERENCES_SQL, {"sync_key": sync_key}).fetchall()
    return dg.AssetCheckResult(
        check_name=LINKS_REFERENCE_KNOWN_OBJECTS.name,
        passed=not rows,
        metadata={
            "dangling": dg.MetadataValue.json(
                [{"object": t, "key": k, "missing": f"{r} {c}"} for t, k, r, c in rows]
            )
        },
    )


HUB_ACKNOWLEDGEMENT = dg.AssetKey("hub_acknowledgement")
# After hub_acknowledgement, whose wait is what lets a message count as processing longer than
# HUB_ACK_TIMEOUT; together in one step (a step costs about 70 ms of events and connection).
ITEMS_REFUSED = dg.AssetCheckSpec(
    "hub_items_refused",
    asset=HUB_DELIVERY,
    additional_deps=[HUB_ACKNOWLEDGEMENT],
    description="WARN when the HUB answered items of this sync's batches with an error (getLog "
    "level ``e``, not reconciled): they are not acknowledged and are sent again by the next sync.",
)
MESSAGES_FINISH_IN_TIME = dg.AssetCheckSpec(
    "hub_messages_finish_in_time",
    asset=HUB_DELIVERY,
    additional_deps=[HUB_ACKNOWLEDGEMENT],
    description="WARN while messages are still processing at the HUB longer than HUB_ACK_TIMEOUT "
    "after they were posted (their objects wait; past HUB_MESSAGE_MAX_AGE they are given up).",
)


@dg.multi_asset_check(
    specs=[ITEMS_REFUSED, MESSAGES_FINISH_IN_TIME], can_subset=True, pool=WAREHOUSE_POOL
)
def hub_delivery_checks(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, hub: HubResource
) -> Iterator[dg.AssetCheckResult]:
    """The checks of ``hub_delivery``, after ``hub_acknowledgement``: items the HUB refused,
    messages still processing past HUB_ACK_TIMEOUT."""
    sync_key = context.run.tags.get("dagster/partition", "")
    selected = {key.name for key in context.selected_asset_check_keys}
    with warehouse.connection() as conn:
        if ITEMS_REFUSED.name in selected:
            yield items_refused(conn, sync_key)
        if MESSAGES_FINISH_IN_TIME.name in selected:
            yield messages_finish_in_time(stuck_messages(conn, hub.ack_timeout_s), hub)


def items_refused(conn: duckdb.DuckDBPyConnection, sync_key: str) -> dg.AssetCheckResult:
    rows = conn.execute(
        "SELECT object_type, message, count(*) FROM hub_log WHERE sync_key = ? "
        "AND outcome = 'failed' GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT 20",
        [sync_key],
    ).fetchall()
    (total,) = conn.execute(
        "SELECT count(*) FROM hub_log WHERE sync_key = ? AND outcome = 'failed'", [sync_key]
    ).fetchall()[0]
    failed = errors_by_type(Counter({(t, m): n for t, m, n in rows}))
    return dg.AssetCheckResult(
        check_name=ITEMS_REFUSED.name,
        asset_key=HUB_DELIVERY,
        passed=not total,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"items_failed": total, "by_type": dg.MetadataValue.json(failed)},
        description=(
            f"the HUB answered {total} item(s) with an error: "
            + "; ".join(f"{t} {n} × {m}" for t, m, n in rows[:5])
        )
        if total
        else None,
    )


def messages_finish_in_time(stuck: list[tuple], hub: HubResource) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=MESSAGES_FINISH_IN_TIME.name,
        asset_key=HUB_DELIVERY,
        passed=not stuck,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **stuck_metadata(stuck),
            "messages": dg.MetadataValue.json(
                [
                    {"message_id": m, "object": t, "objects": n, "age_s": float(age)}
                    for _, _, m, t, n, age in stuck[:20]
                ]
            ),
        },  # fmt: skip
        description=(
            f"{len(stuck)} message(s) still processing after HUB_ACK_TIMEOUT "
            f"({hub.ack_timeout_s:g} s); given up after HUB_MESSAGE_MAX_AGE "
            f"({hub.message_max_age_s:g} s)"
        )
        if stuck
        else None,
    )


DELIVERY_CHECKS = [hub_delivery_checks]
