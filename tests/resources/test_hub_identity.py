"""The HUB identity record: what counts as another HUB, and what hub-reset forgets."""

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from resources.hub.identity import (
    HubIdentity,
    HubIdentityError,
    check_hub_identity,
    recorded_identity,
    reset_hub_state,
)
from resources.warehouse import WarehouseResource

ORG = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
HUB = HubIdentity.of("https://apihub.example.org/prod", ORG)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with WarehouseResource(path=str(tmp_path / "w.duckdb")).connection() as conn:
        yield conn


def test_the_identity_is_the_url_without_secrets_and_the_organization() -> None:
    same = HubIdentity.of(" https://user:pw@APIHUB.example.org/prod/?key=secret#x ", f" {ORG} ")
    assert same == HUB
    assert str(same) == f"https://apihub.example.org/prod (HUB_ORG_ID {ORG})"
    assert HubIdentity.of("https://apihub.example.org/sandbox", ORG) != HUB  # environment
    assert HubIdentity.of("https://apihub.example.org/prod", "1" * 32) != HUB


def test_the_first_check_records_the_hub_and_later_ones_refuse_another(conn) -> None:
    assert recorded_identity(conn) is None
    check_hub_identity(conn, HUB)
    assert recorded_identity(conn) == HUB
    check_hub_identity(conn, HubIdentity.of("https://apihub.example.org/prod/", ORG))

    with pytest.raises(HubIdentityError) as org_changed:
        check_hub_identity(conn, HubIdentity.of("https://apihub.example.org/prod", "1" * 32))
    message = str(org_changed.value)
    assert "HUB_ORG_ID now point at" in message and "HUB_API_URL" not in message.split(";")[0]
    assert ORG in message and "1" * 32 in message and "hubsync hub-reset" in message

    with pytest.raises(HubIdentityError, match="HUB_API_URL now point at"):
        check_hub_identity(conn, HubIdentity.of("https://other.example.org/prod", ORG))
    assert recorded_identity(conn) == HUB, "a refusal changes nothing"


def test_reset_forgets_the_state_and_unsettled_batches_and_records_the_new_hub(conn) -> None:
    check_hub_identity(conn, HUB)
    conn.execute(
        "INSERT INTO hub_state VALUES ('user', 'u1', NULL, '{}', true, 'full-1', 'm1', now()), "
        "('term', 't1', NULL, '{}', false, 'full-1', NULL, now())"
    )
    statuses = ["pending", "posting", "sent", "acknowledged", "unknown", "superseded"]
    for batch_no, status in enumerate(statuses, 1):
        conn.execute(
            "INSERT INTO hub_batches (sync_key, batch_no, phase, object_type, action, objects, "
            "envelope, bytes, status) VALUES ('full-1', ?, 0, 'user', 'insert', 1, '{}', 2, ?)",
            [batch_no, status],
        )
    other = HubIdentity.of("https://other.example.org/prod", ORG)

    reset = reset_hub_state(conn, other)

    assert (reset.previous, reset.current, reset.objects, reset.batches) == (HUB, other, 2, 3)
    assert conn.execute("SELECT count(*) FROM hub_state").fetchone() == (0,)
    after = conn.execute("SELECT status FROM hub_batches ORDER BY batch_no").fetchall()
    assert [s for (s,) in after] == ["forgotten"] * 3 + ["acknowledged", "unknown", "superseded"]
    assert recorded_identity(conn) == other
    check_hub_identity(conn, other)
