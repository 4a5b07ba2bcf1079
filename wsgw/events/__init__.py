"""Topic handlers: one module per bus topic. Each parses the event, decides recipients and shapes frames.

A handler is an object with ``handle(event: dict) -> None``; the dispatcher has
already decoded the JSON object. A handler raises ``MalformedEvent`` for an
event of the wrong shape (the dispatcher logs, counts and drops it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

if TYPE_CHECKING:
    from wsgw.sessions import Session

_log = Logger()


class MalformedEvent(ValueError):
    """An event on the bus that does not have the shape of its topic."""


class TopicHandler(Protocol):
    def handle(self, event: dict[str, Any]) -> None: ...


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``obj[name]`` checked against ``kind``; ``default`` when absent or null; MalformedEvent otherwise."""
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise MalformedEvent(f"{name} must be {_describe(kind)}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def deliver(recipients: Iterable[Session], frame: bytes, topic: str) -> int:
    """Send the same ``frame`` bytes to each recipient; a failing one is logged and skipped. Returns the count sent.

    Iterates over a snapshot: a send may close a session and shrink the live index it came from.
    """
    sent = 0
    for session in tuple(recipients):
        try:
            session.send(frame)
        except Exception:  # noqa: BLE001 - isolate a broken recipient
            _log.failure("{topic} event to session {sid} failed", topic=topic, sid=session.sid)
        else:
            sent += 1
    return sent
