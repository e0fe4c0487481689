"""Request bodies at the edge: one reader and one JSON check for the prediction pipeline and the other body routes.

Every route that takes a body takes `application/json` and nothing else (415 otherwise). The body
is read at most `limit` bytes far (413 as soon as it passes the limit, nothing more is buffered),
then checked before anything builds objects from it:

* for `POST /v1/jobs`, arrays are counted on the raw bytes (strings skipped by one regex), so a
  60 MB body of `{}`s is refused with 413 after counting `max_items` of them, before a single
  dict is built;
* it is parsed with orjson, which refuses invalid UTF-8, `NaN`/`Infinity` and trailing garbage
  (and nesting past 1024 levels); nesting deeper than MAX_DEPTH is then refused with 422;
  strings may not hold NUL (`\\u0000`): text with NUL is never a legitimate model input.

Every refusal is a 422 problem naming the field `body` and what is wrong, the same on both paths.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from online.gateway.problems import InvalidInput, PayloadTooLarge, UnsupportedMediaType

__all__ = ["JSON_MEDIA_TYPE", "MAX_DEPTH", "check_content_type", "parse_json", "read_body", "too_large"]

JSON_MEDIA_TYPE = "application/json"
MAX_DEPTH = 32  # the deepest body of the API is 4 levels; the model servers' JSON encoder stops at 255
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]|,')


def too_large(size: int, limit: int, *, partial: bool = False) -> str:
    seen = f"over {limit}" if partial else str(size)
    return f"request body is {seen} bytes; the limit is {limit} bytes — send fewer instances or use /v1/jobs"


def check_content_type(headers: dict[bytes, bytes]) -> None:
    """415 unless the body is declared `application/json` (parameters such as charset=utf-8 allowed).

    A request with no body and no Content-Type passes: it is answered 422 "the request body is empty".
    """
    value = headers.get(b"content-type")
    if value is None and headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers:
        return
    media = value.split(b";", 1)[0].strip().lower() if value else b""
    if media != b"application/json":
        sent = media.decode("latin-1")[:100] if media else "no Content-Type"
        raise UnsupportedMediaType(
            f"the body must be sent as Content-Type: {JSON_MEDIA_TYPE} (got {sent})",
            headers={"Accept": JSON_MEDIA_TYPE},
        )


async def read_body(receive, limit: int) -> bytearray:
    """The whole body, or 413 as soon as more than `limit` bytes have arrived (the rest is never read).

    A bytearray, not bytes: copying a 64 MB body to bytes would double the peak memory."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(too_large(len(body), limit, partial=True))
        if not message.get("more_body", False):
            break
    return body


def _invalid(message: str) -> InvalidInput:
    return InvalidInput([{"field": "body", "message": message}])


def _count_items(raw: bytes | bytearray, max_items: int) -> None:
    """413 when an array of the raw body holds more than `max_items` items (422 past MAX_DEPTH on the way).

    Runs on the bytes, before anything is parsed: only bodies with at least `max_items` commas pay
    for the scan (one regex token per bracket, comma or string)."""
    if raw.count(b",") < max_items:
        return
    stack: list[list[int]] = []  # one [is_array, commas] per open container
    for m in _TOKENS.finditer(raw):
        c = m.group()[0]
        if c == 0x5B or c == 0x7B:  # [ {
            if len(stack) >= MAX_DEPTH:
                raise _invalid(f"JSON nested deeper than {MAX_DEPTH} levels")
            stack.append([c == 0x5B, 0])
        elif c == 0x5D or c == 0x7D:  # ] }
            if stack:
                stack.pop()
        elif c == 0x2C and stack:  # , (strings are skipped: their commas are part of the string token)
            top = stack[-1]
            top[1] += 1
            if top[0] and top[1] >= max_items:
                raise PayloadTooLarge(
                    f"an array in the body holds more than {max_items} items; one request takes at most "
                    f"{max_items} — split it")


def _check_depth(data: Any) -> None:
    """422 when the parsed body nests deeper than MAX_DEPTH (orjson itself stops at 1024 levels)."""
    level = [data]
    for _ in range(MAX_DEPTH):  # one level at a time: a 64-instance body is done after 3
        nested = []
        for item in level:
            values = item.values() if type(item) is dict else item
            nested += [v for v in values if type(v) is dict or type(v) is list]
        if not nested:
            return
        level = nested
    raise _invalid(f"JSON nested deeper than {MAX_DEPTH} levels")


def parse_json(raw: bytes | bytearray, *, max_items: int | None = None) -> Any:
    """The body as Python objects, or a 422 (413 for too many items) naming what is wrong with it."""
    if not raw.strip():
        raise _invalid("the request body is empty; send a JSON object")
    if max_items is not None:
        _count_items(raw, max_items)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid(_describe(raw, exc)) from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # fewer brackets cannot nest deeper
        _check_depth(data)
    if not isinstance(data, dict):
        raise _invalid(f"the request body must be a JSON object, not {_JSON_KIND.get(type(data), 'a value')}")
    if b"\\u0000" in raw and _has_nul(data):
        raise _invalid("strings may not contain NUL characters (\\u0000)")
    return data


_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


def _describe(raw: bytes | bytearray, exc: orjson.JSONDecodeError) -> str:
    msg = str(exc.msg) if hasattr(exc, "msg") else str(exc)
    lowered = msg.lower()
    if "utf-8" in lowered or "utf8" in lowered or "surrogate" in lowered:
        return "the request body is not valid UTF-8"
    if "recursion" in lowered or "depth limit" in lowered:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    if b"\x00" in raw:
        return "the request body contains a NUL byte, which JSON does not allow"
    if re.search(rb"(?<![\w\"])-?(?:NaN|Infinity)\b", raw):
        return "NaN and Infinity are not JSON numbers; send null or a finite number"
    pos = f" at character {exc.pos}" if getattr(exc, "pos", None) is not None else ""
    return f"the request body is not valid JSON: {msg}{pos}"


def _has_nul(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
