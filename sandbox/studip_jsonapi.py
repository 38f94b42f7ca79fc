"""The sandbox Stud.IP's JSON:API (``/jsonapi.php/v1``), as a real Stud.IP 5.5.8 answered it
(``/work/shared/reference/studip.md``, last section; recordings ``0NN-jsonapi-*``).

Served (GET, HTTP Basic with the API account's credentials):

* ``/users`` (``page[offset]``, ``page[limit]`` default 30 and not capped, ``filter[search]``,
  ``include=course-memberships``: every membership of the listed users in ``included[]``, with no
  relationships of its own; the id is ``<course_id>_<user_id>``; ``include=institute-memberships``
  embeds nothing), ``/users/me``, ``/users/:id``, ``/users/:id/institute-memberships``,
  ``/users/:id/course-memberships`` (403 even for root);
* ``/courses`` (``filter[semester]``: the courses that run in it, unlimited ones always; an unknown
  id is 400 ``Invalid "semester".``; ``include=start-semester,end-semester``), ``/courses/:id``,
  ``/courses/:id/memberships``; ``/semesters``; ``/institutes``.

Every route honours JSON:API sparse fieldsets (``fields[<type>]=a,b``; Stud.IP's routes allow
them for every type, ``$allowedFieldSetTypes = null``): a resource of a listed type keeps only
those attributes and relationships, and ``included[]`` only what a kept relationship refers to.

Success is ``application/vnd.api+json`` with ``meta.page {offset, limit, total}`` and ``links``
(``first``, ``last``; ``prev`` past the first page, ``next`` before the last); errors are
``{"errors": [{"status", "title"[, "detail"]}]}`` as ``application/json``; a request without
(valid) credentials is a 401 ``text/html`` with an empty body.

Choices the recordings do not fix: users are listed in the world's insertion order (a user created
while a client pages shifts nobody before it; a deleted one shifts every later one down), courses
by id, memberships dozent→user then by username. A non-root API account may list ``/users`` with
the relationships (as the recordings of test_admin and test_dozent show) and its ``/users/me``
says ``permission: autor``. ``StudipServer.jsonapi_refusal`` (401 or 403) makes every JSON:API
request fail so, as an installation that refuses the account there would. Only the requesting
account has the ``blubber-default-thread`` relationship. Requests are counted per route
template like the classic ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sandbox.http import HttpError, Request, Response, json_bytes

if TYPE_CHECKING:
    from sandbox.studip import StudipServer
    from sandbox.world import StudipCourse, StudipInstitute, StudipSemester, StudipUser

JSONAPI_PREFIX = "/jsonapi.php/v1"
JSONAPI_TYPE = "application/vnd.api+json"
ERROR_TYPE = "application/json"
DEFAULT_PAGE_LIMIT = 30
MEMBER_ORDER = {"dozent": 0, "tutor": 1, "autor": 2, "user": 3}
TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}

# relationship name -> (link names, has data); as the recordings have them
USER_RELATIONSHIPS: dict[str, tuple[tuple[str, ...], bool]] = {
    "activitystream": (("related",), False),
    "blubber-threads": (("related",), False),
    "blubber-default-thread": (("related", "self"), False),  # the requesting account only
    "config-values": (("related", "self"), False),
    "contacts": (("related", "self"), False),
    "courses": (("related",), False),
    "course-memberships": (("related",), True),
    "events": (("related",), False),
    "file-refs": (("related",), False),
    "folders": (("related",), False),
    "inbox": (("related",), False),
    "institute-memberships": (("related",), False),
    "news": (("related",), False),
    "outbox": (("related",), False),
    "schedule": (("related",), False),
    "courseware-bookmarks": (("related", "self"), False),
}
COURSE_LINKED = (
    "file-refs", "folders", "forum-categories", "blubber-threads", "events", "memberships",
    "news", "status-groups", "wiki-pages", "tools",
)  # fmt: skip
INSTITUTE_LINKED = ("file-refs", "folders", "blubber-threads", "memberships", "status-groups")

STUDYGROUP_DESCRIPTION = (
    "Studiengruppen sind eine einfache Möglichkeit, mit KommilitonInnen, KollegInnen und anderen "
    "zusammenzuarbeiten."
)

ROUTES = (
    "/users",
    "/users/me",
    "/users/:user_id",
    "/users/:user_id/institute-memberships",
    "/users/:user_id/course-memberships",
    "/courses",
    "/courses/:course_id",
    "/courses/:course_id/memberships",
    "/semesters",
    "/institutes",
)


def jsonapi_response(payload: Any) -> Response:
    return Response(200, json_bytes(payload), JSONAPI_TYPE, {})


def jsonapi_error(status: int, detail: str | None = None) -> HttpError:
    error: dict[str, str] = {"status": str(status), "title": TITLES.get(status, "Error")}
    if detail is not None:
        error["detail"] = detail
    body = json.dumps({"errors": [error]}, separators=(",", ":"))
    return HttpError(status, body, content_type=ERROR_TYPE)


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _page_param(request: Request, name: str, default: int) -> int:
    raw = request.query.get(f"page[{name}]")
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]+", raw) or (name == "limit" and int(raw) < 1):
        raise jsonapi_error(400, f'Invalid "page[{name}]".')
    return int(raw)


def requested_fieldsets(request: Request) -> dict[str, set[str]]:
    """``fields[<type>]=a,b``: the attributes and relationships wanted per type (JSON:API sparse
    fieldsets; Stud.IP's routes allow them for every type)."""
    fieldsets: dict[str, set[str]] = {}
    for key, value in request.query.items():
        found = re.fullmatch(r"fields\[([^\]]+)\]", key)
        if found:
            fieldsets[found.group(1)] = {name for name in value.split(",") if name}
    return fieldsets


def _identifiers(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for relationship in resource.get("relationships", {}).values():
        data = relationship.get("data")
        for item in data if isinstance(data, list) else [data] if data else []:
            yield item["type"], item["id"]


def sparse(document: dict[str, Any], fieldsets: dict[str, set[str]]) -> dict[str, Any]:
    """``document`` as a JSON:API server sends it for ``fieldsets``: a resource of a listed type
    keeps only the listed attributes and relationships (type, id, links and meta stay), and
    ``included[]`` keeps only what a kept relationship still refers to."""
    if not fieldsets:
        return document

    def trim(resource: dict[str, Any]) -> dict[str, Any]:
        wanted = fieldsets.get(resource.get("type", ""))
        if wanted is None:
            return resource
        trimmed: dict[str, Any] = {}
        for key, value in resource.items():
            if key in ("attributes", "relationships"):
                trimmed.update(_fields(key, value, wanted))
            else:
                trimmed[key] = value
        return trimmed

    data = document["data"]
    primary = [trim(r) for r in data] if isinstance(data, list) else [trim(data)]
    result = {**document, "data": primary if isinstance(data, list) else primary[0]}
    if "included" in document:
        included = [trim(r) for r in document["included"]]
        reachable = {ident for resource in primary for ident in _identifiers(resource)}
        kept: set[int] = set()
        while found := [
            i for i, r in enumerate(included) if i not in kept and (r["type"], r["id"]) in reachable
        ]:
            kept.update(found)
            reachable.update(ident for i in found for ident in _identifiers(included[i]))
        result.pop("included")
        if kept:
            result["included"] = [r for i, r in enumerate(included) if i in kept]
    return result


def _fields(member: str, fields: dict[str, Any], wanted: set[str] | None) -> dict[str, Any]:
    """``{member: fields}`` limited to ``wanted``; nothing when none is left."""
    if wanted is not None:
        fields = {name: value for name, value in fields.items() if name in wanted}
    return {member: fields} if fields else {}


def _related(path: str) -> dict[str, Any]:
    return {"links": {"related": JSONAPI_PREFIX + path}}


class JsonApi:
    """The JSON:API routes of a :class:`StudipServer` (callers hold ``world.lock``)."""

    def __init__(self, server: StudipServer) -> None:
        self.server = server
        self.world = server.world

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[Response, str]:
        path = request.path[len(JSONAPI_PREFIX) :].rstrip("/") or "/"
        template, params = _match(path)
        refusal = self.server.jsonapi_refusal
        if not self.server.detect_basic(request) or refusal == 401:
            return Response(401, b"", "text/html; charset=UTF-8", {}), "(error)"
        if refusal == 403:
            raise jsonapi_error(403)
        if template is None:
            raise jsonapi_error(404)
        handler = {
            "/users": self._users,
            "/users/me": self._me,
            "/users/:user_id": self._user,
            "/users/:user_id/institute-memberships": self._institute_memberships,
            "/users/:user_id/course-memberships": self._forbidden,
            "/courses": self._courses,
            "/courses/:course_id": self._course,
            "/courses/:course_id/memberships": self._course_memberships,
            "/semesters": self._semesters,
            "/institutes": self._institutes,
        }[template]
        with self.world.lock:
            return handler(request, **params), JSONAPI_PREFIX + template

    # -- documents -----------------------------------------------------------------------------

    def _respond(self, request: Request, document: dict[str, Any]) -> Response:
        return jsonapi_response(sparse(document, requested_fieldsets(request)))

    def _collection(
        self, request: Request, path: str, items: list[Any], render: Any
    ) -> dict[str, Any]:
        offset = _page_param(request, "offset", 0)
        limit = _page_param(request, "limit", DEFAULT_PAGE_LIMIT)
        total = len(items)
        filters = {k: v for k, v in request.query.items() if not k.startswith("page[")}

        def link(at: int) -> str:
            query = {**filters, "page[offset]": str(at), "page[limit]": str(limit)}
            return f"{JSONAPI_PREFIX}{path}?{urlencode(query)}"

        last = max(0, (total - 1) // limit * limit)
        links = {"first": link(0), "last": link(last)}
        if offset > 0:
            links["prev"] = link(max(0, offset - limit))
        if offset + limit < total:
            links["next"] = link(offset + limit)
        return {
            "meta": {"page": {"offset": offset, "limit": limit, "total": total}},
            "links": links,
            "data": [render(item) for item in items[offset : offset + limit]],
        }

    def _avatar(self, kind: str, name: str, sizes: tuple[str, ...]) -> dict[str, str]:
        base = f"{self.server.origin}/assets/images/avatars/{kind}/{name}"
        return {size: f"{base}_{size if size != 'original' else 'normal'}.webp" for size in sizes}

    def user_resource(self, user: StudipUser, wanted: set[str] | None = None) -> dict[str, Any]:
        """A user; ``wanted`` (its sparse fieldset) limits the attributes and relationships. The
        listing's hot path, so the relationships not wanted are not built at all."""
        name = self.server.name_of(user)
        uid = user.user_id
        relationships: dict[str, Any] = {}
        for rel, (links, has_data) in USER_RELATIONSHIPS.items():
            if rel == "blubber-default-thread" and uid != self.world.api_account.user_id:
                continue
            if wanted is not None and rel not in wanted:
                continue
            entry: dict[str, Any] = {"links": {}}
            for link in links:
                entry["links"][link] = (
                    f"{JSONAPI_PREFIX}/users/{uid}/{rel}"
                    if link == "related"
                    else f"{JSONAPI_PREFIX}/users/{uid}/relationships/{rel}"
                )
            if rel == "blubber-default-thread":
                entry["links"]["related"] = f"{JSONAPI_PREFIX}/blubber-threads/1"
            if has_data:
                entry["data"] = [
                    {"type": "course-memberships", "id": f"{cid}_{uid}"}
                    for cid in sorted(self.world.user_courses.get(uid, ()))
                ]
            relationships[rel] = entry
        attributes = {
                "username": user.username,
                "formatted-name": name["formatted"],
                "family-name": name["family"],
                "given-name": name["given"],
                "name-prefix": "",
                "name-suffix": "",
                "permission": self.server.perms_of(user),
                "email": user.email,
                "phone": None,
                "homepage": None,
                "address": None,
        }  # fmt: skip
        resource: dict[str, Any] = {"type": "users", "id": uid}
        resource.update(_fields("attributes", attributes, wanted))
        resource.update(_fields("relationships", relationships, wanted))
        resource["links"] = {"self": f"{JSONAPI_PREFIX}/users/{uid}"}
        resource["meta"] = {
            "avatar": self._avatar("user", "nobody", ("small", "medium", "normal", "original"))
        }
        return resource

    def membership_resource(
        self, course_id: str, user_id: str, *, related: bool, wanted: set[str] | None = None
    ) -> dict[str, Any]:
        status = self.world.memberships[course_id][user_id]
        attributes = {
                "permission": status,
                "position": 0,
                "group": 5,
                "mkdate": "2012-08-02T18:23:09+02:00",
                "label": "",
                "comment": "",
                "visible": "yes" if status in ("dozent", "tutor") else "unknown",
        }  # fmt: skip
        resource: dict[str, Any] = {"type": "course-memberships", "id": f"{course_id}_{user_id}"}
        resource.update(_fields("attributes", attributes, wanted))
        if related:
            relationships = {
                "course": {
                    **_related(f"/courses/{course_id}"),
                    "data": {"type": "courses", "id": course_id},
                },
                "user": {
                    **_related(f"/users/{user_id}"),
                    "data": {"type": "users", "id": user_id},
                },
            }
            resource.update(_fields("relationships", relationships, wanted))
        resource["links"] = {"self": f"{JSONAPI_PREFIX}/course-memberships/{course_id}_{user_id}"}
        return resource

    def course_resource(self, course: StudipCourse) -> dict[str, Any]:
        cid = course.course_id
        studygroup = course.sem_type == "99"
        relationships: dict[str, Any] = {
            "institute": {
                **_related(f"/institutes/{course.institute_id}"),
                "data": {"type": "institutes", "id": course.institute_id},
            }
        }
        for rel, semester_id in (
            ("start-semester", course.start_semester),
            ("end-semester", course.end_semester),
        ):
            if semester_id:
                relationships[rel] = {
                    **_related(f"/semesters/{semester_id}"),
                    "data": {"type": "semesters", "id": semester_id},
                }
        relationships["participating-institutes"] = {"data": []}
        for rel in COURSE_LINKED:
            relationships[rel] = _related(f"/courses/{cid}/{rel}")
            if rel == "blubber-threads":
                relationships["courseware"] = {**_related(f"/courses/{cid}/courseware"),
                                               "data": None}  # fmt: skip
            if rel == "memberships":
                relationships[rel]["links"]["self"] = (
                    f"{JSONAPI_PREFIX}/courses/{cid}/relationships/memberships"
                )
            if rel == "news":
                sem_class = str(self._sem_class(course.sem_type))
                relationships["sem-class"] = {"data": {"type": "sem-classes", "id": sem_class}}
                relationships["sem-type"] = {"data": {"type": "sem-types", "id": course.sem_type}}
        return {
            "type": "courses",
            "id": cid,
            "attributes": {
                # as recorded: a study group has no number or subtitle but a description
                "course-number": None if studygroup else course.number,
                "title": course.title,
                "subtitle": None if studygroup else course.subtitle,
                "course-type": int(course.sem_type),
                "description": STUDYGROUP_DESCRIPTION if studygroup else None,
                "location": None,
                "miscellaneous": None,
            },
            "relationships": relationships,
            "links": {"self": f"{JSONAPI_PREFIX}/courses/{cid}"},
            "meta": {
                "avatar": self._avatar(
                    "course", "studygroup" if studygroup else "nobody", ("small", "medium",
                                                                         "normal"))
            },
        }  # fmt: skip

    @staticmethod
    def _sem_class(sem_type: str) -> str:
        from sandbox.world import SEM_TYPES

        return str(SEM_TYPES.get(sem_type, ("", "1"))[1])

    @staticmethod
    def semester_resource(semester: StudipSemester, now: float) -> dict[str, Any]:
        return {
            "type": "semesters",
            "id": semester.semester_id,
            "attributes": {
                "title": semester.title,
                "token": "",
                "start": _iso(semester.begin),
                "end": _iso(semester.end),
                "start-of-lectures": _iso(semester.seminars_begin),
                "end-of-lectures": _iso(semester.seminars_end),
                "visible": True,
                "is-current": semester.begin <= now <= semester.end,
            },
            "links": {"self": f"{JSONAPI_PREFIX}/semesters/{semester.semester_id}"},
        }

    def _faculty_id(self, institute: StudipInstitute) -> str | None:
        for other in self.world.studip_institutes.values():
            if other.name == institute.faculty_name:
                return None if other.institute_id == institute.institute_id else other.institute_id
        return hashlib.md5(institute.faculty_name.encode()).hexdigest()

    def institute_resource(self, institute: StudipInstitute) -> dict[str, Any]:
        iid = institute.institute_id
        faculty = self._faculty_id(institute)
        subs = [
            i.institute_id
            for i in self.world.studip_institutes.values()
            if i.institute_id != iid and self._faculty_id(i) == iid
        ]
        relationships: dict[str, Any] = {
            rel: _related(f"/institutes/{iid}/{rel}") for rel in INSTITUTE_LINKED
        }
        if faculty:
            relationships["faculty"] = {
                **_related(f"/institutes/{iid}/faculty"),
                "data": {"type": "institutes", "id": faculty},
            }
        relationships["sub-institutes"] = {
            **_related(f"/institutes/{iid}/sub-institutes"),
            "data": [{"type": "institutes", "id": s} for s in subs],
        }
        return {
            "type": "institutes",
            "id": iid,
            "attributes": {
                "name": institute.name,
                "city": institute.city,
                "street": "",
                "phone": "",
                "fax": "",
                "url": "",
                "is-faculty": faculty is None,
                "inst-type": "1",
                "inst-type-name": "Einrichtung",
                "mkdate": "2006-08-25T16:38:18+02:00",
                "chdate": "2006-08-25T16:38:18+02:00",
            },
            "relationships": relationships,
            "links": {"self": f"{JSONAPI_PREFIX}/institutes/{iid}"},
            "meta": {"sub-institutes-count": len(subs)},
        }

    # -- handlers ------------------------------------------------------------------------------

    def _require_user(self, user_id: str) -> StudipUser:
        user = self.world.studip_users.get(user_id)
        if user is None:
            raise jsonapi_error(404)
        return user

    def _users(self, request: Request) -> Response:
        users = list(self.world.studip_users.values())
        search = request.query.get("filter[search]")
        if search is not None:
            needle = search.strip().lower()
            users = [
                u for u in users
                if any(needle in text.lower() for text in self.server.name_of(u).values())
            ]  # fmt: skip
        # the listing's hot path renders the sparse fieldsets itself instead of trimming after
        fieldsets = requested_fieldsets(request)
        wanted = fieldsets.get("users")
        document = self._collection(
            request, "/users", users, lambda user: self.user_resource(user, wanted)
        )
        includes = [i for i in request.query.get("include", "").split(",") if i]
        if "course-memberships" in includes and (wanted is None or "course-memberships" in wanted):
            of_memberships = fieldsets.get("course-memberships")
            document["included"] = [
                self.membership_resource(cid, user["id"], related=False, wanted=of_memberships)
                for user in document["data"]
                for cid in sorted(self.world.user_courses.get(user["id"], ()))
            ]
        return jsonapi_response(document)

    def _me(self, request: Request) -> Response:
        return self._respond(request, {"data": self.user_resource(self.world.api_account)})

    def _user(self, request: Request, user_id: str) -> Response:
        return self._respond(request, {"data": self.user_resource(self._require_user(user_id))})

    def _forbidden(self, request: Request, user_id: str) -> Response:
        raise jsonapi_error(403)

    def _institute_memberships(self, request: Request, user_id: str) -> Response:
        user = self._require_user(user_id)
        staff = user.perms in ("tutor", "dozent", "admin")
        items = [i for i in user.institute_ids if i in self.world.studip_institutes]

        def render(institute_id: str) -> dict[str, Any]:
            number = int(hashlib.md5(f"{user_id}{institute_id}".encode()).hexdigest()[:6], 16)
            return {
                "type": "institute-memberships",
                "id": str(number),
                "attributes": {
                    "permission": user.perms if staff else "user",
                    "office-hours": None,
                    "location": None,
                    "phone": None,
                    "fax": None,
                },
                "relationships": {
                    "user": {**_related(f"/users/{user_id}"),
                             "data": {"type": "users", "id": user_id}},
                    "institute": {**_related(f"/institutes/{institute_id}"),
                                  "data": {"type": "institutes", "id": institute_id}},
                },
                "links": {"self": f"{JSONAPI_PREFIX}/institute-memberships/{number}"},
            }  # fmt: skip

        path = f"/users/{user_id}/institute-memberships"
        return self._respond(request, self._collection(request, path, items, render))

    def _courses(self, request: Request) -> Response:
        courses = sorted(self.world.studip_courses.values(), key=lambda c: c.course_id)
        semester_id = request.query.get("filter[semester]")
        if semester_id is not None:
            if semester_id not in self.world.studip_semesters:
                raise jsonapi_error(400, 'Invalid "semester".')
            courses = [c for c in courses if self.world.course_runs_in(c, semester_id)]
        document = self._collection(request, "/courses", courses, self.course_resource)
        includes = [i for i in request.query.get("include", "").split(",") if i]
        wanted = [rel for rel in ("start-semester", "end-semester") if rel in includes]
        if wanted:
            ids = {
                course["relationships"][rel]["data"]["id"]
                for course in document["data"]
                for rel in wanted
                if rel in course["relationships"]
            }
            now = self.world.clock.now().timestamp()
            document["included"] = [
                self.semester_resource(s, now)
                for s in self.world.semesters_in_order
                if s.semester_id in ids
            ]
        return self._respond(request, document)

    def _course(self, request: Request, course_id: str) -> Response:
        course = self.world.studip_courses.get(course_id)
        if course is None:
            raise jsonapi_error(404)
        return self._respond(request, {"data": self.course_resource(course)})

    def _course_memberships(self, request: Request, course_id: str) -> Response:
        if course_id not in self.world.studip_courses:
            raise jsonapi_error(404)
        users = self.world.studip_users
        members = sorted(
            self.world.memberships.get(course_id, {}).items(),
            key=lambda item: (MEMBER_ORDER.get(item[1], 9), users[item[0]].username),
        )
        document = self._collection(
            request,
            f"/courses/{course_id}/memberships",
            [uid for uid, _ in members],
            lambda uid: self.membership_resource(course_id, uid, related=True),
        )
        return self._respond(request, document)

    def _semesters(self, request: Request) -> Response:
        now = self.world.clock.now().timestamp()
        return self._respond(
            request,
            self._collection(
                request,
                "/semesters",
                self.world.semesters_in_order,
                lambda s: self.semester_resource(s, now),
            ),
        )

    def _institutes(self, request: Request) -> Response:
        institutes = sorted(self.world.studip_institutes.values(), key=lambda i: i.institute_id)
        return self._respond(
            request, self._collection(request, "/institutes", institutes, self.institute_resource)
        )


def _match(path: str) -> tuple[str | None, dict[str, str]]:
    for template in ROUTES:
        regex = "^" + re.sub(r":(\w+)", r"(?P<\1>[^/]+)", template) + "$"
        found = re.match(regex, path)
        if found and not (template == "/users/:user_id" and found.group("user_id") == "me"):
            return template, found.groupdict()
    return None, {}
