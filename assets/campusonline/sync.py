"""The CAMPUSonline sync algorithm (``reference/campusonline.md`` §4), landing every page.

``CoSyncRunner.full`` and ``CoSyncRunner.incremental`` follow the reference connector call for
call, with its known defects fixed: every list call is paged, a student who vanished between a
delta and the per-student fetch is counted and skipped instead of crashing the sync. Each page
goes to its raw table through a :class:`PageSink` as it arrives; only ids and timestamps stay in
memory.

Request keys name the call that produced a page, and the current-state step relies on them:
full: ``applications``, ``studies:active``, ``studies:inactive``, ``students:active``,
``students:inactive``; incremental: ``students:delta``, ``applications:delta``,
``studies:delta`` and, per changed student, ``students:person:<nr>`` (placeholders only),
``studies:person:<nr>``, ``applications:person:<nr>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from resources.campusonline import (
    APPLICATIONS,
    LIVE_SOURCE_PREFIX,
    STUDENTS,
    STUDIES,
    CampusOnlineClient,
    CoPage,
    CoService,
    parse_co_timestamp,
)

EffectiveMode = Literal["full", "incremental", "fallback"]
CODES = ("students", "studies", "applications")
PERSON_KEY_MARK = ":person:"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowStamp:
    """What the cursor needs of a row: its id, whether it is live, and its UTC timestamp."""

    record_id: int
    live: bool
    ts: datetime


def row_stamp(service: CoService, row: Any, zone: ZoneInfo) -> RowStamp | None:
    """The row's stamp, or None for a malformed row (the current-state step quarantines it)."""
    if not isinstance(row, dict):
        return None
    record_id, source, stamp = (
        row.get(service.model.id_field),
        row.get("SOURCE"),
        row.get("TIMESTAMP"),
    )
    if type(record_id) is not int or not isinstance(source, str) or not isinstance(stamp, str):
        return None
    try:
        ts = parse_co_timestamp(stamp, zone)
    except ValueError:
        return None
    return RowStamp(record_id, source.startswith(LIVE_SOURCE_PREFIX), ts)


def person_of(row: Any) -> int | None:
    nr = row.get("STPERSONNR") if isinstance(row, dict) else None
    return nr if type(nr) is int else None


@dataclass
class CoCursor:
    """Per-type LastSyncDate of the view (first view row seen) and the LiveSync maps.

    A view row is *outdated* when a live row of the same record is at least as new: the view
    has not caught up with what the live read already showed, so the view row is skipped.
    """

    last_sync: dict[str, datetime | None] = field(default_factory=lambda: dict.fromkeys(CODES))
    live: dict[str, dict[int, datetime]] = field(default_factory=lambda: {c: {} for c in CODES})

    @classmethod
    def carrying_live_maps(cls, old: CoCursor) -> CoCursor:
        return cls(live={code: dict(old.live[code]) for code in CODES})

    def record(self, code: str, stamp: RowStamp) -> None:
        if stamp.live:
            self.live[code][stamp.record_id] = stamp.ts
        elif self.last_sync[code] is None:
            # All view rows of one refresh share its TIMESTAMP, so the first one stands for all.
            self.last_sync[code] = stamp.ts

    def is_outdated(self, code: str, stamp: RowStamp) -> bool:
        if stamp.live:
            return False
        live_ts = self.live[code].get(stamp.record_id)
        return live_ts is not None and stamp.ts <= live_ts

    def finish(self, old: CoCursor) -> None:
        """Keep the old LastSyncDate where no view row came; drop live entries the view caught."""
        for code in CODES:
            if self.last_sync[code] is None:
                self.last_sync[code] = old.last_sync[code]
            since = self.last_sync[code]
            if since is not None:
                self.live[code] = {i: ts for i, ts in self.live[code].items() if ts > since}

    def live_json(self, code: str) -> str:
        return json.dumps(
            {str(i): ts.isoformat() for i, ts in sorted(self.live[code].items())}, sort_keys=True
        )

    @staticmethod
    def live_from_json(text: str | None) -> dict[int, datetime]:
        items = json.loads(text) if text else {}
        return {int(i): datetime.fromisoformat(ts).astimezone(UTC) for i, ts in items.items()}


class PageSink(Protocol):
    """Where pages go as they arrive (the raw tables' page writers in the assets)."""

    def __call__(self, page: CoPage, request_key: str) -> None: ...


@dataclass
class SyncOutcome:
    mode: EffectiveMode
    cursor: CoCursor
    changed_students: int = 0  # students of the delta (incremental, fallback) or 0 (full)
    processed_students: int = 0  # students re-read one by one
    vanished_students: list[int] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # pages per request kind


