"""The sandbox HUB (Hub Educacional) Sync API: an asynchronous validating store.

Simulates ``POST /<env>/sync/v1`` (an envelope of insert/update/delete events, answered at once
with a ``messageId``) and ``GET /<env>/instituicao/getLog/<messageId>`` (the per-item log of that
message, paged, with status 1 processing without errors, 2 processing with errors, 3 finished with
errors, 4 finished without errors). The HUB does not read the world: it validates and keeps what
it is sent, and :meth:`HubServer.state_snapshot` / ``GET /_sandbox/state`` show that state in the
format of :mod:`sandbox.expected` (per type, objects keyed by business key; links by their
``|``-joined key fields; every type present).

One worker thread processes messages first in, first out: per event in order, per object type in
the order of the keys of the event's ``obj``, per object in order it validates, applies the object
and appends one log item. A failed item leaves the state unchanged.

Admin routes (no API key, never subject to faults), besides the base class's:

* ``GET /_sandbox/state`` the state; ``GET /_sandbox/messages`` every message with its status,
  item, processed and error counts and received/started/finished times (world clock);
* ``POST /_sandbox/reset`` empty state and log (queued messages are dropped);
* ``GET|POST /_sandbox/hub`` read or change ``processing_delay_ms``, ``item_delay_ms``,
  ``item_error_rate``, ``item_error_seed`` (setting the seed reseeds), ``refuse_objects``,
  ``null_message_ids`` and ``stall_messages`` at run time. ``refuse_objects`` lists
  ``"<type>:<id>"`` (the id getLog names an item by: its ``sis_id``, else its ``code``): a POST
  carrying one of them is refused whole with 400 ``{"message": "Invalid Request: <type> <id>:
  ..."}``, as a HUB refuses an envelope it cannot take. ``null_message_ids`` = N: the next N
  accepted POSTs are queued and processed but answered ``200 {"messageId": null}``.
  ``stall_messages`` = N: the next N accepted messages are never processed (getLog says status
  1 for ever);
* ``POST /_sandbox/messages/forget`` drops every message and its log, keeping the state (a HUB
  restored from a backup: getLog answers 404 for the messageIds it gave before);
* ``POST /_sandbox/save`` write the state to ``state_path``.

Where the documents are silent, the sandbox chose:

* Routes and auth are API Gateway style: an unknown route (another env) is 404
  ``{"message": "Not Found"}``, a wrong method 405 ``{"message": "Method Not Allowed"}``, a
  missing or wrong ``x-api-key`` 403 ``{"message": "Forbidden"}`` (checked after routing), a body
  over ``max_body_bytes`` (API Gateway's 10 MB) 413 ``{"message": "Request Too Long"}``; injected
  faults answer ``{"message": "Internal server error"}`` / ``"Service Unavailable"`` /
  ``"Too Many Requests"``.
* Synchronous checks cover the envelope only; the 400 ``message`` names the problem in English.
  ``doo`` and ``ver`` must be non-empty strings; their format is not checked (the documents show
  both ``2018/11/05T...`` and ``2018-11-05T...``). An event's ``obj`` must be a non-empty object
  whose values are arrays (possibly empty); an item that is not an object is an asynchronous
  error (``Objeto inválido``).
* getLog reads ``limit``/``offset`` from the JSON body of the GET only, as the document's
  "Data Consultation" shows (defaults 25 and 0); a query string is ignored, so a client paging by
  query string reads the first 25 items again and again. ``limit`` above 1000 is a 400 (the
  document names no maximum). ``status`` counts a queued message as processing (1).
* Several field problems of one object are all reported, one ``mensagem`` entry each; otherwise
  the first failing check wins, in this order: fields, key exists/missing, references, subject
  name. Levels used: ``i`` (success) and ``e``; the sandbox never emits ``w``.
* Codes, names and ``term_code`` must be JSON strings; ``sis_id`` a string or an integer.
  ``None`` and blank strings count as "not informed"; optional fields are not validated then.
  Dates are strictly ``YYYY-MM-DD``; a term's ``end_date`` must not precede its ``start_date``.
  ``cpf`` is 11 digits with valid check digits (not all digits equal); ``email`` needs
  ``local@domain.tld``. ``status`` (any type) is one of active/arquived/suspended.
  Objects are kept verbatim, unknown fields included.
* Subject names are unique per org compared case-insensitively with whitespace collapsed.
  Section names are not unique (the documents say "per school", but courses repeat per term);
  a section's ``term_code`` is not compared with its links' ``term_code``.
* Every key field of a link is required (also ``term_code``, which the documents call optional)
  and ``sis_id`` is required on insert; a link delete needs the key fields only.
* A user ``delete`` removes the listed roles: a role the user does not hold is an error (nothing
  changes); removing a role that links use (``aluno`` by sectionstudent and studentparent as
  student, ``professor`` by sectionteacher, ``responsavel`` by studentparent as parent), or
  removing the user while any link names them, is "Perfil possui vínculos". An ``update`` replaces
  the roles without looking at links (so updates may run before the link deletes).
* ``item_error_rate`` draws one number per item from ``random.Random(item_error_seed)``, so a
  failure pattern repeats for the same seed and item sequence.
* ``state_path`` holds the state snapshot JSON (not the messages). ``stop()`` first processes the
  queued messages without delays, then saves.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

from sandbox.http import FaultConfig, HttpError, Request, Response, SandboxServer
from sandbox.world import World

log = logging.getLogger("sandbox.hub")

DEFAULT_ENV = "sandbox"
DEFAULT_API_KEY = "sandbox-hub-key"
DEFAULT_ORG_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
MAX_BODY_BYTES = 10 * 1024 * 1024
YIELD_EVERY = 50
"""The worker gives the GIL away every this many items, so requests stay fast under load."""

OBJECT_TYPES = (
    "term",
    "subject",
    "user",
    "section",
    "studentparent",
    "sectionstudent",
    "sectionteacher",
)
ENTITY_TYPES = ("term", "subject", "user", "section")
OPERATIONS = ("insert", "update", "delete")
ENVELOPE_FIELDS = ("doo", "ver", "who", "org_id")
ROLE_CODES = (
    "aluno",
    "professor",
    "responsavel",
    "diretor",
    "coordenador",
    "administrador",
    "colaborador",
)
LINKED_ROLES = ("aluno", "professor", "responsavel")
GENDERS = ("M", "F", "O")
STATUSES = ("active", "arquived", "suspended")

STATUS_PROCESSING = 1
STATUS_PROCESSING_WITH_ERRORS = 2
STATUS_FINISHED_WITH_ERRORS = 3
STATUS_FINISHED = 4

LEVEL_INFO = "i"
LEVEL_ERROR = "e"

# -- log messages (Portuguese, as the 2019 prototype) -------------------------------------------

MSG_REQUIRED = "Campo obrigatório não informado: {field}"
MSG_INVALID = "Valor inválido para {field}: {value}"
MSG_INVALID_OBJECT = "Objeto inválido"
MSG_ITEM_ERROR = "Erro interno ao processar o item"
MSG_NO_LINK_UPDATE = "Relacionamentos não possuem atualização"
MSG_SUBJECT_NAME_TAKEN = "Nome de disciplina já cadastrado no HUB: {name}"
MSG_ROLE_NOT_HELD = "Papel não atribuído ao perfil: {role}"
MSG_ROLES_REMOVED = "Papéis removidos do perfil com sucesso"
MSG_LINK_INSERTED = "Vínculo cadastrado com sucesso"
MSG_LINK_DELETED = "Vínculo excluído com sucesso"

MESSAGES: dict[str, dict[str, str]] = {
    "user": {
        "exists": "Perfil já cadastrado no HUB",
        "missing": "Perfil não cadastrado",
        "linked": "Perfil possui vínculos",
        "inserted": "Perfil incluído com sucesso",
        "updated": "Perfil atualizado com sucesso",
        "deleted": "Perfil excluído com sucesso",
    },
    "section": {
        "exists": "Turma já cadastrada no HUB",
        "missing": "Turma não cadastrada",
        "linked": "Turma possui vínculos",
        "inserted": "Turma incluída com sucesso",
        "updated": "Turma atualizada com sucesso",
        "deleted": "Turma excluída com sucesso",
    },
    "subject": {
        "exists": "Disciplina já cadastrada no HUB",
        "missing": "Disciplina não cadastrada",
        "linked": "Disciplina possui vínculos",
        "inserted": "Disciplina incluída com sucesso",
        "updated": "Disciplina atualizada com sucesso",
        "deleted": "Disciplina excluída com sucesso",
    },
    "term": {
        "exists": "Período já cadastrado no HUB",
        "missing": "Período não cadastrado",
        "linked": "Período possui vínculos",
        "inserted": "Período incluído com sucesso",
        "updated": "Período atualizado com sucesso",
        "deleted": "Período excluído com sucesso",
    },
    "sectionstudent": {
        "exists": "Relação Turma x Aluno já cadastrada",
        "missing": "Relação Turma x Aluno não cadastrada",
        "inserted": MSG_LINK_INSERTED,
        "deleted": MSG_LINK_DELETED,
    },
    "sectionteacher": {
        "exists": "Relação Turma x Professor já cadastrada",
        "missing": "Relação Turma x Professor não cadastrada",
        "inserted": MSG_LINK_INSERTED,
        "deleted": MSG_LINK_DELETED,
    },
    "studentparent": {
        "exists": "Relação Aluno x Responsável já cadastrada",
        "missing": "Relação Aluno x Responsável não cadastrada",
        "inserted": MSG_LINK_INSERTED,
        "deleted": MSG_LINK_DELETED,
    },
}

REFERENCE_MISSING = {
    "term": "Período não cadastrado",
    "subject": "Disciplina não cadastrada",
    "section": "Turma não cadastrada",
    "aluno": "Aluno não cadastrado",
    "professor": "Professor não cadastrado",
    "responsavel": "Responsável não cadastrado",
}

# A link's key fields in key order: (field, nested under {"code"}, what it references).
LINK_FIELDS: dict[str, tuple[tuple[str, bool, str], ...]] = {
    "sectionstudent": (
        ("section", True, "section"),
        ("student", True, "aluno"),
        ("term_code", False, "term"),
    ),
    "sectionteacher": (
        ("section", True, "section"),
        ("teacher", True, "professor"),
        ("subject", True, "subject"),
        ("term_code", False, "term"),
    ),
    "studentparent": (("student", True, "aluno"), ("parent", True, "responsavel")),
}
LINKS_WITH_SIS_ID = ("sectionstudent", "sectionteacher")

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CPF_RE = re.compile(r"\d{11}")

Outcome = tuple[str, list[str]]
"""A processed item's level and messages."""


