"""The wire vocabulary the core shares (PROTOCOL.md §2, §4, §6).

- ``encode``: a JSON value as the UTF-8 bytes of one text frame, serialized
  once and reused for every recipient; ``decode``: ``json.loads`` of a frame, faster;
- ``error``: the ``{"@type":"error","error":reason}`` frame;
- the close codes of §6 (RFC 6455 codes and the 4000-range ones of Cells);
- ``MalformedEvent`` and ``field``: how a topic's rules refuse a bus event
  of the wrong shape (the dispatcher logs, counts and drops it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import orjson

CLOSE_NORMAL = 1000
CLOSE_BAD_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_AUTH = 4001
CLOSE_REVOKED = 4003
CLOSE_SLOW = 4008
CLOSE_FLOOD = 4029

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
# An integer past 18 digits may not fit orjson's 64 bits: found as a run of 19 "1"s once every digit is a "1", and
# the openings counted once every "[" is a "{" (one translation, a count and a substring search: ~1 us on a 350-byte
# frame; a regular expression took ~14, trying each byte). ``find``, not ``in``: ``bytes.__contains__`` first tries
# its argument as an int, and formats a TypeError for a bytes one (~2,600 instructions an event, callgrind).
_FOLD = bytes(0x31 if 0x30 <= i <= 0x39 else 0x7B if i in (0x5B, 0x7B) else 0x2E for i in range(256))
_NINETEEN_DIGITS = b"1" * 19
_MAX_OPENINGS = 200  # (no frame, token or bus event comes near; far below the depth json.loads refuses under the
# reactor's stack)
MAX_DEPTH = 512
"""``decode``, ``decode_event``: a text nested deeper (lists and objects) is not decoded; far below the depth
``json.loads`` refuses under the reactor's stack, far above any frame's or event's (Cells' deepest are a few)."""


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON bytes, ready to be sent as a text frame.

    A lone surrogate (possible in JSON input, impossible in UTF-8) is sent escaped (``\\ud800``).
    """
    text = _encoder.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(obj).encode("ascii")


def encode_plain(obj: Any) -> bytes:
    """``encode(obj)`` for a value made only of dicts with string keys, lists, strings, integers, booleans and None
    (no float): the same bytes, from orjson, ~10× faster (issue 13: node frames are encoded once per workspace
    view of every event).

    orjson writes exactly what ``encode`` writes for those values (compact, key order kept, non-ASCII as UTF-8,
    the same escapes), not for floats (``1e-05`` becomes ``0.00001``, NaN ``null``), hence the restriction; what
    it refuses (an integer past 64 bits, a lone surrogate) goes to ``encode``.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return encode(obj)


def error(reason: str) -> bytes:
    """The ``{"@type":"error","error":reason}`` frame."""
    return encode({"@type": "error", "error": reason})


class MalformedEvent(ValueError):
    """A bus event that does not have the shape of its topic; the message names the offending field."""


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``obj[name]`` checked against ``kind``; ``default`` when absent or null; MalformedEvent otherwise.

    A boolean is not a number here (JSON ``true`` is no ``int``), unless ``kind`` names ``bool``.
    """
    value = obj.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise MalformedEvent(f"{name} must be {_describe(kinds)}")
    return value


_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _describe(kinds: tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def decode(text: bytes) -> Any:
    """``json.loads(text)``: the same value, or the same exception, ~3-7x faster on small objects (a bus event, a
    client's subscribe frame, a token's header and claims; bench/RESULTS.md "Connect path", part 4), but for a text
    nested deeper than ``MAX_DEPTH``, which raises ValueError.

    orjson parses what it can and gives what ``json.loads`` gives (key order, the last of duplicate keys, floats
    correctly rounded), except for integers past 64 bits, which it makes floats, and nesting: orjson nests to 1,024
    levels, ``json.loads`` to Python's recursion limit (~1,000 less the stack it is called from), where it raises
    RecursionError. So orjson's value stands when it holds no float and nests less than ``_MAX_OPENINGS`` deep (a
    walk of the value: most events hold no float), or when its text has no run of 19 digits and fewer than
    ``_MAX_OPENINGS`` ``[`` and ``{``; anything else, and anything orjson refuses (NaN, Infinity, 1e400, lone
    surrogates, a BOM or another encoding than UTF-8, malformed JSON), is ``json.loads``'s. ``MAX_DEPTH``: the depth
    ``json.loads`` refuses depends on the stack (~975 levels interpreted, a few more compiled, whose calls take no
    Python frame), so that the same frame was read by one build and refused by the other.
    """
    return _decode(text, json.loads)


def decode_event(text: bytes) -> Any:
    """``decode(text)`` for a bus event, whose values the rules pass on to browsers: ``NaN``, ``Infinity``,
    ``-Infinity`` and a number past a double's range (``1e400``), which ``json.loads`` reads as floats that no JSON
    text can hold (a frame with ``NaN`` in it is refused by the browser's ``JSON.parse``; PROTOCOL.md §1: one JSON
    value per frame), raise ValueError, as any text that is not JSON does. orjson refuses them: only the
    ``json.loads`` path meets them. So does an event nested deeper than ``MAX_DEPTH`` levels, as in ``decode``."""
    return _decode(text, _loads_finite)


def _decode(text: bytes, loads: Callable[[bytes], Any]) -> Any:
    try:
        value = orjson.loads(text)
        parsed = True
    except orjson.JSONDecodeError:
        value, parsed = None, False
    if parsed and _floatless(value, 0):
        return value
    folded = text.translate(_FOLD)
    openings = folded.count(b"{")
    if parsed and openings < _MAX_OPENINGS and folded.find(_NINETEEN_DIGITS) < 0:
        return value
    value = loads(text)
    if openings > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _loads_finite(text: bytes) -> Any:
    return json.loads(text, parse_constant=_not_finite, parse_float=_finite)


def _floatless(value: object, depth: int) -> bool:
    """Whether ``value`` (as JSON makes it) holds no float and nests less than ``_MAX_OPENINGS`` deep, ``depth``
    levels down already."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return kind is not float
    if depth + 1 >= _MAX_OPENINGS:
        return False
    # a typed loop each (compiled: a dict's values and a list's items walked in C, not through an iterator object)
    if kind is dict:
        for item in cast("dict[str, object]", value).values():
            if not _fits(item, depth + 1):
                return False
    else:
        for item in cast("list[object]", value):
            if not _fits(item, depth + 1):
                return False
    return True


def _fits(item: object, depth: int) -> bool:
    """``_floatless(item, depth)``, a string, integer, boolean or null answered without the call."""
    kind = type(item)
    return kind is str or kind is int or kind is bool or item is None or _floatless(item, depth)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (as ``json.loads`` makes it) holds lists and objects more than ``limit`` levels deep; level by
    level, without recursion."""
    level: list[Any] = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for container in level:
            if type(container) is dict:
                inner.extend(v for v in container.values() if type(v) is dict or type(v) is list)
            elif type(container) is list:
                inner.extend(v for v in container if type(v) is dict or type(v) is list)
        level = inner
    return False


def _not_finite(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(number: str) -> float:
    value = float(number)  # what json.loads makes of it
    if value - value != 0.0:  # inf - inf is NaN, as is NaN - NaN
        raise ValueError(f"{number[:40]} is out of a double's range")
    return value
