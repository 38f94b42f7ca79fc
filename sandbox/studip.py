"""The sandbox Stud.IP: the legacy REST API (``/api.php``) of a Stud.IP 5.5 installation.

Serves what hubsync reads (``/discovery``, ``/user``, ``/user/:user_id`` with its ``courses`` and
``institutes``, ``/course/:course_id`` with its ``members``, ``/semesters``, ``/semester/:id``,
``/studip/settings``, ``/users?q=``) from the world's Stud.IP records, with the real system's
quirks as ``/work/shared/reference/studip.md`` records them: collections keyed by the item's
``/api.php/...`` path, an empty collection serialised as ``[]``, the reported ``offset`` rounded
down to a multiple of ``limit`` while the data is sliced at the raw offset, ``links`` only when
``total > limit`` with ``next`` clamped to the last page, JSON-string error bodies, ``text/html``
auth and routing errors, a 500 JSON for a bad OAuth signature, ``\\/``-escaped slashes, a
``Seminar_Session`` cookie on every response, an ``ETag`` on ``/user``, the ``/v2`` prefix and the
``.json`` suffix, routes an administrator has not activated (403 ``Route not activated``).
The JSON:API (``/jsonapi.php/v1``) is served by ``sandbox/studip_jsonapi.py``.

Auth: HTTP Basic with the API account's credentials, or OAuth1 HMAC-SHA1 (header-, query- or
form-signed) verified with ``oauthlib``. Both authenticate as ``world.api_account``.

Admin route (besides the framework's): ``GET|POST /_sandbox/routes`` reads or replaces the set of
deactivated route templates (``{"disabled": ["/course/:course_id/members"]}``).

Behaviour the documents do not fix, as the sandbox chose it:

* Order of checks: version prefix (400) → consumer detection (a bad OAuth signature or unknown
  token is a 500 even on an unknown route) → route match (404) → authentication (401, except on
  ``/semesters`` and ``/semester/:id``) → activation (403) → the handler.
* Consumer detection: wrong Basic credentials or an unknown OAuth consumer key mean "no
  consumer" (401 like no credentials; on the two nobody routes the request is answered). A known
  consumer key with another token is a 500 JSON ``The consumer_key "…" token "…" combination
  does not exist or is not enabled.``; a signature method other than HMAC-SHA1 is a 500 JSON
  ``Unsupported signature method "…"``. No timestamp window or nonce replay check.
* The signature base string uses the scheme ``http`` and the ``Host`` header the client sent.
* ``offset``/``limit`` must be decimal digits (``limit`` at least 1), otherwise 400 with a JSON
  string (``"Parameter offset must be a non-negative integer"``,
  ``"Parameter limit must be a positive integer"``); an offset past the end gives ``[]``.
* ``links`` repeat the route's filter parameters before ``offset`` and ``limit``
  (``…/members?status=autor&offset=0&limit=20``) and never carry the ``/v2`` prefix.
* Collection order: courses by start semester begin (courses without a semester, the study
  group, last), then number, then id; members by status (dozent, tutor, autor, user), then
  username; semesters by begin; ``/users?q=`` by username. ``lecturers`` (the dozent members) are
  ordered by username.
* ``?status=`` outside user/autor/tutor/dozent → 400 ``"Invalid status <value>"``.
* ``/users?q=`` matches the substring case-insensitively against username, given name, family
  name and "given family"; it answers ``{"collection": [short records], "pagination": …}`` like
  the real one (a *list* of ``id``/``href``/``name``/``avatar_*`` records, no perms or e-mail),
  honouring ``offset``/``limit`` (default 20).
* ``/user/:id/courses?semester=`` lists the courses that run in the semester (start to end
  semester; unlimited courses, study groups among them, for every semester). ``group`` is null
  unless the API account is a member of the course (it is of none in the world). Study groups
  have no ``forum`` module.
* ``/user/:id/institutes``: users with perms tutor/dozent/admin list their institutes under
  ``work`` with their perms; everyone else under ``study`` with perms ``user``. ``total`` is
  work + study; the lists are not sliced.
* ``api_account_is_root=False``: the account shows perms ``autor``; a foreign
  ``/user/:id/courses`` (even an unknown id) → 401 ``""``; ``/course/:id`` of the study group
  (type 99) it is not a member of → 401 ``""``; institutes and members stay readable.
* Routes listed in ``/discovery`` that the sandbox does not serve (news, blubber, forum, …)
  answer 404 like an unknown route. A served route with another method (or
  ``X-HTTP-Method-Override``) → 405 ``text/html`` ``HTTP/1.1 405 Method Not Allowed``.
  ``HEAD`` is answered like ``GET``; ``X-HTTP-Method-Override`` (documented since 4.3) is honoured.
* JSON is encoded like PHP's ``json_encode`` defaults: slashes escaped, non-ASCII as ``\\uXXXX``,
  every empty object as ``[]``.
* ``Seminar_Session`` echoes the session id the client sent, otherwise a new 32-hex id.
* ``/user`` sends ``ETag: "<md5 of the body>"``; ``If-None-Match`` (a list, ``W/`` or ``*``)
  → 304 with an empty body. No other route sends an ETag.
* Injected faults: ``error`` is always a 500 PHP fatal-error HTML page (``error_status`` is
  ignored: Stud.IP itself fails this way); ``rate_limit`` is the fronting proxy's 429 HTML page
  with ``Retry-After`` (Stud.IP has no rate limiting of its own).
* Courses with 256 or more members keep their counts, ordered members and lecturers cached
  until ``world.step()`` runs or the member count changes (the crawl reads the big lecture series
  thousands of times); after changing a big course's statuses in place without either, call
  ``invalidate_cache()``. Smaller courses are always read fresh.
* Avatars are the ``nobody`` pictures ``<origin>/assets/images/avatars/user/nobody_<size>.webp``;
  the API account's name is "Hubsync API"; datafields keep the order of ``StudipUser.datafields``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlencode

from oauthlib.common import safe_string_equals
from oauthlib.oauth1 import Client as OAuthClient
from oauthlib.oauth1.rfc5849 import signature as oauth_signature

from sandbox.http import FaultConfig, HttpError, Request, Response, SandboxServer
from sandbox.studip_jsonapi import JSONAPI_PREFIX, JsonApi
from sandbox.world import (
    API_ACCOUNT_USERNAME,
    INST_TYPES,
    SEM_CLASSES,
    SEM_TYPES,
    STUDYGROUP_CLASSES,
    StudipCourse,
    StudipInstitute,
    StudipSemester,
    StudipUser,
    World,
)

API_PREFIX = "/api.php"
JSON_TYPE = "application/json;charset=utf-8"
HTML_TYPE = "text/html;charset=utf-8"
REALM = "sandbox-installation"
DEFAULT_LIMIT = 20
SESSION_COOKIE = "Seminar_Session"
MEMBER_STATUSES = ("dozent", "tutor", "autor", "user")
STATUS_RANK = {status: rank for rank, status in enumerate(MEMBER_STATUSES)}
STAFF_PERMS = ("tutor", "dozent", "admin")
STUDYGROUP_TYPE = "99"
API_ACCOUNT_NAME = ("Hubsync", "API")
AVATAR_SIZES = ("small", "medium", "normal", "original")
CACHE_MIN_MEMBERS = 256
ALLOW_NOBODY = frozenset({"/semesters", "/semester/:semester_id"})

# Every route of the installation as /discovery lists it (templates without /api.php): the listing
# of a real Stud.IP 5.5.8 (fixtures/studip-5.5.8/001-discovery.json; long descriptions cut). The
# ones hubsync reads are served; the others only make the listing realistic.
ROUTE_CATALOGUE: dict[str, dict[str, str | None]] = {
    "/blubber/threads": {"get": "Get threads"},
    "/blubber/threads/:thread_id": {
        "get": 'Get content and some comments for a blubber-thread or for the "global…'
    },
    "/blubber/threads/:thread_id/comments": {
        "get": "Write a comment to a thread",
        "post": "Write a comment to a thread",
    },
    "/blubber/threads/:thread_id/comments/:comment_id": {"put": "Write a comment to a thread"},
    "/blubber/threads/:thread_id/follow": {
        "delete": "User unfollows a thread.",
        "get": "Does the current user follow the thread?",
        "post": "User follows a thread.",
    },
    "/clipboard/:clipboard_id": {"delete": "Deletes a clipboard.", "put": "Edits a clipboard."},
    "/clipboard/:clipboard_id/item": {"post": "Adds an item to a clipboard."},
    "/clipboard/:clipboard_id/item/:range_id": {
        "delete": "Removes an item (selected by its range-ID) from a clipboard."
    },
    "/clipboard/add": {"post": "Adds a new clipboard."},
    "/comment/:comment_id": {"delete": "News-Comment löschen", "get": "News-Comment auslesen"},
    "/contact_group/:group_id": {
        "delete": "Remove a contact group",
        "get": "Show a single contact group",
    },
    "/contact_group/:group_id/members": {"get": "List all members of a contact group"},
    "/contact_group/:group_id/members/:user_id": {
        "delete": "Remove a user from a contact group",
        "put": "Add a user to a contact group",
    },
    "/course/:course_id": {"get": "Show a single course"},
    "/course/:course_id/events": {"get": "returns events for a given course"},
    "/course/:course_id/feedback": {"get": "List all feedback elements of a course"},
    "/course/:course_id/forum_categories": {
        "get": "List all categories of a forum",
        "post": "Create a new category",
    },
    "/course/:course_id/members": {"get": "List all members of a course."},
    "/course/:course_id/news": {"get": "News einer Veranstaltung auslesen", "post": "News anlegen"},
    "/course/:course_id/top_folder": {"get": "Get the root file folder of a course."},
    "/course/:range_id/wiki": {"get": "Wikiseitenindex einer Veranstaltung"},
    "/course/:range_id/wiki/:keyword": {
        "get": "Wikiseite auslesen",
        "put": "Wikiseite ändern/hinzufügen",
    },
    "/course/:range_id/wiki/:keyword/:version": {"get": "Wikiseite auslesen"},
    "/discovery": {"get": "Schnittstellenbeschreibung"},
    "/feedback/:feedback_id": {
        "delete": "Delete a feedback element",
        "get": "Get a feedback element",
        "put": "Edit a feedback element",
    },
    "/feedback/:feedback_id/entries": {"get": "Get all entries of a feedback element"},
    "/feedback/:feedback_id/entry": {"post": "add an entry for a feedback element"},
    "/feedback/entry/:entry_id": {
        "delete": "delete an entry of a feedback element",
        "put": "edit an entry of a feedback element",
    },
    "/feedback/range/:range_id/:range_type": {
        "get": "List all feedback elements for a range",
        "post": "Create feedback element for a range",
    },
    "/file/:file_ref_id": {
        "delete": "Deletes a file reference.",
        "get": "Get a file reference object (metadata)",
        "put": "Edit a file reference.",
    },
    "/file/:file_ref_id/copy/:destination_folder_id": {"post": "Copies a file reference."},
    "/file/:file_ref_id/download": {
        "get": "Get the data of a file by the ID of an associated FileRef object"
    },
    "/file/:file_ref_id/move/:destination_folder_id": {"post": "Moves a file reference."},
    "/file/:file_ref_id/update": {"post": "Update file data using a FileReference to it."},
    "/file/:folder_id": {"post": "Upload file to given folder."},
    "/folder/:folder_id": {
        "delete": "Deletes a folder.",
        "get": "Get a folder object with its file references, subdirectories and the…",
        "put": "Allows editing the name or the description (or both) of a folder.",
    },
    "/folder/:folder_id/copy/:destination_folder_id": {
        "post": "Copies a folder into another folder."
    },
    "/folder/:folder_id/files": {"get": "Get a list with all FileRef objects of a folder."},
    "/folder/:folder_id/move/:destination_folder_id": {
        "post": "Move a folder into another folder."
    },
    "/folder/:folder_id/permissions": {
        "get": "Get a list with permissions the current user has for a folder."
    },
    "/folder/:folder_id/subfolders": {"get": "Get a list with all FileRef objects of a folder."},
    "/folder/:parent_folder_id/new_folder": {
        "post": "Creates a new folder inside of another folder and returns the new obj…"
    },
    "/forum_category/:category_id": {
        "delete": "Delete a category",
        "get": "Read a category",
        "put": "Update a category",
    },
    "/forum_category/:category_id/areas": {
        "get": "Show entries of a category",
        "post": "Add a new forum entry to an existing one",
    },
    "/forum_entry/:entry_id": {
        "delete": "Delete an entry",
        "get": "Get a forum entry",
        "post": "Add a new forum entry to an existing one",
        "put": "Update an existing one forum entry",
    },
    "/message/:message_id": {
        "delete": "Löscht eine Nachricht.",
        "get": "Liefert die Daten der angegebenen Nachricht zurück.",
        "put": "Eine Nachricht als (un)gelesen markieren.",
    },
    "/message/:message_id/file_folder": {
        "get": "Get the root file folder of a message. The root file folder contains…"
    },
    "/messages": {"post": "Schreibt eine neue Nachricht."},
    "/news/:news_id": {"delete": "News löschen", "get": "News auslesen", "put": "News updaten"},
    "/news/:news_id/comments": {"get": "News-Comments auslesen", "post": "News-Comment anlegen"},
    "/resources/add_property": {"post": "Creates a new resource property definition."},
    "/resources/booking/:booking_id/intervals": {
        "get": "Retrieves the intervals of the resource booking."
    },
    "/resources/booking/:booking_id/move": {"post": "Moves a resource booking, if permitted."},
    "/resources/booking_interval/:interval_id/toggle_takes_place": {
        "post": "Change the status of a resource booking interval:"
    },
    "/resources/categories": {"get": "Returns all defined resource categories."},
    "/resources/category/:category_id": {
        "delete": "Deletes a resource category.",
        "get": "Get a resource category object.",
        "put": "Modifies a resource category.",
    },
    "/resources/category/:category_id/create_resource": {"post": "Creates a resource."},
    "/resources/category/:category_id/properties": {
        "get": "Get all resource category property objects for a resource category."
    },
    "/resources/category/:category_id/resources": {
        "get": "Returns all resources which belong to the specified category."
    },
    "/resources/new_category": {"post": "Creates a resource category object."},
    "/resources/permissions/:resource_id": {
        "get": "Get the permission levels of users for the specified resource."
    },
    "/resources/permissions/:resource_id/:user:_id": {
        "get": "Returns the permissions a specific user has on a specified resource."
    },
    "/resources/permissions/:resource_id/:user_id": {"delete": None, "post": None},
    "/resources/properties": {"get": "Returns all resource property definitions."},
    "/resources/property/:property_id": {
        "delete": "Deletes a resource property definition object.",
        "get": "Get a resource property definition object.",
        "put": "Modifies a resource property definition.",
    },
    "/resources/request/:request_id/edit_reply_comment": {
        "post": "Changes the reply comment of a request."
    },
    "/resources/request/:request_id/move": {"post": "Moves a resource request, if permitted."},
    "/resources/request/:request_id/toggle_marked": {
        "post": "Changes the reply comment of a request."
    },
    "/resources/resource/:resource_id": {
        "delete": "Deletes a resource object.",
        "get": "Get a resource object.",
        "put": "Modifies a resource object.",
    },
    "/resources/resource/:resource_id/assign": {
        "post": "Creates a booking/reservation/lock for a resource."
    },
    "/resources/resource/:resource_id/booking_plan": {
        "get": "Returns the booking plan of a resource for a week specified"
    },
    "/resources/resource/:resource_id/bookings": {"get": None},
    "/resources/resource/:resource_id/children": {
        "get": "Returns the child resources of a resource object, if they exist."
    },
    "/resources/resource/:resource_id/parent": {
        "get": "Returns the parent resource of a resource object, if it exists."
    },
    "/resources/resource/:resource_id/properties": {
        "get": "Get all property objects of a resource."
    },
    "/resources/resource/:resource_id/request_simple": {"post": "Creates a resource request."},
    "/resources/resource/:resource_id/requests": {
        "get": "Gets request of a resource. At your option the requests can be"
    },
    "/resources/resource/:resource_id/semester_plan": {
        "get": "Returns the booking plan of a resource for a selected semester."
    },
    "/resources/temporary_permissions/:resource_id": {
        "get": "Get the temporary permission levels of users for the specified resour…"
    },
    "/resources/temporary_permissions/:resource_id/:user:_id": {
        "get": "Returns the permissions a specific user has on a specified resource."
    },
    "/resources/temporary_permissions/:resource_id/:user_id": {
        "delete": "Deletes all temporary permissions of a user.",
        "post": "Sets temporary permissions for a user.",
    },
    "/room_clipboard/:clipboard_id/booking_plan": {
        "get": "Returns the request/booking plan for a room clipboard."
    },
    "/room_clipboard/:clipboard_id/semester_plan": {
        "get": "Returns the semester plan for a room clipboard."
    },
    "/semester/:semester_id": {"get": "Returns a single semester."},
    "/semester/:timestamp/week": {"get": "Returns the semester week as string for a given string"},
    "/semesters": {"get": "Returns a list of all semesters."},
    "/studip/colors": {"get": "Farbeinstellungen"},
    "/studip/content_terms_of_use_list": {
        "get": "Get a collection of all ContentTermsOfUse objects"
    },
    "/studip/file_system/folder_types": {
        "get": "Returns a list of defined folder types, separated by range type."
    },
    "/studip/news": {"get": "Globale News auslesen", "post": "News anlegen"},
    "/studip/settings": {"get": "Grundlegende Systemeinstellungen"},
    "/user": {"get": "getUser - retrieves data of a user"},
    "/user/:user_id": {
        "delete": "deleteUser - deletes a user",
        "get": "getUser - retrieves data of a user",
    },
    "/user/:user_id/:box": {
        "get": "Liefert die vorhandenen Nachrichten des autorisierten Nutzers zurück.",
        "head": "Liefert die Anzahl der vorhandenen Nachrichten des autorisierten Nutz…",
    },
    "/user/:user_id/activitystream": {"get": "List activities for an user"},
    "/user/:user_id/config/:field": {
        "delete": "Removes a specific config entry for a given user",
        "get": "Returns the value of a specific config entry for a given user",
        "put": "Stored the value of a specific config entry for a given user",
    },
    "/user/:user_id/contact_groups": {
        "get": "List all contact groups of a user",
        "post": "Create a new contact group for a user.",
    },
    "/user/:user_id/contacts": {"get": "Lists all contacts of a user"},
    "/user/:user_id/contacts/:friend_id": {
        "delete": "Deletes a contact",
        "put": "Adds/Updates a contact to user's list of contacts",
    },
    "/user/:user_id/courses": {
        "get": "Lists all courses of a user including the semesters in which"
    },
    "/user/:user_id/courses/:course_id": {
        "patch": "Patches the course member data of a user and course. Pass data to be"
    },
    "/user/:user_id/events": {
        "get": "returns all upcoming events within the next two weeks for a given user"
    },
    "/user/:user_id/events.ics": {"get": "returns an iCAL Export of all events for a given user"},
    "/user/:user_id/institutes": {"get": "returns institutes for a given user"},
    "/user/:user_id/news": {"get": "News eines Nutzers auslesen", "post": "News anlegen"},
    "/user/:user_id/schedule": {"get": "returns schedule for a given user and semester"},
    "/user/:user_id/schedule/:semester_id": {
        "get": "returns schedule for a given user and semester"
    },
    "/user/:user_id/top_folder": {"get": "Get the root file folder of a user's file area."},
    "/users": {"get": "Searches for users by a given keyword."},
}

TERMIN_TYP: dict[str, dict[str, Any]] = {
    "1": {"name": "Sitzung", "sitzung": 1},
    "2": {"name": "Vorbesprechung", "sitzung": 0},
    "3": {"name": "Klausur", "sitzung": 0},
    "4": {"name": "Exkursion", "sitzung": 0},
    "5": {"name": "anderer Termin", "sitzung": 0},
    "6": {"name": "Sondersitzung", "sitzung": 0},
    "7": {"name": "Vorlesung", "sitzung": 1},
}
PERS_TERMIN_KAT: dict[str, dict[str, str]] = {
    "1": {
        "name": "Sonstiges",
        "border_color": "#682C8B",
        "bgcolor": "#682C8B",
        "fgcolor": "#ffffff",
    },
    "2": {"name": "Sitzung", "border_color": "#B02E7C", "bgcolor": "#B02E7C", "fgcolor": "#ffffff"},
}
TITLES: dict[str, list[str]] = {
    "dozent": ["Lehrende", "Lehrende"],
    "deputy": ["Vertretung", "Vertretungen"],
    "tutor": ["Tutor/-in", "Tutor/-innen"],
    "autor": ["Studierende", "Studierende"],
    "user": ["Leser/-in", "Leser/-innen"],
    "accepted": ["Vorläufig akzeptierte Person", "Vorläufig akzeptierte Personen"],
}
# The modules each SEM_CLASS of a 5.5.8 offers (its keys are module names, so they are part of
# the answer's shape).
_TEACHING_MODULES = (
    "CoreOverview", "CoreAdmin", "CoreDocuments", "CoursewareModule", "Blubber", "CoreForum",
    "CoreWiki", "CoreParticipants", "CoreSchedule", "CoreScm", "ConsultationModule",
    "FeedbackModule", "GradebookModule", "LtiToolModule",
)  # fmt: skip
CLASS_MODULES: dict[str, tuple[str, ...]] = {
    "1": (*_TEACHING_MODULES, "CoreCalendar", "CoreElearningInterface", "IliasInterfaceModule"),
    "2": (*_TEACHING_MODULES, "CoreCalendar", "CoreElearningInterface"),
    "3": _TEACHING_MODULES,
    "99": (
        "CoreOverview", "CoreDocuments", "CoursewareModule", "Blubber", "CoreForum", "CoreWiki",
        "CoreScm", "CoreCalendar", "CoreStudygroupAdmin", "CoreStudygroupParticipants",
    ),
}  # fmt: skip
CLASS_TITLE_FIELDS = (
    "title_dozent", "title_dozent_plural", "title_tutor", "title_tutor_plural", "title_autor",
    "title_autor_plural",
)  # fmt: skip
CLASS_TITLES: dict[str, tuple[str | None, ...]] = {  # null: the default status names
    "2": ("LeiterIn", "LeiterInnen", "Mitglied", "Mitglieder", None, None),
    "99": (
        "GruppengründerIn", "GruppengründerInnen", "ModeratorIn", "ModeratorInnen", "Mitglied",
        "Mitglieder",
    ),
}  # fmt: skip


def sem_class_object(key: str, name: str) -> dict[str, Any]:
    """A SEM_CLASS entry with the fields a Stud.IP 5.5 sends (strings, some null)."""
    studygroup = key in STUDYGROUP_CLASSES
    return {
        "id": key,
        "name": name,
        **dict.fromkeys(
            ("only_inst_user", "default_read_level", "default_write_level", "bereiche"), "0"
        ),
        "module": "0",
        "show_browse": "0" if studygroup else "1",
        "write_access_nobody": "0",
        "topic_create_autor": "1" if studygroup else "0",
        "visible": "0" if studygroup else "1",
        "course_creation_forbidden": "0",
        "description": "",
        "create_description": "",
        "studygroup_mode": "1" if studygroup else "0",
        "admission_prelim_default": "0",
        "admission_type_default": "0",
        **dict(zip(CLASS_TITLE_FIELDS, CLASS_TITLES.get(key, (None,) * 6), strict=True)),
        "show_raumzeit": "0" if studygroup else "1",
        "is_group": "0",
        "unlimited_forbidden": "0",
        "mkdate": "1366882120",
        "chdate": "1641229573",
        "modules": {
            module: {"activated": "1", "sticky": "1" if module == "CoreOverview" else "0"}
            for module in CLASS_MODULES[key]
        },
    }


PHP_ERROR_PAGE = """<!DOCTYPE html>
<html lang="de">
<head>
<meta charset="utf-8">
<title>Stud.IP - Fehler</title>
<link rel="stylesheet" href="/assets/stylesheets/studip-base.css">
</head>
<body id="error">
<div id="layout_wrapper">
<div class="messagebox messagebox_exception">
<div class="messagebox_buttons"><a class="close" href="#" title="Nachrichtenbox schlie&szlig;en">
<span>Nachrichtenbox schlie&szlig;en</span></a></div>
<h1>Fehler! Es ist ein Fehler aufgetreten.</h1>
<div class="messagebox_details">
<p>Error: Call to a member function isReadable() on null</p>
<pre>#0 /var/www/studip/lib/classes/restapi/Router.php(409): RESTAPI\\Routes\\Course->getCourse()
#1 /var/www/studip/lib/classes/restapi/Router.php(332): RESTAPI\\Router->execute()
#2 /var/www/studip/public/api.php(72): RESTAPI\\Router->dispatch()
#3 {main}</pre>
</div>
</div>
<p>Zur&uuml;ck zur <a href="/index.php">Startseite</a></p>
</div>
</body>
</html>
"""

PROXY_429_PAGE = (
    "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# --------------------------------------------------------------------------------------------
# Encoding


def php_map(mapping: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """An associative array as PHP's json_encode writes it: an empty one becomes ``[]``."""
    return mapping or []