# --------------------------------------------------------------------------------------------
# Field validation


def _blank(value: Any) -> bool:
    """``None``, a blank string or an empty array/object: "not informed"."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | dict) and not value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@functools.lru_cache(maxsize=65536)
def cpf_is_valid(cpf: str) -> bool:
    """11 digits, not all equal, with both check digits right."""
    if not _CPF_RE.fullmatch(cpf) or len(set(cpf)) == 1:
        return False
    digits = [int(c) for c in cpf]
    for length in (9, 10):
        total = sum(d * w for d, w in zip(digits[:length], range(length + 1, 1, -1), strict=True))
        if (total * 10 % 11) % 10 != digits[length]:
            return False
    return True


class _Fields:
    """Collects the field errors of one object."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.errors: list[str] = []

    def invalid(self, name: str, value: Any) -> None:
        self.errors.append(MSG_INVALID.format(field=name, value=_show(value)))

    def required(self, name: str) -> None:
        self.errors.append(MSG_REQUIRED.format(field=name))

    def string(self, name: str, *, required: bool = True) -> str | None:
        value = self.obj.get(name)
        if _blank(value):
            if required:
                self.required(name)
            return None
        if not isinstance(value, str):
            self.invalid(name, value)
            return None
        return value

    def reference(self, name: str) -> str | None:
        """A required ``{"code": "..."}`` field; returns the code."""
        value = self.obj.get(name)
        if _blank(value) or (isinstance(value, dict) and _blank(value.get("code"))):
            self.required(f"{name}.code")
            return None
        code = value.get("code") if isinstance(value, dict) else value
        if not isinstance(value, dict) or not isinstance(code, str):
            self.invalid(f"{name}.code", code)
            return None
        return code

    def sis_id(self, *, required: bool = False) -> None:
        value = self.obj.get("sis_id")
        if _blank(value):
            if required:
                self.required("sis_id")
        elif isinstance(value, bool) or not isinstance(value, str | int):
            self.invalid("sis_id", value)

    def day(self, name: str) -> date | None:
        value = self.string(name)
        if value is None:
            return None
        try:
            if _DATE_RE.fullmatch(value):
                return date.fromisoformat(value)
        except ValueError:
            pass
        self.invalid(name, value)
        return None

    def choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = self.obj.get(name)
        if not _blank(value) and value not in allowed:
            self.invalid(name, value)

    def matches(self, name: str, check: Callable[[str], bool], *, required: bool) -> None:
        value = self.string(name, required=required)
        if value is not None and not check(value):
            self.invalid(name, value)

    def roles(self) -> list[str]:
        """The role codes of a required, non-empty ``roles`` array."""
        value = self.obj.get("roles")
        if _blank(value):
            self.required("roles")
            return []
        if not isinstance(value, list):
            self.invalid("roles", value)
            return []
        codes: list[str] = []
        for role in value:
            code = role.get("code") if isinstance(role, dict) else None
            if not isinstance(role, dict):
                self.invalid("roles", role)
            elif _blank(code):
                self.required("roles.code")
            elif code not in ROLE_CODES:
                self.invalid("roles.code", code)
            else:
                codes.append(code)
        return codes


