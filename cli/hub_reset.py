"""``hubsync hub-reset``: forget what the HUB acknowledged, e.g. after switching HUBs.

Delivery refuses a HUB other than the one the warehouse's acknowledged state came from
(resources/hub/identity.py). After a deliberate switch (HUB_API_URL or HUB_ORG_ID changed) or a
HUB restored from a backup, this forgets that state and ties the warehouse to the configured
HUB; the next sync sends every object to it.
"""

import argparse
import sys

from resources.hub.identity import (
    HubIdentity,
    acknowledged_objects,
    recorded_identity,
    reset_hub_state,
    unsettled_batches,
)
from resources.settings import load_settings
from resources.warehouse import WarehouseResource


def hub_reset(args: argparse.Namespace) -> int:
    settings = load_settings()
    configured = HubIdentity.of(settings.hub.api_url, settings.hub.org_id)
    warehouse = WarehouseResource.of(settings)
    with warehouse.connection() as conn:
        if not args.yes:
            recorded = recorded_identity(conn)
            print(
                f"hubsync: hub-reset would forget {acknowledged_objects(conn)} objects "
                f"acknowledged by the HUB {recorded or '(none recorded)'} and "
                f"{unsettled_batches(conn)} batches not settled with it, and tie "
                f"{settings.warehouse_path} to the HUB {configured}. Nothing changed: run "
                "`hubsync hub-reset --yes` to do it.",
                file=sys.stderr,
            )
            return 1
        reset = reset_hub_state(conn, configured)
    print(
        f"hubsync: forgot {reset.objects} objects acknowledged by the HUB "
        f"{reset.previous or '(none recorded)'} and {reset.batches} batches not settled with it; "
        f"the warehouse now belongs to the HUB {reset.current}. The next sync sends it every "
        "object (`hubsync sync --full`, or wait for the next scheduled one)."
    )
    return 0
