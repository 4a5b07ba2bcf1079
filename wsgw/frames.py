"""Serialization of frames: each distinct frame is encoded once and the bytes are reused."""

from __future__ import annotations

import json
from typing import Any

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON bytes, ready to be sent as a text frame.

    A lone surrogate (possible in JSON input, impossible in UTF-8) is sent escaped (``\\ud800``).
    """
    text = _encoder.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(obj).encode("ascii")


def error(reason: str) -> bytes:
    """The ``{"@type":"error","error":reason}`` frame."""
    return encode({"@type": "error", "error": reason})
