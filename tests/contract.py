"""Contract tests' shared parts: the recorded answers of a real Stud.IP 5.5.8 and a comparison of
JSON *shapes* (``tests/fixtures/studip-5.5.8/``, see its README).

A recording is ``{"request": {api, method, path, params, auth}, "status", "content_type",
"body"}``; ``api`` is ``api`` for the classic ``/api.php`` and ``jsonapi`` for
``/jsonapi.php/v1``. :func:`shape_differences` compares two JSON values the way the sandbox must
follow the real system: same JSON types at every level (null where null, list where list, int
where int), the same keys in every object, and, where an object is a map keyed by ids or paths
(``/api.php/course/<id>``, ``"1"``, a 32-hex id), the same *kinds* of values rather than the same
keys. It is API-neutral, so the JSON:API recordings can use it as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A copy of the recordings kept with the tests, so that a clone anywhere runs them; the team's
# shared originals (beside the project) are compared with it when present (test_fixtures.py).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "studip-5.5.8"
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "studip-5.5.8"

# Keys that name an object rather than a field: the object is a map, its keys are data.
_DATA_KEY = re.compile(r"^(/.*|[0-9]+|[0-9a-f]{32}(_[0-9a-f]{32})?)$")


@dataclass(frozen=True)
class Recording:
    file: str
    api: str  # api | jsonapi
    method: str
    path: str
    params: dict[str, Any]
    auth: str | None
    status: int
    content_type: str
    body: Any

    @property
    def route_path(self) -> str:
        """The path below ``/api.php`` (classic API)."""
        return self.path.removeprefix("/api.php")


def recordings(api: str | None = None) -> list[Recording]:
    """The recorded answers in file order, optionally of one API (``api`` or ``jsonapi``)."""
    found = []
    files = sorted(FIXTURES.glob("[0-9][0-9][0-9]-*.json"))
    if not files:  # a contract test without its recordings would pass on nothing
        raise FileNotFoundError(f"no recordings in {FIXTURES}")
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        request = data["request"]
        if api is not None and request["api"] != api:
            continue
        found.append(
            Recording(
                path.name,
                request["api"],
                request["method"],
                request["path"],
                dict(request["params"]),
                request["auth"],
                data["status"],
                data["content_type"],
                data["body"],
            )
        )
    return found


def media_type(content_type: str) -> str:
    """``application/json;charset=utf-8`` -> ``application/json``: the content type family."""
    return content_type.split(";", 1)[0].strip().lower()


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def is_map(value: Any) -> bool:
    """An object keyed by data (ids, API paths, numbers), not by field names."""
    return isinstance(value, dict) and bool(value) and all(_DATA_KEY.match(k) for k in value)


def shape_differences(recorded: Any, actual: Any, where: str = "$") -> list[str]:
    """How ``actual`` differs in shape from ``recorded`` (empty: same shape).

    * types must be equal (``null`` vs ``string`` is a difference);
    * objects with field names must have the same keys, each compared in turn;
    * maps (see :func:`is_map`) and lists are compared by their items: every actual item must
      have the shape of some recorded item and every recorded item must be matched by some
      actual item (so a study group entry next to a course entry must come back as such). An
      empty recorded list says nothing about its items' shape: any list matches it; an empty
      actual list (or PHP's ``[]`` for an empty map) matches only an empty recorded one.
    """
    kind, actual_kind = json_type(recorded), json_type(actual)
    if is_map(recorded) or is_map(actual):
        if not (isinstance(recorded, dict) and isinstance(actual, dict)):
            return [f"{where}: {actual_kind} where the recording has {kind}"]
        return _item_differences(list(recorded.values()), list(actual.values()), f"{where}{{*}}")
    if kind != actual_kind:
        return [f"{where}: {actual_kind} where the recording has {kind}"]
    if kind == "object":
        missing, extra = sorted(set(recorded) - set(actual)), sorted(set(actual) - set(recorded))
        problems = [f"{where}: missing key {key!r}" for key in missing]
        problems += [f"{where}: key {key!r} the recording does not have" for key in extra]
        for key in sorted(set(recorded) & set(actual)):
            problems += shape_differences(recorded[key], actual[key], f"{where}.{key}")
        return problems
    if kind == "list":
        return _item_differences(recorded, actual, f"{where}[*]")
    return []


def _item_differences(recorded: list[Any], actual: list[Any], where: str) -> list[str]:
    if not recorded:
        return []  # nothing known about the items
    if not actual:
        return [f"{where}: empty where the recording has {len(recorded)} item(s)"]
    problems = []
    for index, item in enumerate(actual):
        candidates = [shape_differences(r, item, where) for r in recorded]
        if all(candidates):
            best = min(candidates, key=len)
            problems.append(f"{where} (actual item {index} matches no recorded item): {best}")
    for index, item in enumerate(recorded):
        if all(shape_differences(item, a, where) for a in actual):
            problems.append(f"{where}: no actual item has the shape of recorded item {index}")
    return problems