class CoSyncRunner:
    """Runs one CO sync against ``client``, sending every page to ``sink``."""

    def __init__(
        self,
        client: CampusOnlineClient,
        sink: PageSink,
        *,
        threshold: int,
        info: Callable[[str], None] = log.info,
    ) -> None:
        self.client = client
        self.sink = sink
        self.threshold = threshold
        self.info = info
        self.pages_by_kind: dict[str, int] = {}

    def _rows(self, service: CoService, request_key: str, **query: Any) -> Iterator[Any]:
        kind = request_key.split(PERSON_KEY_MARK)[0] + (
            ":person" if PERSON_KEY_MARK in request_key else ""
        )
        for page in self.client.pages(service, **query):
            self.sink(page, request_key)
            self.pages_by_kind[kind] = self.pages_by_kind.get(kind, 0) + 1
            yield from page.rows

    def _stamps(
        self, service: CoService, request_key: str, **query: Any
    ) -> Iterator[tuple[RowStamp, Any]]:
        for row in self._rows(service, request_key, **query):
            stamp = row_stamp(service, row, self.client.zone)
            if stamp is not None:
                yield stamp, row

    def _drain(self, service: CoService, request_key: str, **query: Any) -> None:
        for _ in self._rows(service, request_key, **query):
            pass

    # -- full ------------------------------------------------------------------------------

    def full(self, mode: EffectiveMode = "full", changed: int = 0) -> SyncOutcome:
        """Everything, in the connector's order: applications, active studies, inactive studies,
        active students, inactive students. Starts a fresh cursor (no live maps carried over);
        inactive rows never touch the cursor."""
        cursor = CoCursor()
        for stamp, _ in self._stamps(APPLICATIONS, "applications"):
            cursor.record("applications", stamp)
        for stamp, _ in self._stamps(STUDIES, "studies:active"):
            cursor.record("studies", stamp)
        self._drain(STUDIES, "studies:inactive", only_inactive=True)
        for stamp, _ in self._stamps(STUDENTS, "students:active"):
            cursor.record("students", stamp)
        self._drain(STUDENTS, "students:inactive", only_inactive=True)
        return SyncOutcome(mode, cursor, changed_students=changed, calls=self.pages_by_kind)

    # -- incremental -----------------------------------------------------------------------

    def incremental(self, old: CoCursor) -> SyncOutcome:
        """The active pool's changes since ``old``; more than ``threshold`` changed students
        turn it into a full sync in the same run (``fallback``)."""
        new = CoCursor.carrying_live_maps(old)
        changed: dict[int, bool] = {}  # STPERSONNR -> the delta had the student's row
        for stamp, _row in self._stamps(
            STUDENTS, "students:delta", last_sync=old.last_sync["students"]
        ):
            new.record("students", stamp)
            if not new.is_outdated("students", stamp):
                changed[stamp.record_id] = True
        for service in (APPLICATIONS, STUDIES):
            for stamp, row in self._stamps(
                service, f"{service.code}:delta", last_sync=old.last_sync[service.code]
            ):
                new.record(service.code, stamp)
                person = person_of(row)
                if person is not None and not new.is_outdated(service.code, stamp):
                    changed.setdefault(person, False)
        if len(changed) > self.threshold:
            self.info(
                f"{len(changed)} changed students exceed the threshold of {self.threshold}: "
                "falling back to a full sync"
            )
            return self.full("fallback", changed=len(changed))
        outcome = SyncOutcome("incremental", new, changed_students=len(changed))
        for person, has_row in sorted(changed.items()):
            if not has_row and not self._refetch_student(new, person):
                outcome.vanished_students.append(person)
                continue
            self._refetch_related(new, person)
            outcome.processed_students += 1
        if outcome.vanished_students:
            self.info(
                f"{len(outcome.vanished_students)} changed student(s) no longer exist in "
                f"CAMPUSonline (STPERSONNR {', '.join(map(str, outcome.vanished_students[:20]))})"
            )
        new.finish(old)
        outcome.calls = self.pages_by_kind
        return outcome

    def _refetch_student(self, cursor: CoCursor, person: int) -> bool:
        found = False
        for stamp, _ in self._stamps(
            STUDENTS, f"students{PERSON_KEY_MARK}{person}", filter=("StPersonNr", person)
        ):
            cursor.record("students", stamp)
            found = True
        return found

    def _refetch_related(self, cursor: CoCursor, person: int) -> None:
        """Studies and applications of one student, both pools, read live."""
        for service in (STUDIES, APPLICATIONS):
            for stamp, _ in self._stamps(
                service, f"{service.code}{PERSON_KEY_MARK}{person}", filter=("StPersonNr", person)
            ):
                cursor.record(service.code, stamp)
