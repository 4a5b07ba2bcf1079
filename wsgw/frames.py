"""Serialization of frames: each distinct frame is encoded once and the bytes are reused."""

from __future__ import annotations

import json
from typing import Any

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON bytes, ready to be sent as a text frame."""
    return _encoder.encode(obj).encode("utf-8")


def error(reason: str) -> bytes:
    """The ``{"@type":"error","error":reason}`` frame."""
    return encode({"@type": "error", "error": reason})
