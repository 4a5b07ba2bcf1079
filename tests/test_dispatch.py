"""The dispatcher: decode once, route by topic, count and isolate malformed events and crashing handlers."""

from __future__ import annotations

from typing import Any

from wsgw.dispatch import Dispatcher
from wsgw.frames import MalformedEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def handle(self, event: dict[str, Any]) -> None:
        if event.get("bad"):
            raise MalformedEvent("bad is set")
        if event.get("crash"):
            raise ZeroDivisionError("a bug")
        self.events.append(event)


def test_routes_decoded_objects_to_the_topic_handler() -> None:
    """A JSON object on a topic reaches that topic's handler, decoded."""
    tree, tasks = Recorder(), Recorder()
    dispatch = Dispatcher({"tree": tree, "tasks": tasks})
    dispatch("tree", b'{"a":1}')
    assert tree.events == [{"a": 1}] and tasks.events == []
    assert dispatch.received["tree"] == 1


def test_malformed_events_are_counted_and_dropped() -> None:
    """Non-JSON, non-objects, oversized payloads and handler-detected bad shapes are counted per topic."""
    tree = Recorder()
    dispatch = Dispatcher({"tree": tree}, max_event_bytes=100)
    for payload in (b"{nope", b"[1]", b'"s"', b"\xff\xfe", b'{"x":"' + b"a" * 200 + b'"}', b'{"bad":true}',
                    b"[" * 100_000):
        dispatch("tree", payload)
    dispatch("tree", b'{"ok":1}')
    assert dispatch.malformed["tree"] == 7
    assert tree.events == [{"ok": 1}]


def test_deep_nesting_within_the_size_limit_is_malformed_not_a_crash() -> None:
    """Deeply nested JSON within the size limit is refused as malformed (RecursionError caught)."""
    dispatch = Dispatcher({"tree": Recorder()})
    dispatch("tree", b"[" * 200_000 + b"]" * 200_000)
    assert dispatch.malformed["tree"] == 1 and dispatch.crashed["tree"] == 0


def test_a_crashing_handler_is_counted_and_others_go_on() -> None:
    """A handler bug is logged and counted; the next event and other topics are handled."""
    tree, tasks = Recorder(), Recorder()
    dispatch = Dispatcher({"tree": tree, "tasks": tasks})
    dispatch("tree", b'{"crash":true}')
    dispatch("tasks", b'{"n":1}')
    dispatch("tree", b'{"n":2}')
    assert dispatch.crashed["tree"] == 1
    assert tasks.events == [{"n": 1}] and tree.events == [{"n": 2}]


def test_unknown_topic_is_ignored() -> None:
    """A topic with no handler is counted as received and otherwise ignored."""
    dispatch = Dispatcher({})
    dispatch("other", b"{}")
    assert dispatch.received["other"] == 1
