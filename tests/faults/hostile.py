"""Response filters for the sandbox that turn an upstream hostile or broken.

Each function returns (or is) a ``ResponseFilter``: redirects to another host, paging that
never ends, bodies that are gzip bombs or JSON nested too deeply to parse. Paths are matched
case-insensitively as substrings of the request path.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

from sandbox.http import Request, Response

ResponseFilter = Callable[[Request, Response], Response]
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def gzip_of_zeros(megabytes: int) -> bytes:
    """A gzip body decoding to ``megabytes`` MB of zeros, about 1 KB per MB: one member per MB
    (gzip allows members back to back), so it is built in milliseconds."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: with a gzip header
    return (packer.compress(bytes(1024 * 1024)) + packer.flush()) * megabytes


def redirect(path: str, to: str) -> ResponseFilter:
    """Answer requests for ``path`` with a 307 to the same path on ``to`` (an origin)."""

    def rewrite(request: Request, response: Response) -> Response:
        if path.lower() not in request.path.lower():
            return response
        return Response(307, b"", headers={"Location": f"{to}{request.path}"})

    return rewrite


def repeat_first_page(path: str) -> ResponseFilter:
    """Answer every request for ``path`` with its first answer: a server ignoring paging."""
    first: list[Response] = []

    def rewrite(request: Request, response: Response) -> Response:
        if path.lower() not in request.path.lower() or response.status != 200:
            return response
        first[:] = first or [response]
        return first[0]

    return rewrite


def growing_studip_total(path: str) -> ResponseFilter:
    """Stud.IP's ``pagination.total`` always a page beyond the offset asked for."""

    def rewrite(request: Request, response: Response) -> Response:
        if path.lower() not in request.path.lower() or response.status != 200:
            return response
        body = json.loads(response.body)
        offset, limit = int(request.query.get("offset", 0)), int(request.query.get("limit", 20))
        body["pagination"]["total"] = offset + 2 * limit
        return Response.json(body)

    return rewrite


def growing_jsonapi_total(path: str) -> ResponseFilter:
    """The JSON:API's ``meta.page.total`` a page larger at every request: users being created
    faster than the listing pages through them."""
    requests = 0

    def rewrite(request: Request, response: Response) -> Response:
        nonlocal requests
        if path.lower() not in request.path.lower() or response.status != 200:
            return response
        body = json.loads(response.body)
        requests += 1
        body["meta"]["page"]["total"] += requests * int(request.query.get("page[limit]", 20))
        return Response.json(body, content_type=response.content_type, headers=response.headers)

    return rewrite


def growing_lms_total(path: str) -> ResponseFilter:
    """The LMS's ``TotalItems`` always a page beyond the next index."""

    def rewrite(request: Request, response: Response) -> Response:
        if path.lower() not in request.path.lower() or response.status != 200:
            return response
        body = json.loads(response.body)
        paging = json.loads(request.body)
        body["FirstIndexOfNextPage"] = paging["StartIndex"] + paging["PageSize"]
        body["TotalItems"] = body["FirstIndexOfNextPage"] + paging["PageSize"]
        return Response.json(body)

    return rewrite


def body(path: str, content: bytes, headers: dict[str, str] | None = None) -> ResponseFilter:
    """Answer requests for ``path`` with status 200 and ``content`` as a JSON body."""

    def rewrite(request: Request, response: Response) -> Response:
        if path.lower() not in request.path.lower():
            return response
        return Response(200, content, "application/json; charset=utf-8", dict(headers or {}))

    return rewrite


def both(*filters: ResponseFilter) -> ResponseFilter:
    """The filters applied in order."""

    def rewrite(request: Request, response: Response) -> Response:
        for each in filters:
            response = each(request, response)
        return response

    return rewrite