def _check_term(check: _Fields) -> None:
    check.string("code")
    check.string("name")
    start, end = check.day("start_date"), check.day("end_date")
    if start and end and end < start:
        check.invalid("end_date", check.obj["end_date"])
    check.choice("status", STATUSES)


def _check_subject(check: _Fields) -> None:
    check.string("code")
    check.string("name")
    check.choice("status", STATUSES)


def _check_section(check: _Fields) -> None:
    check.string("code")
    check.string("name")
    check.sis_id()
    check.string("term_code", required=False)
    check.choice("status", STATUSES)


def _check_user(check: _Fields) -> None:
    check.string("code")
    check.sis_id()
    check.string("name")
    check.day("dob")
    check.choice("gender", GENDERS)
    check.choice("status", STATUSES)
    roles = check.roles()
    staff = any(role != "aluno" for role in roles)
    check.matches("cpf", cpf_is_valid, required=staff)
    check.matches("email", lambda v: bool(_EMAIL_RE.fullmatch(v)), required=staff)


ENTITY_CHECKS: dict[str, Callable[[_Fields], None]] = {
    "term": _check_term,
    "subject": _check_subject,
    "section": _check_section,
    "user": _check_user,
}


def _subject_name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _role_codes(user: dict[str, Any]) -> set[str]:
    return {r.get("code") for r in user.get("roles") or () if isinstance(r, dict)}


