from datetime import UTC, datetime, timedelta, timezone

import pytest

from assets.partitions import SyncKey, new_sync_key, parse_sync_key, sync_runs_partitions

NOON = datetime(2026, 11, 23, 12, 0, 5, 987654, tzinfo=UTC)


def test_the_partitions_are_named_sync_runs() -> None:
    assert sync_runs_partitions.name == "sync_runs"


def test_keys_name_mode_and_utc_start() -> None:
    assert new_sync_key("full", NOON) == "full-20261123T120005Z"
    assert new_sync_key("incremental", NOON) == "incr-20261123T120005Z"
    vienna_winter = timezone(timedelta(hours=1))
    assert new_sync_key("full", datetime(2026, 11, 23, 3, 0, tzinfo=vienna_winter)) == (
        "full-20261123T020000Z"
    )


def test_keys_default_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    started = parse_sync_key(new_sync_key("incremental")).started_at
    assert before <= started <= datetime.now(UTC)


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_keys_round_trip(mode: str) -> None:
    key = new_sync_key(mode, NOON)  # type: ignore[arg-type]
    parsed = parse_sync_key(key)
    assert parsed == SyncKey(mode, NOON.replace(microsecond=0))  # type: ignore[arg-type]
    assert str(parsed) == key


def test_bad_inputs_to_new_sync_key() -> None:
    with pytest.raises(ValueError, match="'full' or 'incremental'"):
        new_sync_key("delta", NOON)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        new_sync_key("full", datetime(2026, 11, 23, 12, 0))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "full",
        "full-20261123",
        "inc-20261123T120000Z",
        "incremental-20261123T120000Z",
        "FULL-20261123T120000Z",
        "full-20261123T120000",
        "full-20261123T120000Z ",
        "full-20261123 120000Z",
        "full-20261123T120000Z-extra",
    ],
)
def test_malformed_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="is not a sync_runs key; expected full-YYYYMMDDTHHMMSSZ"):
        parse_sync_key(key)


@pytest.mark.parametrize("key", ["full-20261323T120000Z", "incr-20260230T000000Z"])
def test_impossible_times_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="is not a valid time"):
        parse_sync_key(key)