def php_json(value: Any) -> str:
    """JSON text like PHP's ``json_encode`` with default flags (``\\/``, ``\\uXXXX``).

    Payloads pass their possibly empty objects through :func:`php_map` when they are built.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(status, php_json(payload).encode("ascii"), JSON_TYPE, dict(headers or {}))


def json_error(status: int, message: Any) -> HttpError:
    """A Stud.IP error: the body is the JSON encoding of ``message`` (usually a bare string)."""
    return HttpError(status, php_json(message), content_type=JSON_TYPE)


def html_error(status: int, text: str, headers: dict[str, str] | None = None) -> HttpError:
    return HttpError(status, text, content_type=HTML_TYPE, headers=headers)


# --------------------------------------------------------------------------------------------
# Paging


@dataclass(frozen=True, slots=True)
class Page:
    offset: int
    limit: int

    @property
    def reported_offset(self) -> int:
        return self.offset - self.offset % self.limit

    def window(self, items: list[Any]) -> list[Any]:
        return items[self.offset : self.offset + self.limit]


def _int_param(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise json_error(400, f"Parameter {name} must be a {kind} integer")
    return int(raw)


def parse_page(request: Request, default_limit: int = DEFAULT_LIMIT) -> Page:
    offset = _int_param(request, "offset", 0, 0)
    limit = _int_param(request, "limit", max(1, default_limit), 1)
    return Page(offset, limit)


def pagination(
    page: Page, total: int, path: str, query: dict[str, str] | None = None
) -> dict[str, Any]:
    """Stud.IP's ``pagination`` object; ``links`` only when there is more than one page."""
    result: dict[str, Any] = {"total": total, "offset": page.reported_offset, "limit": page.limit}
    if total > page.limit:
        last = (total - 1) // page.limit * page.limit
        current = page.reported_offset

        def link(offset: int) -> str:
            params = {**(query or {}), "offset": str(offset), "limit": str(page.limit)}
            return f"{API_PREFIX}{path}?{urlencode(params)}"

        result["links"] = {
            "first": link(0),
            "previous": link(max(0, current - page.limit)),
            "next": link(min(last, current + page.limit)),
            "last": link(last),
        }
    return result