def item_sis_id(obj: Any) -> str:
    """``baseItem.sis_id``: the object's ``sis_id``, else its ``code``, else ``"0"``."""
    if isinstance(obj, dict):
        for name in ("sis_id", "code"):
            value = obj.get(name)
            if not _blank(value) and isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return "0"


def log_item(obj_type: str, obj: Any, level: str, texts: list[str]) -> dict[str, Any]:
    return {
        "baseItem": {
            "obj": obj_type,
            "sis_id": item_sis_id(obj),
            "mensagem": [{"dsc_error": t, "level_Error": level} for t in texts],
        }
    }


# --------------------------------------------------------------------------------------------
# The state


class HubStore:
    """What the HUB keeps: objects per type by key, plus indexes. Not thread-safe by itself."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.refs: Counter[tuple[str, str]] = Counter()
        self.subject_names: dict[str, str] = {}
        self.clear()

    def clear(self) -> None:
        self.objects = {kind: {} for kind in OBJECT_TYPES}
        self.refs = Counter()
        self.subject_names = {}

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A deep copy (objects came from JSON, so a JSON round trip copies them exactly)."""
        return json.loads(self.dump())

    def dump(self) -> str:
        return json.dumps(self.objects, ensure_ascii=False, separators=(",", ":"))

    def counts(self) -> dict[str, int]:
        return {kind: len(objs) for kind, objs in self.objects.items()}

    def load(self, data: Any) -> None:
        """Replace the state with a snapshot (as written by :meth:`snapshot`)."""
        if not isinstance(data, dict) or set(data) - set(OBJECT_TYPES):
            raise ValueError(f"a HUB state is an object with the keys {', '.join(OBJECT_TYPES)}")
        self.clear()
        for kind in OBJECT_TYPES:
            table = data.get(kind) or {}
            if not isinstance(table, dict) or not all(isinstance(o, dict) for o in table.values()):
                raise ValueError(f"the HUB state's {kind!r} is not an object of objects")
            for key, obj in table.items():
                self.objects[kind][str(key)] = obj
                self._index(kind, obj)

    # -- indexes -----------------------------------------------------------------------------

    @staticmethod
    def references(kind: str, obj: dict[str, Any]) -> list[tuple[str, str]]:
        """What an object points at, as (referenced kind or role, code)."""
        if kind == "section":
            term = obj.get("term_code")
            return [("term", term)] if isinstance(term, str) and term.strip() else []
        refs = []
        for name, nested, target in LINK_FIELDS.get(kind, ()):
            value = obj.get(name)
            refs.append(
                (target, str(value.get("code") if nested and isinstance(value, dict) else value))
            )
        return refs

    def _index(self, kind: str, obj: dict[str, Any]) -> None:
        self.refs.update(self.references(kind, obj))
        if kind == "subject":
            self.subject_names[_subject_name_key(str(obj.get("name", "")))] = str(obj.get("code"))

    def _unindex(self, kind: str, obj: dict[str, Any]) -> None:
        self.refs.subtract(self.references(kind, obj))
        name = _subject_name_key(str(obj.get("name", "")))
        if kind == "subject" and self.subject_names.get(name) == str(obj.get("code")):
            del self.subject_names[name]

    def _put(self, kind: str, key: str, obj: dict[str, Any]) -> None:
        old = self.objects[kind].get(key)
        if old is not None:
            self._unindex(kind, old)
        self.objects[kind][key] = obj
        self._index(kind, obj)

    def _remove(self, kind: str, key: str) -> None:
        self._unindex(kind, self.objects[kind].pop(key))

    def _exists(self, target: str, code: str) -> bool:
        if target in ENTITY_TYPES:
            return code in self.objects[target]
        user = self.objects["user"].get(code)
        return user is not None and target in _role_codes(user)

    def _linked(self, kind: str, code: str) -> bool:
        targets = LINKED_ROLES if kind == "user" else (kind,)
        return any(self.refs[(target, code)] > 0 for target in targets)

    # -- operations --------------------------------------------------------------------------

    def apply(self, op: str, kind: str, obj: Any) -> Outcome:
        """Validate and apply one object; the state changes only on success."""
        if not isinstance(obj, dict):
            return LEVEL_ERROR, [MSG_INVALID_OBJECT]
        if kind in LINK_FIELDS:
            return self._apply_link(op, kind, obj)
        if op == "delete":
            return self._delete_user(obj) if kind == "user" else self._delete_entity(kind, obj)
        return self._upsert_entity(op, kind, obj)

    def _upsert_entity(self, op: str, kind: str, obj: dict[str, Any]) -> Outcome:
        check = _Fields(obj)
        ENTITY_CHECKS[kind](check)
        if check.errors:
            return LEVEL_ERROR, check.errors
        code, messages = obj["code"], MESSAGES[kind]
        exists = code in self.objects[kind]
        if op == "insert" and exists:
            return LEVEL_ERROR, [messages["exists"]]
        if op == "update" and not exists:
            return LEVEL_ERROR, [messages["missing"]]
        missing = [
            REFERENCE_MISSING[t] for t, c in self.references(kind, obj) if not self._exists(t, c)
        ]
        if missing:
            return LEVEL_ERROR, missing
        if kind == "subject":
            owner = self.subject_names.get(_subject_name_key(obj["name"]))
            if owner is not None and owner != code:
                return LEVEL_ERROR, [MSG_SUBJECT_NAME_TAKEN.format(name=obj["name"])]
        self._put(kind, code, obj)
        return LEVEL_INFO, [messages["inserted" if op == "insert" else "updated"]]

    def _delete_entity(self, kind: str, obj: dict[str, Any]) -> Outcome:
        check = _Fields(obj)
        code = check.string("code")
        if code is None:
            return LEVEL_ERROR, check.errors
        messages = MESSAGES[kind]
        if code not in self.objects[kind]:
            return LEVEL_ERROR, [messages["missing"]]
        if self._linked(kind, code):
            return LEVEL_ERROR, [messages["linked"]]
        self._remove(kind, code)
        return LEVEL_INFO, [messages["deleted"]]

    def _delete_user(self, obj: dict[str, Any]) -> Outcome:
        check = _Fields(obj)
        code, roles = check.string("code"), set(check.roles())
        if check.errors or code is None:
            return LEVEL_ERROR, check.errors
        messages = MESSAGES["user"]
        user = self.objects["user"].get(code)
        if user is None:
            return LEVEL_ERROR, [messages["missing"]]
        not_held = sorted(roles - _role_codes(user))
        if not_held:
            return LEVEL_ERROR, [MSG_ROLE_NOT_HELD.format(role=role) for role in not_held]
        remaining = [
            r
            for r in user.get("roles") or ()
            if not isinstance(r, dict) or r.get("code") not in roles
        ]
        blocked = LINKED_ROLES if not remaining else tuple(r for r in roles if r in LINKED_ROLES)
        if any(self.refs[(role, code)] > 0 for role in blocked):
            return LEVEL_ERROR, [messages["linked"]]
        if not remaining:
            self._remove("user", code)
            return LEVEL_INFO, [messages["deleted"]]
        self._put("user", code, {**user, "roles": remaining})
        return LEVEL_INFO, [MSG_ROLES_REMOVED]

    def _link_key(self, kind: str, check: _Fields) -> list[tuple[str, str]]:
        """The link's (referenced kind, code) pairs, validating its key fields."""
        pairs: list[tuple[str, str]] = []
        for name, nested, target in LINK_FIELDS[kind]:
            code = check.reference(name) if nested else check.string(name)
            if code is not None:
                pairs.append((target, code))
        return pairs

    def _apply_link(self, op: str, kind: str, obj: dict[str, Any]) -> Outcome:
        if op == "update":
            return LEVEL_ERROR, [MSG_NO_LINK_UPDATE]
        check = _Fields(obj)
        pairs = self._link_key(kind, check)
        if op == "insert" and kind in LINKS_WITH_SIS_ID:
            check.sis_id(required=True)
        if check.errors:
            return LEVEL_ERROR, check.errors
        key, messages = "|".join(code for _, code in pairs), MESSAGES[kind]
        exists = key in self.objects[kind]
        if op == "delete":
            if not exists:
                return LEVEL_ERROR, [messages["missing"]]
            self._remove(kind, key)
            return LEVEL_INFO, [messages["deleted"]]
        if exists:
            return LEVEL_ERROR, [messages["exists"]]
        missing = [REFERENCE_MISSING[t] for t, c in pairs if not self._exists(t, c)]
        if missing:
            return LEVEL_ERROR, missing
        self._put(kind, key, obj)
        return LEVEL_INFO, [messages["inserted"]]


