"""Frame encoding: compact UTF-8 JSON, and lone surrogates escaped instead of crashing."""

from __future__ import annotations

import json
from typing import Any

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
