"""Frame encoding: compact UTF-8 JSON, and lone surrogates escaped instead of crashing."""

from __future__ import annotations

import json

from wsgw import frames


def test_compact_utf8() -> None:
    """Frames are compact JSON with non-ASCII text as UTF-8."""
    assert frames.encode({"a": "é", "b": [1]}) == '{"a":"é","b":[1]}'.encode()


def test_lone_surrogate_is_escaped() -> None:
    """A string with a lone surrogate (valid JSON input, invalid UTF-8) encodes escaped and decodes back."""
    payload = frames.encode({"Path": "x\ud800y"})
    assert payload == b'{"Path":"x\\ud800y"}'
    assert json.loads(payload) == {"Path": "x\ud800y"}
