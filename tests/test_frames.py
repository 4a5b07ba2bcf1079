"""Frame encoding: compact UTF-8 JSON, and lone surrogates escaped instead of crashing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgw import frames


def test_compact_utf8() -> None:
    """Frames are compact JSON with non-ASCII text as UTF-8."""
    assert frames.encode({"a": "é", "b": [1]}) == '{"a":"é","b":[1]}'.encode()


def test_lone_surrogate_is_escaped() -> None:
    """A string with a lone surrogate (valid JSON input, invalid UTF-8) encodes escaped and decodes back."""
    payload = frames.encode({"Path": "x\ud800y"})
    assert payload == b'{"Path":"x\\ud800y"}'
    assert json.loads(payload) == {"Path": "x\ud800y"}


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=15)


@settings(max_examples=400, deadline=None)
@given(_PLAIN)
def test_encode_plain_writes_what_encode_writes(value: Any) -> None:
    """For any value without floats (any string: control characters, U+2028, emoji, lone surrogates; any
    integer, past 64 bits too), ``encode_plain`` gives ``encode``'s bytes."""
    assert frames.encode_plain(value) == frames.encode(value)


def test_encode_plain_falls_back_for_what_orjson_refuses() -> None:
    """An integer past 64 bits and a lone surrogate, which orjson refuses, are written as ``encode`` writes them."""
    value = {"Size": 2**70, "Path": "x\ud800y", "é": "\u2028\x00\x7f"}
    assert frames.encode_plain(value) == frames.encode(value) == (
        b'{"Size":1180591620717411303424,"Path":"x\\ud800y","\\u00e9":"\\u2028\\u0000\\u007f"}')


def _loads(text: bytes) -> tuple[str, Any]:
    """What ``json.loads`` makes of ``text``: ("ok", repr of the value: -0.0, int against float, NaN compared)
    or ("error", the exception's type and message)."""
    try:
        return "ok", repr(json.loads(text))
    except (ValueError, RecursionError) as e:
        return "error", (type(e), str(e))


def _decode(text: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(frames.decode(text))
    except (ValueError, RecursionError) as e:
        return "error", (type(e), str(e))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans(), st.booleans())
def test_decode_is_json_loads_on_serialized_values(value: Any, ascii_only: bool, spaced: bool) -> None:
    """Every value json writes (big integers, NaN and infinities, lone surrogates, any float) reads back through
    ``decode`` exactly as through ``json.loads``."""
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    data = text.encode("utf-8", "surrogatepass")
    assert _decode(data) == _loads(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40) | st.text(alphabet='{}[]",:0123456789.eE+-tfnaulrsNIy\\u \t\n', max_size=40).map(
    str.encode))
def test_decode_is_json_loads_on_arbitrary_bytes(data: bytes) -> None:
    """Malformed and borderline texts: the same value or the same exception (type and message) as ``json.loads``."""
    assert _decode(data) == _loads(data)


@pytest.mark.parametrize("data", [
    b'{"a":1,"a":2}', b"1e400", b"-1e400", b"-0", b"-0.0", b"5e-324", b"2.4e-324", b"NaN", b"[Infinity]",
    b"123456789012345678901234567890", b"18446744073709551615", b"18446744073709551616", b"-9223372036854775808",
    b"-9223372036854775809", b"999999999999999999", b'"\\ud800"', b'"\xed\xa0\x80"', b"\xef\xbb\xbf{}", b'"\xff"',
    b'{"a":1.5,"b":123456789012345678901234567890}', b'{"a":[1,true,null,{"b":18446744073709551616}]}',
    b"[" * 250 + b"1.5" + b"]" * 250, b"[" * 198 + b"1" + b"]" * 198, b"[" * 200 + b"1" + b"]" * 200,
    b"[" * 1100 + b"]" * 1100, b"[" * 199 + b"]" * 199, b"[" * 200 + b"]" * 200, b'{"a":[' * 100 + b"1" + b"]}" * 100,
    b"[" * 1010 + b"]" * 1010, b'{"a":' * 1010 + b"1" + b"}" * 1010, b'"\\ud83d\\ude00"', b'{"@type":"subscribe","jwt":"eyJhbGciOiJIUzI1NiJ9.e30.x"}',
    b"1.00000000000000011102230246251565404236316680908203125", '"é"'.encode("utf-16"), b"",
])
def test_decode_is_json_loads_at_the_edges(data: bytes) -> None:
    """Where orjson and json differ (64-bit integers, NaN, 1e400, surrogates, BOM, nesting, encodings)."""
    assert _decode(data) == _loads(data)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return value - value == 0.0
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans())
def test_decode_event_is_decode_without_what_json_cannot_hold(value: Any, ascii_only: bool) -> None:
    """``decode_event``: ``decode``'s value when it holds only finite numbers; else ValueError (a bus event with NaN,
    Infinity or 1e400 is malformed: no frame can carry it on, PROTOCOL.md §1)."""
    data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if _finite(value):
        assert repr(frames.decode_event(data)) == repr(frames.decode(data))
    else:
        with pytest.raises(ValueError):
            frames.decode_event(data)


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"1e400", b"-1e400", b"[1.8e308]",
                                  b'{"n":' + b"9" * 400 + b".0}", b"[" * 300 + b"NaN" + b"]" * 300])
def test_decode_event_refuses_what_no_json_text_holds(data: bytes) -> None:
    with pytest.raises(ValueError):
        frames.decode_event(data)
    assert frames.decode_event(b'{"a":1.7976931348623157e308,"b":-0.0,"c":5e-324}') == json.loads(
        b'{"a":1.7976931348623157e308,"b":-0.0,"c":5e-324}')


@pytest.mark.parametrize("depth", [1, 2, 199, 200, 201, 511, 512, 513, 514, 900, 970, 980, 1100])
def test_decoding_refuses_a_text_deeper_than_its_fixed_bound(depth: int) -> None:
    """Lists and objects nested at most ``MAX_DEPTH`` deep decode as ``json.loads`` decodes them; deeper, a
    ValueError or RecursionError (a malformed event, a frame that is not JSON) whatever the stack, so that an
    interpreted and a compiled build agree (``json.loads`` alone refused from ~975 levels interpreted, a few more
    compiled)."""
    text = b'{"a":' + b'[{"b":' * ((depth - 1) // 2) + b"[" * ((depth - 1) % 2) + b"1" + b"]" * ((depth - 1) % 2) \
        + b"}]" * ((depth - 1) // 2) + b"}"
    for decode in (frames.decode, frames.decode_event):
        if depth <= frames.MAX_DEPTH:
            assert decode(text) == json.loads(text)
        else:
            with pytest.raises((ValueError, RecursionError)):
                decode(text)
    assert frames.MAX_DEPTH == 512
