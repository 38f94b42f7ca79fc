"""The CAMPUSonline commands: ``show-student``, ``show-studies``, ``show-applications`` and
``sync-one`` (the reference connector's commands, ``reference/campusonline.md``).

An ID is an obfuscated identification number (``IDENTNROBFUSCATED``) or, when it is numeric and
no obfuscated id matches, a person number (``STPERSONNR``).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from assets.campusonline.connector_json import student_json
from resources.campusonline import (
    APPLICATIONS,
    STUDENTS,
    STUDIES,
    CampusOnlineClient,
    CampusOnlineResource,
    CoApplication,
    CoService,
    CoStudent,
    CoStudy,
    campusonline_resource,
)
from resources.settings import load_settings

NOT_FOUND = "student data not found"


def find_student(client: CampusOnlineClient, student_id: str) -> dict[str, Any] | None:
    """The raw student row for an obfuscated id, else (numeric ids) for a person number."""
    rows = list(client.rows(STUDENTS, filter=("IdentNrObfuscated", student_id)))
    if not rows and student_id.isdigit():
        rows = list(client.rows(STUDENTS, filter=("StPersonNr", student_id)))
    return rows[0] if rows else None


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a table with one line per field and one column per row (CO's rows are wide)."""
    fields: list[str] = []
    for row in rows:
        fields += [name for name in row if name not in fields]
    columns = [[name for name in fields]] + [
        [_cell(row.get(name)) for name in fields] for row in rows
    ]
    headers = ["field"] + [str(n) for n in range(1, len(rows) + 1)]
    widths = [max(len(headers[i]), *(len(c) for c in col)) for i, col in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def format_row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [line, format_row(headers), line]
    lines += [format_row([col[i] for col in columns]) for i in range(len(fields))]
    lines.append(line)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]  # CO's date objects
    return "" if value is None else str(value)


def _resource() -> CampusOnlineResource:
    return campusonline_resource(load_settings().co, in_process=True)


def _show(student_id: str, service: CoService | None) -> int:
    with _resource().client() as client:
        student = find_student(client, student_id)
        if student is None:
            print(NOT_FOUND, file=sys.stderr)
            return 1
        if service is None:
            rows = [student]
        else:
            rows = list(client.rows(service, filter=("StPersonNr", student["STPERSONNR"])))
    print(render_table(rows) if rows else f"no {service.code if service else 'rows'}")
    return 0


def show_student(args: argparse.Namespace) -> int:
    return _show(args.id, None)


def show_studies(args: argparse.Namespace) -> int:
    return _show(args.id, STUDIES)


def show_applications(args: argparse.Namespace) -> int:
    return _show(args.id, APPLICATIONS)


def sync_one(args: argparse.Namespace) -> int:
    """Print one student as the connector's JSON: a read-only look, like ``show-*``.

    The connector's ``sync-one`` also records the student's live rows in its cursor. hubsync
    keeps its cursor in the warehouse, written by Dagster runs only: live rows recorded here,
    whose content no sync stored, made the next incremental sync treat the student's newer view
    rows as outdated and drop them (a change lost until the next full sync)."""
    settings = load_settings()
    resource = campusonline_resource(settings.co, in_process=True)
    with resource.client() as client:
        raw_student = find_student(client, args.id)
        if raw_student is None:
            print(NOT_FOUND, file=sys.stderr)
            return 1
        person = raw_student["STPERSONNR"]
        raw_studies = list(client.rows(STUDIES, filter=("StPersonNr", person)))
        raw_applications = list(client.rows(APPLICATIONS, filter=("StPersonNr", person)))
    document = student_json(
        CoStudent.model_validate(raw_student),
        [CoStudy.model_validate(row) for row in raw_studies],
        [CoApplication.model_validate(row) for row in raw_applications],
        base_url=resource.api_url,
        zone=resource.zone,
    )
    print(json.dumps(document, ensure_ascii=False, indent=4))
    return 0
