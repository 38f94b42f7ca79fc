from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from assets.campusonline.sync import CODES, CoCursor, RowStamp, row_stamp
from resources.campusonline import APPLICATIONS, STUDENTS, STUDIES

LONDON = ZoneInfo("Europe/London")
T = datetime(2024, 6, 13, 10, 52, 43, tzinfo=UTC)  # 13.06.2024T11:52:43 London = 1718275963


def live(record_id: int, ts: datetime = T) -> RowStamp:
    return RowStamp(record_id, True, ts)


def view(record_id: int, ts: datetime = T) -> RowStamp:
    return RowStamp(record_id, False, ts)


def test_row_stamps_read_id_source_and_local_timestamp() -> None:
    row = {"SOURCE": "LiveSync", "TIMESTAMP": "13.06.2024T11:52:43", "STSTUDIUMNR": 7}
    assert row_stamp(STUDIES, row, LONDON) == RowStamp(7, True, T)
    assert int(T.timestamp()) == 1718275963
    view_row = {**row, "SOURCE": "DMSView", "BEWERBUNGNR": 3}
    assert row_stamp(APPLICATIONS, view_row, LONDON) == RowStamp(3, False, T)
    for bad in ({**row, "TIMESTAMP": "garbage"}, {**row, "STSTUDIUMNR": "7"}, "not a row"):
        assert row_stamp(STUDIES, bad, LONDON) is None
    assert row_stamp(STUDENTS, row, LONDON) is None  # no STPERSONNR


@pytest.mark.parametrize("code", CODES)
def test_a_live_row_fills_the_live_map_and_is_never_outdated(code: str) -> None:
    cursor = CoCursor()
    cursor.record(code, live(1))
    assert cursor.last_sync[code] is None
    assert cursor.live[code] == {1: T}
    assert not cursor.is_outdated(code, live(1, T - timedelta(hours=1)))


@pytest.mark.parametrize("code", CODES)
def test_a_view_row_as_old_as_the_live_row_is_outdated(code: str) -> None:
    cursor = CoCursor()
    cursor.record(code, live(1))
    assert cursor.is_outdated(code, view(1, T))  # equal timestamps: outdated (<=)
    assert cursor.is_outdated(code, view(1, T - timedelta(seconds=1)))
    assert not cursor.is_outdated(code, view(1, T + timedelta(seconds=1)))
    assert not cursor.is_outdated(code, view(2, T))  # another record
    cursor.record(code, view(1, T))
    assert cursor.last_sync[code] == T


def test_last_sync_is_the_first_view_row_seen_per_type() -> None:
    cursor = CoCursor()
    cursor.record("students", view(1, T))
    cursor.record("students", view(2, T + timedelta(minutes=15)))
    assert cursor.last_sync == {"students": T, "studies": None, "applications": None}


def test_finish_keeps_old_last_sync_and_prunes_caught_up_live_entries() -> None:
    old = CoCursor(last_sync={"students": T, "studies": T, "applications": None})
    new = CoCursor.carrying_live_maps(old)
    new.live["students"] = {1: T - timedelta(minutes=1), 2: T + timedelta(minutes=20)}
    new.record("students", view(9, T + timedelta(minutes=15)))
    new.finish(old)
    assert new.last_sync == {
        "students": T + timedelta(minutes=15),
        "studies": T,
        "applications": None,
    }
    assert new.live["students"] == {2: T + timedelta(minutes=20)}  # strictly newer survive


def test_new_cursor_carries_only_the_live_maps_and_empty_ones_finish() -> None:
    old = CoCursor(last_sync=dict.fromkeys(CODES, T), live={c: {1: T} for c in CODES})
    new = CoCursor.carrying_live_maps(old)
    assert new.last_sync == dict.fromkeys(CODES)
    assert new.live == old.live and new.live["students"] is not old.live["students"]
    empty = CoCursor()
    CoCursor.carrying_live_maps(empty).finish(empty)


def test_live_maps_survive_their_json_form() -> None:
    cursor = CoCursor()
    cursor.record("studies", live(253324))
    text = cursor.live_json("studies")
    assert CoCursor.live_from_json(text) == {253324: T}
    assert CoCursor.live_from_json("{}") == {} == CoCursor.live_from_json(None)
    with pytest.raises(ValueError):
        CoCursor.live_from_json("garbage")
