"""Request bodies, kept in memory: a size-capped reader and a multipart/form-data parser.

Starlette's `request.form()` spools every upload above 1 MB to a temporary file on disk; uploaded
skin photographs must never touch the disk, so the service's Gate reads the raw body (`receive_body`,
capped at `max_body_bytes`, refused from `Content-Length` before reading where the client sends one)
and the endpoints parse it with python-multipart's streaming parser into bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.types import Receive

from dermagan.service.errors import Cancelled, InvalidParameter, PayloadTooLarge, UnsupportedMediaType

MAX_PARTS = 8

# python-multipart logs each parse error as a WARNING before raising it: one line per malformed request, without
# the request's ID, quoting bytes of the body. The service answers each with a 422 that names the error (and an
# access line), so its lines only repeated them -- 2,300 a second from one client sending a wrong boundary.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def check_content_length(content_length: str | None, limit: int) -> None:
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise InvalidParameter(f"Content-Length {content_length!r} is not a number") from None
    if size > limit:
        raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit} bytes (DERMAGAN_MAX_BODY_BYTES)")


async def receive_body(receive: Receive, limit: int, progress: Callable[[int], None] | None = None) -> bytes:
    """The whole body from an ASGI `receive`, refusing (413) as soon as it passes `limit` bytes; Cancelled
    (499) when the client disconnects first. `progress(bytes so far)` is called after each piece that arrives."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Cancelled(f"the client disconnected after {size} bytes of the upload")
        chunk = message.get("body", b"")
        size += len(chunk)
        if progress is not None:
            progress(size)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes (DERMAGAN_MAX_BODY_BYTES)")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_multipart(body: bytes, content_type: str | None) -> dict[str, Part]:
    """multipart/form-data -> {field name: Part}, all in memory. Errors are 415 / 422."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        got = content_type or "no Content-Type"
        raise UnsupportedMediaType(f"expected a multipart/form-data body with an 'image' part, got {got}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidParameter("multipart/form-data body without a boundary parameter")
    parts: dict[str, Part] = {}
    headers: dict[bytes, bytes] = {}
    field_name: list[bytes] = []
    field_value: list[bytes] = []
    data: list[bytes] = []

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(b: bytes, start: int, end: int) -> None:
        field_name.append(b[start:end])

    def on_header_value(b: bytes, start: int, end: int) -> None:
        field_value.append(b[start:end])

    def on_header_end() -> None:
        headers[b"".join(field_name).lower()] = b"".join(field_value)
        field_name.clear()
        field_value.clear()

    def on_part_data(b: bytes, start: int, end: int) -> None:
        data.append(b[start:end])

    def on_part_end() -> None:
        disposition, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in opts:
            raise InvalidParameter("a multipart part lacks 'Content-Disposition: form-data; name=...'")
        name = opts[b"name"].decode("utf-8", "replace")
        if name in parts:
            raise InvalidParameter(f"multipart field {name!r} appears more than once")
        if len(parts) >= MAX_PARTS:
            raise InvalidParameter(f"more than {MAX_PARTS} multipart parts")
        filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        parts[name] = Part(name, filename, headers.get(b"content-type", b"").decode("latin-1"), b"".join(data))
        headers.clear()  # what is left at the end is the headers of a part cut off

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except InvalidParameter:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise InvalidParameter(f"malformed multipart/form-data body: {e}") from e
    if body and parser.state != MultipartState.END:  # python-multipart's finalize() does not check it
        raise InvalidParameter(_unfinished(boundary, headers, data))
    return parts


def _unfinished(boundary: bytes, headers: dict[bytes, bytes], data: list[bytes]) -> str:
    """The 422 of a body that ends before its closing boundary: cut off on the way (a client's or a proxy's
    fault), naming the part under way where its headers came."""
    closing = "--" + boundary.decode("latin-1") + "--"
    name = parse_options_header(headers.get(b"content-disposition", b""))[1].get(b"name")
    cut = "" if name is None else (f"; its part {name.decode('utf-8', 'replace')!r} is cut off after "
                                   f"{sum(len(d) for d in data)} bytes")
    return f"the multipart body ends before its closing boundary {closing!r} (a truncated upload?){cut}"


def form_files(parts: dict[str, Part], required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, bytes]:
    """The named parts' bytes; an empty optional part (an unfilled form field) counts as absent."""
    unknown = sorted(set(parts) - set(required) - set(optional))
    if unknown:
        raise InvalidParameter(f"unexpected multipart fields {unknown}; this endpoint takes "
                               f"{list(required)} and optionally {list(optional)}")
    out: dict[str, bytes] = {}
    for name in required:
        if name not in parts:
            raise InvalidParameter(f"missing the multipart file field {name!r}")
        out[name] = parts[name].data
    for name in optional:
        if name in parts and parts[name].data:
            out[name] = parts[name].data
    return out