# --------------------------------------------------------------------------------------------
# Course membership index (cached: the crawl reads big courses thousands of times)


@dataclass(slots=True)
class CourseIndex:
    key: tuple[int, int]
    counts: dict[str, int]
    lecturers: list[str]  # dozent user ids by username
    members: list[tuple[str, str]] | None = None  # (user_id, status) in listing order, lazily


def build_course_index(world: World, course_id: str, key: tuple[int, int]) -> CourseIndex:
    memberships = world.memberships.get(course_id, {})
    users = world.studip_users
    counts = Counter(memberships.values())
    lecturers = sorted(
        (user_id for user_id, status in memberships.items() if status == "dozent"),
        key=lambda user_id: users[user_id].username,
    )
    return CourseIndex(key, {s: counts.get(s, 0) for s in MEMBER_STATUSES}, lecturers)


def ordered_members(world: World, course_id: str) -> list[tuple[str, str]]:
    """A course's (user_id, status) pairs: dozent, tutor, autor, user, then by username."""
    users = world.studip_users
    return sorted(
        world.memberships.get(course_id, {}).items(),
        key=lambda item: (STATUS_RANK.get(item[1], 9), users[item[0]].username),
    )


# --------------------------------------------------------------------------------------------
# The server


class StudipServer(SandboxServer):
    """Stud.IP's REST API over the world's Stud.IP users, courses and semesters."""

    name = "studip"

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        username: str = API_ACCOUNT_USERNAME,
        password: str = "sandbox-studip-password",
        consumer_key: str = "hubsync-consumer",
        consumer_secret: str = "sandbox-consumer-secret",
        token: str = "hubsync-token",
        token_secret: str = "sandbox-token-secret",
        api_account_is_root: bool = True,
        disabled_routes: Iterable[str] = (),
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.world = world
        self.username = username
        self.password = password
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.token = token
        self.token_secret = token_secret
        self.api_account_is_root = api_account_is_root
        self.jsonapi_refusal: int | None = None  # 401/403: the JSON:API refuses the account
        self._routes_lock = threading.Lock()
        self._disabled = self._checked_templates(disabled_routes)
        self._course_cache: dict[str, CourseIndex] = {}
        self._oauth_client = OAuthClient(
            consumer_key,
            client_secret=consumer_secret,
            resource_owner_key=token,
            resource_owner_secret=token_secret,
        )
        self._add_api_routes()
        self.jsonapi = JsonApi(self)
        self.router.add("GET", "/_sandbox/routes", self._get_routes)
        self.router.add("POST", "/_sandbox/routes", self._set_routes)

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    # -- routes ------------------------------------------------------------------------------

    def _add_api_routes(self) -> None:
        handlers: dict[str, Callable[[Request], Response]] = {
            "/discovery": self._discovery,
            "/user": self._me,
            "/user/:user_id": self._user,
            "/user/:user_id/courses": self._user_courses,
            "/user/:user_id/institutes": self._user_institutes,
            "/users": self._search_users,
            "/course/:course_id": self._course,
            "/course/:course_id/members": self._course_members,
            "/semesters": self._semesters,
            "/semester/:semester_id": self._semester,
            "/studip/settings": self._settings,
        }
        for template, handler in handlers.items():
            self.router.add("GET", API_PREFIX + template, handler)

    @property
    def disabled_routes(self) -> set[str]:
        with self._routes_lock:
            return set(self._disabled)

    def set_disabled_routes(self, templates: Iterable[str]) -> None:
        checked = self._checked_templates(templates)
        with self._routes_lock:
            self._disabled = checked

    @staticmethod
    def _checked_templates(templates: Iterable[str]) -> set[str]:
        if isinstance(templates, str):
            raise ValueError("disabled routes must be a list of route templates")
        checked = set(templates)
        unknown = sorted(t for t in checked if t not in ROUTE_CATALOGUE)
        if unknown:
            raise ValueError(f"unknown route templates: {', '.join(unknown)}")
        return checked

    def _get_routes(self, request: Request) -> Response:
        return Response.json(
            {"disabled": sorted(self.disabled_routes), "routes": sorted(ROUTE_CATALOGUE)}
        )

    def _set_routes(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("disabled", []), list):
            raise HttpError(400, {"error": 'expected a JSON object {"disabled": [templates]}'})
        try:
            self.set_disabled_routes(body.get("disabled", []))
        except (TypeError, ValueError) as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        return self._get_routes(request)

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[Response, str]:
        if request.path.startswith("/_sandbox"):
            return super().dispatch(request)
        try:
            if request.path.startswith(JSONAPI_PREFIX + "/") or request.path == JSONAPI_PREFIX:
                response, pattern = self.jsonapi.dispatch(request)
            else:
                response, pattern = self._dispatch_api(request)
        except HttpError as exc:
            response, pattern = exc.response, "(error)"
        response.headers.setdefault("Set-Cookie", self._session_cookie(request))
        return response, pattern

    def _dispatch_api(self, request: Request) -> tuple[Response, str]:
        path = self._route_path(request.path)
        authenticated = self._detect_consumer(request)
        found = self.router.match("GET", API_PREFIX + path)
        if found is None:
            raise self._not_found_error()
        handler, params, pattern = found
        if self._effective_method(request) not in ("GET", "HEAD"):
            raise html_error(405, "HTTP/1.1 405 Method Not Allowed")
        template = pattern[len(API_PREFIX) :]
        if not authenticated and template not in ALLOW_NOBODY:
            raise self._unauthorized()
        if template in self.disabled_routes:
            raise HttpError(403, "Route not activated", content_type="text/plain;charset=utf-8")
        api_request = replace(request, path=API_PREFIX + path, params=params)
        with self.world.lock:
            return handler(api_request), pattern

    @staticmethod
    def _route_path(raw_path: str) -> str:
        """The route path below ``/api.php`` without version prefix and ``.json`` suffix."""
        path = unquote(raw_path)
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            raise StudipServer._not_found_error()
        path = path[len(API_PREFIX) :]
        version = re.match(r"/v(\d+)(?=/|$)", path, re.IGNORECASE)
        if version:
            if int(version.group(1)) != 2:
                raise json_error(400, "Version not supported")
            path = path[version.end() :]
        if path.endswith(".json"):
            path = path[: -len(".json")]
        if path.strip("/") == "":
            raise StudipServer._not_found_error()
        return path

    @staticmethod
    def _effective_method(request: Request) -> str:
        override = request.header("x-http-method-override").strip().upper()
        return override or request.method

    @staticmethod
    def _not_found_error() -> HttpError:
        return html_error(404, "HTTP/1.1 404 Not Found")

    def not_found(self, request: Request) -> Response:
        return self._not_found_error().response

    def _unauthorized(self) -> HttpError:
        return html_error(
            401,
            "HTTP/1.1 401 Unauthorized (no consumer)",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
        )

    @staticmethod
    def _session_cookie(request: Request) -> str:
        found = re.search(
            rf"(?:^|;\s*){SESSION_COOKIE}=([0-9a-zA-Z,-]{{16,128}})", request.header("cookie")
        )
        session = found.group(1) if found else secrets.token_hex(16)
        return f"{SESSION_COOKIE}={session}; path=/; HttpOnly; SameSite=Lax"

    def fault_response(self, kind: str, config: FaultConfig) -> Response:
        if kind == "rate_limit":
            return Response.text(
                PROXY_429_PAGE,
                429,
                content_type="text/html",
                headers={"Retry-After": str(config.retry_after)},
            )
        cookie = f"{SESSION_COOKIE}={secrets.token_hex(16)}; path=/; HttpOnly; SameSite=Lax"
        return Response.text(
            PHP_ERROR_PAGE, 500, content_type=HTML_TYPE, headers={"Set-Cookie": cookie}
        )

    # -- authentication ------------------------------------------------------------------------

    def _detect_consumer(self, request: Request) -> bool:
        """Whether the request authenticates as the API account (raises 500 on bad OAuth)."""
        authorization = request.header("authorization").strip()
        scheme = authorization[:6].lower()
        if scheme == "basic ":
            return self._basic_ok(authorization[6:].strip())
        if (
            scheme == "oauth "
            or "oauth_consumer_key" in request.query
            or ("oauth_consumer_key" in self._form_params(request))
        ):
            return self._oauth_ok(request)
        return False

    def detect_basic(self, request: Request) -> bool:
        """Whether the request carries the API account's Basic credentials (the JSON:API)."""
        authorization = request.header("authorization").strip()
        return authorization[:6].lower() == "basic " and self._basic_ok(authorization[6:].strip())

    def _basic_ok(self, encoded: str) -> bool:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return secrets.compare_digest(
            user.encode(), self.username.encode()
        ) and secrets.compare_digest(password.encode(), self.password.encode())

    @staticmethod
    def _form_params(request: Request) -> dict[str, str]:
        content_type = request.header("content-type").lower()
        if request.body and content_type.startswith("application/x-www-form-urlencoded"):
            try:
                return request.form()
            except HttpError:
                return {}
        return {}

    def _oauth_ok(self, request: Request) -> bool:
        collected = self._oauth_parameters(request)
        params = [(key, value) for key, value in collected if key != "oauth_signature"]
        oauth = dict(collected)
        if oauth.get("oauth_consumer_key") != self.consumer_key:
            return False
        if oauth.get("oauth_token") != self.token:
            raise _oauth_failure(
                f'The consumer_key "{self.consumer_key}" token "{oauth.get("oauth_token", "")}" '
                "combination does not exist or is not enabled."
            )
        method = oauth.get("oauth_signature_method", "")
        if method != "HMAC-SHA1":
            raise _oauth_failure(f'Unsupported signature method "{method}"')
        try:
            base_string = self._signature_base_string(request, params)
        except ValueError:
            raise _oauth_failure("Malformed request URI") from None
        expected = oauth_signature.sign_hmac_sha1_with_client(base_string, self._oauth_client)
        if not safe_string_equals(expected, oauth.get("oauth_signature", "")):
            raise _oauth_failure(
                f'Verification of signature failed (signature base string was "{base_string}").'
            )
        return True

    def _oauth_parameters(self, request: Request) -> list[tuple[str, str]]:
        """Query, ``Authorization: OAuth`` and form parameters, ``oauth_*`` values unescaped."""
        authorization = request.header("authorization").strip()
        headers = {"Authorization": authorization} if authorization[:6].lower() == "oauth " else {}
        try:
            return list(
                oauth_signature.collect_parameters(
                    uri_query=request.raw_query,
                    body=list(self._form_params(request).items()),
                    headers=headers,
                    exclude_oauth_signature=False,
                )
            )
        except ValueError:
            raise _oauth_failure("Malformed OAuth parameters") from None

    @staticmethod
    def _signature_base_string(request: Request, params: list[tuple[str, str]]) -> str:
        host = request.header("host") or "localhost"
        uri = oauth_signature.base_string_uri(f"http://{host}{request.path}")
        normalized = oauth_signature.normalize_parameters(params)
        return oauth_signature.signature_base_string(request.method, uri, normalized)

    # -- views of the world (callers hold world.lock) ----------------------------------------

    def _avatars(self) -> dict[str, str]:
        base = f"{self.origin}/assets/images/avatars/user/nobody"
        return {f"avatar_{size}": f"{base}_{size}.webp" for size in AVATAR_SIZES}

    def _given_family(self, user: StudipUser) -> tuple[str, str]:
        if user.pid is None:
            return API_ACCOUNT_NAME
        person = self.world.persons[user.pid]
        return person.given, person.family

    def _name(self, user: StudipUser) -> dict[str, str]:
        given, family = self._given_family(user)
        return {
            "username": user.username,
            "formatted": f"{given} {family}".strip(),
            "family": family,
            "given": given,
            "prefix": "",
            "suffix": "",
        }

    def name_of(self, user: StudipUser) -> dict[str, str]:
        return self._name(user)

    def perms_of(self, user: StudipUser) -> str:
        return self._perms(user)

    def _perms(self, user: StudipUser) -> str:
        if user.user_id == self.world.api_account.user_id and not self.api_account_is_root:
            return "autor"
        return user.perms

    def user_object(self, user: StudipUser) -> dict[str, Any]:
        return {
            "user_id": user.user_id,
            "username": user.username,
            "name": self._name(user),
            "perms": self._perms(user),
            "email": user.email,
            **self._avatars(),
            "phone": "",
            "homepage": "",
            "privadr": "",
            "datafields": [
                {
                    "id": hashlib.md5(name.encode()).hexdigest(),
                    "name": name,
                    "type": "textline",
                    "value": value,
                }
                for name, value in user.datafields.items()
            ],
        }

    def _mini_user(self, user_id: str) -> dict[str, Any]:
        user = self.world.studip_users[user_id]
        return {
            "id": user_id,
            "href": f"{API_PREFIX}/user/{user_id}",
            "name": self._name(user),
            **self._avatars(),
        }

    def _course_index(self, course_id: str, *, with_members: bool = False) -> CourseIndex:
        """Counts, lecturers (and ordered members) of a course; big courses cached per step."""
        size = len(self.world.memberships.get(course_id, {}))
        key = (self.world.step_count, size)
        cached = self._course_cache.get(course_id) if size >= CACHE_MIN_MEMBERS else None
        if cached is None or cached.key != key:
            cached = build_course_index(self.world, course_id, key)
            if size >= CACHE_MIN_MEMBERS:
                self._course_cache[course_id] = cached
        if with_members and cached.members is None:
            cached.members = ordered_members(self.world, course_id)
        return cached

    def invalidate_cache(self) -> None:
        """Forget cached course indexes (after changing a big course's statuses in place)."""
        with self.world.lock:
            self._course_cache.clear()

    def course_object(self, course: StudipCourse) -> dict[str, Any]:
        index = self._course_index(course.course_id)
        studygroup = course.sem_type == STUDYGROUP_TYPE
        member = self.world.api_account.user_id in self.world.memberships.get(course.course_id, {})
        base = f"{API_PREFIX}/course/{course.course_id}"
        members: dict[str, Any] = {}
        for status in ("user", "autor", "tutor", "dozent"):
            members[status] = f"{base}/members?status={status}"
            members[f"{status}_count"] = index.counts[status]
        return {
            "course_id": course.course_id,
            "number": course.number,
            "title": course.title,
            "subtitle": course.subtitle,
            "type": str(course.sem_type),
            "description": "",
            "location": "",
            "lecturers": php_map(
                {f"{API_PREFIX}/user/{uid}": self._mini_user(uid) for uid in index.lecturers}
            ),
            "members": members,
            "start_semester": _semester_path(course.start_semester),
            "end_semester": _semester_path(course.end_semester),
            "modules": {
                **({} if studygroup else {"forum": f"{base}/forum_categories"}),
                "documents": f"{base}/top_folder",
                "wiki": f"{base}/wiki",
            },
            # the requesting account's colour group in the course: null unless it is a member
            "group": int(course.group) if member else None,
        }

    @staticmethod
    def semester_object(semester: StudipSemester) -> dict[str, Any]:
        return {
            "id": semester.semester_id,
            "title": semester.title,
            "token": "",
            "begin": semester.begin,
            "end": semester.end,
            "seminars_begin": semester.seminars_begin,
            "seminars_end": semester.seminars_end,
            "visible": 1,
        }

    def _require_user(self, user_id: str) -> StudipUser:
        user = self.world.studip_users.get(user_id)
        if user is None:
            raise json_error(404, f"User {user_id} not found")
        return user

    def _require_course(self, course_id: str) -> StudipCourse:
        course = self.world.studip_courses.get(course_id)
        if course is None:
            raise json_error(404, "Course not found")
        return course

    def _course_sort_key(self, course_id: str) -> tuple[float, str, str]:
        course = self.world.studip_courses[course_id]
        semester = self.world.studip_semesters.get(course.start_semester or "")
        return (semester.begin if semester else float("inf"), course.number, course_id)

    # -- handlers ------------------------------------------------------------------------------

    def _discovery(self, request: Request) -> Response:
        disabled = self.disabled_routes
        return json_response(
            php_map(
                {
                    template: methods
                    for template, methods in ROUTE_CATALOGUE.items()
                    if template not in disabled
                }
            )
        )

    def _me(self, request: Request) -> Response:
        body = php_json(self.user_object(self.world.api_account)).encode("ascii")
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        headers = {"ETag": etag}
        if _etag_matches(request.header("if-none-match"), etag):
            return Response(304, b"", JSON_TYPE, headers)
        return Response(200, body, JSON_TYPE, headers)

    def _user(self, request: Request) -> Response:
        return json_response(self.user_object(self._require_user(request.params["user_id"])))

    def _user_courses(self, request: Request) -> Response:
        user_id = request.params["user_id"]
        if not self.api_account_is_root and user_id != self.world.api_account.user_id:
            raise json_error(401, "")
        self._require_user(user_id)
        query: dict[str, str] = {}
        semester_id = request.query.get("semester")
        if semester_id is not None:
            if semester_id not in self.world.studip_semesters:
                raise json_error(400, "Semester not found.")
            query["semester"] = semester_id
        page = parse_page(request)
        course_ids = [
            course_id
            for course_id in self.world.user_courses.get(user_id, ())
            if semester_id is None
            or self.world.course_runs_in(self.world.studip_courses[course_id], semester_id)
        ]
        course_ids.sort(key=self._course_sort_key)
        collection = {
            f"{API_PREFIX}/course/{cid}": self.course_object(self.world.studip_courses[cid])
            for cid in page.window(course_ids)
        }
        return json_response(
            {
                "collection": php_map(collection),
                "pagination": pagination(page, len(course_ids), f"/user/{user_id}/courses", query),
            }
        )

    def _user_institutes(self, request: Request) -> Response:
        user = self._require_user(request.params["user_id"])
        page = parse_page(request)
        staff = user.perms in STAFF_PERMS
        entries = [
            self._institute_object(
                self.world.studip_institutes[inst_id], user.perms if staff else "user"
            )
            for inst_id in user.institute_ids
            if inst_id in self.world.studip_institutes
        ]
        collection = {"work": entries if staff else [], "study": [] if staff else entries}
        return json_response(
            {
                "collection": php_map(collection),
                "pagination": pagination(page, len(entries), f"/user/{user.user_id}/institutes"),
            }
        )

    @staticmethod
    def _institute_object(institute: StudipInstitute, perms: str) -> dict[str, Any]:
        return {
            "institute_id": institute.institute_id,
            "name": institute.name,
            "perms": perms,
            "consultation": "",
            "room": "",
            "phone": "",
            "fax": "",
            "street": "",
            "city": institute.city,
            "faculty_name": institute.faculty_name,
            "faculty_street": "",
            "faculty_city": institute.city,
        }

    def _search_users(self, request: Request) -> Response:
        needle = request.query.get("q", "").strip().lower()
        if not needle:
            raise json_error(400, "Missing search paramter ?q=")
        page = parse_page(request)
        found = sorted(
            (u for u in self.world.studip_users.values() if self._matches(u, needle)),
            key=lambda u: u.username,
        )
        return json_response(
            {
                "collection": [self._mini_user(user.user_id) for user in page.window(found)],
                "pagination": pagination(page, len(found), "/users", {"q": request.query["q"]}),
            }
        )

    def _matches(self, user: StudipUser, needle: str) -> bool:
        # the fields of _name without building it: a search looks at every user (0.09 s for
        # 86,000 users that way, half of it building the names)
        given, family = self._given_family(user)
        return (
            needle in user.username.lower()
            or needle in given.lower()
            or needle in family.lower()
            or needle in f"{given} {family}".strip().lower()
        )

    def _course(self, request: Request) -> Response:
        course = self._require_course(request.params["course_id"])
        account = self.world.api_account.user_id
        if (
            not self.api_account_is_root
            and course.sem_type == STUDYGROUP_TYPE
            and account not in self.world.memberships.get(course.course_id, {})
        ):
            raise json_error(401, "")
        return json_response(self.course_object(course))

    def _course_members(self, request: Request) -> Response:
        course = self._require_course(request.params["course_id"])
        status = request.query.get("status")
        if status is not None and status not in MEMBER_STATUSES:
            raise json_error(400, f"Invalid status {status}")
        page = parse_page(request)
        members = self._course_index(course.course_id, with_members=True).members or []
        if status is not None:
            members = [member for member in members if member[1] == status]
        collection = {
            f"{API_PREFIX}/user/{uid}": {"member": self._mini_user(uid), "status": member_status}
            for uid, member_status in page.window(members)
        }
        query = {"status": status} if status is not None else {}
        return json_response(
            {
                "collection": php_map(collection),
                "pagination": pagination(
                    page, len(members), f"/course/{course.course_id}/members", query
                ),
            }
        )

    def _semesters(self, request: Request) -> Response:
        semesters = self.world.semesters_in_order
        page = parse_page(request, default_limit=len(semesters))
        collection = {
            f"{API_PREFIX}/semester/{s.semester_id}": self.semester_object(s)
            for s in page.window(semesters)
        }
        return json_response(
            {
                "collection": php_map(collection),
                "pagination": pagination(page, len(semesters), "/semesters"),
            }
        )

    def _semester(self, request: Request) -> Response:
        semester = self.world.studip_semesters.get(request.params["semester_id"])
        if semester is None:
            raise json_error(404, "Semester not found")
        return json_response(self.semester_object(semester))

    def _settings(self, request: Request) -> Response:
        return json_response(
            {
                "ALLOW_CHANGE_USERNAME": False,
                "ALLOW_CHANGE_EMAIL": True,
                "ALLOW_CHANGE_NAME": False,
                "ALLOW_CHANGE_TITLE": False,
                "INST_TYPE": {key: {"name": name} for key, name in INST_TYPES.items()},
                "SEM_TYPE": {
                    key: {"name": name, "class": sem_class}
                    for key, (name, sem_class) in SEM_TYPES.items()
                },
                "SEM_CLASS": {
                    key: sem_class_object(key, name) for key, name in SEM_CLASSES.items()
                },
                "TERMIN_TYP": TERMIN_TYP,
                "PERS_TERMIN_KAT": PERS_TERMIN_KAT,
                "SUPPORT_EMAIL": "studip-support@tu-sandbox.at",
                "TITLES": TITLES,
                "UNI_NAME_CLEAN": "TU Sandbox",
            }
        )


def _semester_path(semester_id: str | None) -> str | None:
    return f"{API_PREFIX}/semester/{semester_id}" if semester_id else None


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    candidates = [item.strip() for item in header.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


def _oauth_failure(message: str) -> HttpError:
    """How Stud.IP reports an OAuth verification error: a 500 with a JSON object."""
    return json_error(500, {"status": 500, "message": message})
