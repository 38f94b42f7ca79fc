"""Which HUB the acknowledged state belongs to, and forgetting it (``hubsync hub-reset``).

``hub_state`` is what one particular HUB acknowledged. Pointed at another HUB (``HUB_API_URL``
or ``HUB_ORG_ID`` changed) the diff would still believe every object is there and send nothing,
and getLog would be asked for messageIds that HUB never saw. So the warehouse records the HUB
its state came from (table ``hub_identity``: the first delivery records it, ``hub-reset``
replaces it), and delivery and acknowledgement refuse to talk to any other HUB. The identity is
the URL without user info or query (never a secret) and the organization key.

A HUB restored from a backup keeps its URL and organization: after restoring one, run
``hubsync hub-reset`` as for a switch.
"""

from dataclasses import dataclass

import duckdb

from resources.http import safe_url
from resources.warehouse import transaction

# Batches of the forgotten HUB that were not settled: never posted or acknowledged now.
FORGOTTEN = "forgotten"
UNSETTLED = ("pending", "posting", "sent")


class HubIdentityError(RuntimeError):
    """The warehouse's acknowledged state belongs to another HUB than the configured one."""


@dataclass(frozen=True)
class HubIdentity:
    api_url: str  # HUB_API_URL without user info, query, fragment or trailing slash
    org_id: str  # HUB_ORG_ID

    @classmethod
    def of(cls, api_url: str, org_id: str) -> "HubIdentity":
        return cls(safe_url(api_url.strip()).rstrip("/"), org_id.strip())

    def __str__(self) -> str:
        return f"{self.api_url} (HUB_ORG_ID {self.org_id})"


def recorded_identity(conn: duckdb.DuckDBPyConnection) -> HubIdentity | None:
    row = conn.execute("SELECT api_url, org_id FROM hub_identity").fetchone()
    return HubIdentity(*row) if row else None


def record_identity(conn: duckdb.DuckDBPyConnection, identity: HubIdentity) -> None:
    conn.execute("DELETE FROM hub_identity")
    conn.execute(
        "INSERT INTO hub_identity VALUES (?, ?, now())", [identity.api_url, identity.org_id]
    )


def mismatch_message(recorded: HubIdentity, configured: HubIdentity) -> str:
    changed = [
        name
        for name, differs in (
            ("HUB_API_URL", recorded.api_url != configured.api_url),
            ("HUB_ORG_ID", recorded.org_id != configured.org_id),
        )
        if differs
    ]
    return (
        f"the warehouse's acknowledged HUB state belongs to the HUB {recorded}, but "
        f"{' and '.join(changed)} now point at {configured}; nothing was sent. If the HUB was "
        "switched (or restored from a backup) on purpose, run `hubsync hub-reset` to forget the "
        "acknowledged state: the next sync then sends everything to the new HUB. Otherwise set "
        f"{' and '.join(changed)} back."
    )


def check_hub_identity(conn: duckdb.DuckDBPyConnection, configured: HubIdentity) -> None:
    """Raise :class:`HubIdentityError` unless ``hub_state`` belongs to the configured HUB. The
    first check records it (a warehouse older than this check adopts the configured HUB)."""
    recorded = recorded_identity(conn)
    if recorded is None:
        with transaction(conn):
            record_identity(conn, configured)
        return
    if recorded != configured:
        raise HubIdentityError(mismatch_message(recorded, configured))


@dataclass(frozen=True)
class HubReset:
    previous: HubIdentity | None
    current: HubIdentity
    objects: int  # acknowledged objects forgotten
    batches: int  # unsettled batches (pending, posting, sent) marked forgotten


def unsettled_batches(conn: duckdb.DuckDBPyConnection) -> int:
    placeholders = ", ".join("?" for _ in UNSETTLED)
    row = conn.execute(
        f"SELECT count(*) FROM hub_batches WHERE status IN ({placeholders})", list(UNSETTLED)
    ).fetchone()
    return int(row[0]) if row else 0


def acknowledged_objects(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("SELECT count(*) FROM hub_state").fetchone()
    return int(row[0]) if row else 0


def reset_hub_state(conn: duckdb.DuckDBPyConnection, current: HubIdentity) -> HubReset:
    """Forget what any HUB acknowledged and tie the warehouse to ``current``, in one
    transaction: ``hub_state`` is emptied, batches not yet settled are marked ``forgotten`` (so
    no getLog is asked of the new HUB for the old HUB's messages and nothing half-sent is taken
    as uncertain), and the next diff sends every desired object as an insert. Events, batches
    and the log stay as history."""
    placeholders = ", ".join("?" for _ in UNSETTLED)
    with transaction(conn):
        previous = recorded_identity(conn)
        objects, batches = acknowledged_objects(conn), unsettled_batches(conn)
        conn.execute("DELETE FROM hub_state")
        conn.execute(
            f"UPDATE hub_batches SET status = ? WHERE status IN ({placeholders})",
            [FORGOTTEN, *UNSETTLED],
        )
        record_identity(conn, current)
    return HubReset(previous, current, objects, batches)
