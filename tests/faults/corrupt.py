"""Response filters for the sandbox that plant malformed records in a source's answers.

``RecordCorrupter`` finds the records of an answer (the list or, for Stud.IP, the collection of
objects holding a source's id field), damages one record per kind of damage, once per record id
(so a re-read page stays the same), and remembers which ids it damaged how.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.http import Request, Response

KINDS = ("missing id", "wrong type", "broken date", "unknown enum", "oversized string", "bad utf-8")
UTF8_MARK = "@@BAD-UTF8@@"
OVERSIZED = 100_000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class SourceShape:
    id_field: str  # the record id; records are the objects that carry it
    date_field: str
    enum_field: str
    enum_bad: Any
    text_field: str


SHAPES = {
    "co": SourceShape("STPERSONNR", "BIRTHDATE", "GENDERKEY", "Q", "FAMILYNAME"),
    "lms": SourceShape(
        "RegistrationId", "RegistrationDate", "RegistrationStatus", 99, "CourseCode"
    ),
    "studip": SourceShape("user_id", "", "perms", "overlord", "username"),
}


@dataclass
class RecordCorrupter:
    source: str
    path_contains: str = ""
    damaged: dict[str, str] = field(default_factory=dict)  # record id -> kind

    @property
    def shape(self) -> SourceShape:
        return SHAPES[self.source]

    def __call__(self, request: Request, response: Response) -> Response:
        if response.status != 200 or self.path_contains not in request.path:
            return response
        try:
            payload = json.loads(response.body)
        except ValueError:
            return response
        changed = False
        for record in self._records(payload):
            record_id = str(record.get(self.shape.id_field))
            kind = self.damaged.get(record_id)
            if kind is None:
                pending = [k for k in KINDS if k not in self.damaged.values()]
                kind = next((k for k in pending if self._applicable(k, record)), None)
                if kind is None:
                    continue
                self.damaged[record_id] = kind
            self._damage(record, kind)
            changed = True
        if not changed:
            return response
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        body = body.replace(UTF8_MARK.encode(), b"\xff\xfe\xfd")
        return Response(response.status, body, response.content_type, response.headers)

    def _records(self, payload: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if self.shape.id_field in node:
                    found.append(node)
                    return
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(payload)
        return found

    def _applicable(self, kind: str, record: dict[str, Any]) -> bool:
        shape = self.shape
        if kind == "broken date":
            return bool(shape.date_field) and isinstance(record.get(shape.date_field), str | dict)
        if kind == "unknown enum":
            return shape.enum_field in record
        if kind in ("oversized string", "bad utf-8"):
            return isinstance(record.get(shape.text_field), str)
        return True

    def _damage(self, record: dict[str, Any], kind: str) -> None:
        shape = self.shape
        if kind == "missing id":
            del record[shape.id_field]
        elif kind == "wrong type":
            record[shape.id_field] = {"not": "an id"}
        elif kind == "broken date":
            broken = "2026-13-45T25:61:00"
            is_co_date = isinstance(record[shape.date_field], dict)  # CO: {"value": "..."}
            record[shape.date_field] = {"value": broken} if is_co_date else broken
        elif kind == "unknown enum":
            record[shape.enum_field] = shape.enum_bad
        elif kind == "oversized string":
            record[shape.text_field] = "x" * OVERSIZED
        elif kind == "bad utf-8":
            record[shape.text_field] = f"caf{UTF8_MARK}"


def not_json(request: Request, response: Response) -> Response:
    """Answer with an HTML error page (a proxy's), status 200."""
    return Response.text("<html><body>Service temporarily unavailable</body></html>", 200)