# --------------------------------------------------------------------------------------------
# Envelope


def envelope_problem(payload: Any, org_id: str) -> str | None:
    """What is wrong with a sync body's envelope, or ``None``."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    for name in ENVELOPE_FIELDS:
        value = payload.get(name)
        if _blank(value):
            return f"missing field: {name}"
        if not isinstance(value, str):
            return f"{name} must be a string"
    if payload["org_id"] != org_id:
        return "org_id does not match the organization of the API key"
    events = payload.get("dat")
    if _blank(events):
        return "missing field: dat (a non-empty array of events)"
    if not isinstance(events, list):
        return "dat must be an array of events"
    for index, event in enumerate(events):
        problem = _event_problem(event, f"dat[{index}]")
        if problem:
            return problem
    return None


def _event_problem(event: Any, where: str) -> str | None:
    if not isinstance(event, dict):
        return f"{where} must be an object"
    typ = event.get("typ")
    if _blank(typ):
        return f"missing field: {where}.typ"
    if typ not in OPERATIONS:
        return f"{where}.typ must be one of {', '.join(OPERATIONS)} (got {_show(typ)})"
    obj = event.get("obj")
    if _blank(obj):
        return f"missing field: {where}.obj"
    if not isinstance(obj, dict):
        return f"{where}.obj must be an object"
    for kind, items in obj.items():
        if kind not in OBJECT_TYPES:
            return f"unknown object type in {where}.obj: {kind}"
        if not isinstance(items, list):
            return f"{where}.obj.{kind} must be an array"
    return None


# --------------------------------------------------------------------------------------------
# Messages and options


@dataclass
class HubOptions:
    """The processing options, changeable at run time (``POST /_sandbox/hub``)."""

    processing_delay_ms: int = 50
    item_delay_ms: int = 0
    item_error_rate: float = 0.0
    item_error_seed: int = 0
    refuse_objects: list[str] = field(default_factory=list)  # "<type>:<sis_id or code>"
    null_message_ids: int = 0  # the next N accepted POSTs answer {"messageId": null}
    stall_messages: int = 0  # the next N accepted messages stay processing (status 1) for ever

    def validate(self) -> None:
        for name in (
            "processing_delay_ms",
            "item_delay_ms",
            "item_error_seed",
            "null_message_ids",
            "stall_messages",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
        rate = self.item_error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"item_error_rate must be between 0 and 1 (got {rate!r})")
        refuse = self.refuse_objects
        if not isinstance(refuse, list) or not all(
            isinstance(entry, str) and ":" in entry for entry in refuse
        ):
            raise ValueError(f'refuse_objects must be a list of "type:id" (got {refuse!r})')


@dataclass
class HubMessage:
    message_id: str
    events: list[dict[str, Any]]
    who: str
    items: int
    received_at: str
    received_mono: float
    state: str = "queued"  # queued | processing | finished
    started_at: str | None = None
    finished_at: str | None = None
    errors: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> int:
        if self.state == "finished":
            return STATUS_FINISHED_WITH_ERRORS if self.errors else STATUS_FINISHED
        return STATUS_PROCESSING_WITH_ERRORS if self.errors else STATUS_PROCESSING

    def summary(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "status": self.status,
            "state": self.state,
            "who": self.who,
            "items": self.items,
            "processed": len(self.logs),
            "errors": self.errors,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _count_items(events: list[dict[str, Any]]) -> int:
    return sum(len(items) for event in events for items in event["obj"].values())


def _paging_value(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, {"message": f"Invalid {name}: must be an integer"})
    return value


# --------------------------------------------------------------------------------------------
# The server


class HubServer(SandboxServer):
    """The HUB Sync API on loopback; see the module docstring."""

    name = "hub"

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        env: str = DEFAULT_ENV,
        api_key: str = DEFAULT_API_KEY,
        org_id: str = DEFAULT_ORG_ID,
        processing_delay_ms: int = 50,
        item_delay_ms: int = 0,
        item_error_rate: float = 0.0,
        item_error_seed: int = 0,
        state_path: Path | str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        if not env or "/" in env:
            raise ValueError(f"env must be one path segment (got {env!r})")
        self.world = world  # only its clock is read: the HUB keeps what it is sent
        self.env = env
        self.api_key = api_key
        self.org_id = org_id
        self.state_path = Path(state_path) if state_path is not None else None
        self.max_body_bytes = max_body_bytes
        self.options = HubOptions(
            processing_delay_ms, item_delay_ms, item_error_rate, item_error_seed
        )
        self.options.validate()
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._store = HubStore()
        self._messages: dict[str, HubMessage] = {}
        self._pending = 0
        self._rng = random.Random(item_error_seed)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._hurry = threading.Event()  # set while draining: skip the delays
        self._worker: threading.Thread | None = None
        self._add_routes()

    @property
    def base_url(self) -> str:
        return f"{self.origin}/{self.env}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.state_path is not None and self.state_path.exists():
            self.load_state(self.state_path)
        self._hurry.clear()
        self._worker = threading.Thread(target=self._work, name="sandbox-hub-worker", daemon=True)
        self._worker.start()
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._worker is None:
            return
        self._hurry.set()
        self.wait_idle(timeout=60)
        self._queue.put(None)
        self._worker.join(timeout=5)
        self._worker = None
        if self.state_path is not None:
            self.save_state(self.state_path)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is processed; ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # -- public state API --------------------------------------------------------------------

    def state_snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            return self._store.snapshot()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [message.summary() for message in self._messages.values()]

    def duplicate_inserts(self, *, links: bool = True) -> int:
        """Items refused because their object (or, with ``links``, link) already existed:
        inserts sent twice, which the HUB refused."""
        counts = self.duplicate_inserts_by_type()
        return sum(n for kind, n in counts.items() if links or kind not in LINK_FIELDS)

    def duplicate_inserts_by_type(self) -> Counter[str]:
        exists = {texts["exists"]: kind for kind, texts in MESSAGES.items()}
        counts: Counter[str] = Counter()
        with self._lock:
            for message in self._messages.values():
                for item in message.logs:
                    for entry in item["baseItem"]["mensagem"]:
                        if entry["dsc_error"] in exists:
                            counts[exists[entry["dsc_error"]]] += 1
        return counts

    def reset(self) -> None:
        """Empty state and log; messages still queued are dropped."""
        with self._lock:
            self._store.clear()
            self._messages.clear()
            self._rng = random.Random(self.options.item_error_seed)

    def forget_messages(self) -> int:
        """Drop every message and its log, keeping the state (a HUB restored from a backup);
        messages still queued are never processed. Returns how many were dropped."""
        with self._lock:
            dropped = len(self._messages)
            self._messages.clear()
            return dropped

    def configure(self, **changes: Any) -> HubOptions:
        """Change processing options (a new ``item_error_seed`` reseeds the item errors)."""
        with self._lock:
            options = HubOptions(**{**asdict(self.options), **changes})
            options.validate()
            self.options = options
            if "item_error_seed" in changes:
                self._rng = random.Random(options.item_error_seed)
            return options

    def save_state(self, path: Path) -> None:
        with self._lock:
            text = self._store.dump()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)

    def load_state(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        with self._lock:
            self._store.load(data)

    # -- worker ------------------------------------------------------------------------------

    def _now(self) -> str:
        return self.world.clock.now().isoformat()

    def _work(self) -> None:
        while True:
            message_id = self._queue.get()
            if message_id is None:
                return
            try:
                self._process(message_id)
            except Exception:  # the worker must survive anything
                log.exception("hub: processing message %s failed", message_id)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _current(self, message: HubMessage) -> bool:
        """Whether the message is still registered (a reset drops it)."""
        return self._messages.get(message.message_id) is message

    def _wait_for_start(self, message: HubMessage) -> None:
        while not self._hurry.is_set():
            with self._lock:
                if not self._current(message):
                    return
                delay = self.options.processing_delay_ms / 1000
            remaining = message.received_mono + delay - time.monotonic()
            if remaining <= 0:
                return
            self._hurry.wait(min(remaining, 0.05))

    def _process(self, message_id: str) -> None:
        with self._lock:
            message = self._messages.get(message_id)
        if message is None:
            return
        self._wait_for_start(message)
        with self._lock:
            if not self._current(message):
                return
            message.state, message.started_at = "processing", self._now()
        for event in message.events:
            for kind, items in event["obj"].items():
                for item in items:
                    if not self._process_item(message, event["typ"], kind, item):
                        return
        with self._lock:
            message.state, message.finished_at, message.events = "finished", self._now(), []

    def _process_item(self, message: HubMessage, op: str, kind: str, item: Any) -> bool:
        with self._lock:
            delay = self.options.item_delay_ms / 1000
        if delay and not self._hurry.is_set():
            self._hurry.wait(delay)
        elif len(message.logs) % YIELD_EVERY == 0:
            time.sleep(0)  # let the HTTP threads have the GIL now and then
        with self._lock:
            if not self._current(message):
                return False
            level, texts = self._outcome(op, kind, item)
            message.logs.append(log_item(kind, item, level, texts))
            if level == LEVEL_ERROR:
                message.errors += 1
        return True

    def _outcome(self, op: str, kind: str, item: Any) -> Outcome:
        if self._rng.random() < self.options.item_error_rate:
            return LEVEL_ERROR, [MSG_ITEM_ERROR]
        try:
            return self._store.apply(op, kind, item)
        except Exception:  # a sandbox bug becomes an error item, never a dead worker
            log.exception("hub: %s %s failed", op, kind)
            return LEVEL_ERROR, [MSG_ITEM_ERROR]

    # -- routes ------------------------------------------------------------------------------

    def _add_routes(self) -> None:
        prefix = f"/{self.env}"
        self.router.add("POST", f"{prefix}/sync/v1", self._sync)
        self.router.add("GET", f"{prefix}/instituicao/getLog/:message_id", self._get_log)
        self.router.add("GET", "/_sandbox/state", self._admin_state)
        self.router.add(
            "GET", "/_sandbox/messages", lambda r: Response.json({"messages": self.messages()})
        )
        self.router.add("POST", "/_sandbox/reset", self._admin_reset)
        self.router.add("POST", "/_sandbox/messages/forget", self._admin_forget)
        self.router.add("GET", "/_sandbox/hub", lambda r: Response.json(asdict(self.options)))
        self.router.add("POST", "/_sandbox/hub", self._admin_configure)
        self.router.add("POST", "/_sandbox/save", self._admin_save)

    def _authorize(self, request: Request) -> None:
        if request.header("x-api-key") != self.api_key:
            raise HttpError(403, {"message": "Forbidden"})

    def _sync(self, request: Request) -> Response:
        self._authorize(request)
        if len(request.body) > self.max_body_bytes:
            raise HttpError(413, {"message": "Request Too Long"})
        try:
            payload = json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, {"message": "Invalid request body: not valid JSON"}) from None
        problem = envelope_problem(payload, self.org_id)
        if problem:
            raise HttpError(400, {"message": f"Invalid request body: {problem}"})
        refused = self._refused_object(payload["dat"])
        if refused:
            raise HttpError(400, {"message": f"Invalid Request: {refused}: object refused"})
        message = HubMessage(
            str(uuid.uuid4()),
            payload["dat"],
            payload["who"],
            _count_items(payload["dat"]),
            self._now(),
            time.monotonic(),
        )
        with self._lock:
            self._messages[message.message_id] = message
            if self.options.stall_messages:  # registered, never processed: status 1 for ever
                self.options.stall_messages -= 1
                return Response.json({"messageId": message.message_id})
            self._pending += 1
        self._queue.put(message.message_id)
        with self._lock:
            if self.options.null_message_ids:
                self.options.null_message_ids -= 1
                return Response.json({"messageId": None})
        return Response.json({"messageId": message.message_id})

    def _refused_object(self, events: list[dict[str, Any]]) -> str:
        """The first object of the envelope that ``refuse_objects`` names, as "type id"."""
        with self._lock:
            refuse = set(self.options.refuse_objects)
        if not refuse:
            return ""
        for event in events:
            for kind, items in event["obj"].items():
                for item in items:
                    if isinstance(item, dict):
                        ident = str(item.get("sis_id") or item.get("code") or "0")
                        if f"{kind}:{ident}" in refuse:
                            return f"{kind} {ident}"
        return ""

    def _paging(self, request: Request) -> tuple[int, int]:
        body: Any = {}
        if request.body.strip():
            try:
                body = json.loads(request.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = None
            if not isinstance(body, dict):
                raise HttpError(400, {"message": "Invalid request body"})
        limit = _paging_value(body, "limit", 25)
        offset = _paging_value(body, "offset", 0)
        if not 1 <= limit <= 1000:
            raise HttpError(400, {"message": "Invalid limit: must be between 1 and 1000"})
        if offset < 0:
            raise HttpError(400, {"message": "Invalid offset: must not be negative"})
        return limit, offset

    def _get_log(self, request: Request) -> Response:
        self._authorize(request)
        limit, offset = self._paging(request)
        with self._lock:
            message = self._messages.get(request.params["message_id"])
            if message is None:
                raise HttpError(404, {"message": "messageId not found"})
            total, status = len(message.logs), message.status
            page = message.logs[offset : offset + limit]
        return Response.json({"qtdeRegistros": total, "status": status, "logs": page})

    def _admin_state(self, request: Request) -> Response:
        with self._lock:
            return Response(body=self._store.dump().encode("utf-8"))

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response.json({"ok": True})

    def _admin_forget(self, request: Request) -> Response:
        return Response.json({"forgotten": self.forget_messages()})

    def _admin_configure(self, request: Request) -> Response:
        changes = request.json() or {}
        known = {f.name for f in fields(HubOptions)}
        if not isinstance(changes, dict) or set(changes) - known:
            raise HttpError(400, {"error": f"settable options: {', '.join(sorted(known))}"})
        try:
            return Response.json(asdict(self.configure(**changes)))
        except ValueError as exc:
            raise HttpError(400, {"error": str(exc)}) from None

    def _admin_save(self, request: Request) -> Response:
        if self.state_path is None:
            raise HttpError(400, {"error": "this HUB has no state_path"})
        self.save_state(self.state_path)
        with self._lock:
            counts = self._store.counts()
        return Response.json({"saved": str(self.state_path), "counts": counts})

    # -- system shapes -----------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[Response, str]:
        response, pattern = super().dispatch(request)
        if response.status == 405 and not request.path.startswith("/_sandbox"):
            response = Response.json({"message": "Method Not Allowed"}, 405)
        return response, pattern

    def not_found(self, request: Request) -> Response:
        return Response.json({"message": "Not Found"}, 404)

    def fault_response(self, kind: str, config: FaultConfig) -> Response:
        if kind == "rate_limit":
            return Response.json(
                {"message": "Too Many Requests"},
                429,
                headers={"Retry-After": str(config.retry_after)},
            )
        text = {503: "Service Unavailable", 504: "Endpoint request timed out"}.get(
            config.error_status, "Internal server error"
        )
        return Response.json({"message": text}, config.error_status)
