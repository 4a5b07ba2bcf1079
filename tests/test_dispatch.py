"""The dispatcher: decode once, route by topic, count and isolate malformed events and crashing handlers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgw.dispatch import Dispatcher, loads
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


# -- decoding: orjson where it reads as json.loads does -----------------------------------------------------------

def _outcome(decode: Any, payload: bytes) -> tuple[str, str]:
    """What ``decode`` makes of ``payload``: the value's repr with its types, or the error's type."""
    try:
        value = decode(payload)
    except (ValueError, RecursionError) as e:
        return ("error", type(e).__name__)
    return ("value", repr(value) + repr(_types(value)))


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("payload", [
    b'{"a":123456789012345678901234567890}', b'{"a":-9223372036854775809}', b'{"a":18446744073709551616}',
    b'{"a":"\\ud800"}', b'{"a":"\xed\xa0\x80"}',
    b'{"a":1,"a":2}', b'\xef\xbb\xbf{"a":1}', '{"a":1}'.encode("utf-16"), b'{"a":-0}', b'{"a":-0.0}',
    b'{"a":0.1e-7}', b'{"a":"\xff"}', b'{"a":"\t"}', b'{"a":1} x', b"[" * 150 + b"]" * 150, b"[" * 300 + b"]" * 300,
    b"[" * 100_000 + b"]" * 100_000, b"", b'{"a":[1,2,]}',
])
def test_events_decode_exactly_as_json_loads_does(payload: bytes) -> None:
    """The dispatcher's ``loads`` gives ``json.loads``'s value, types included, or its error, for what orjson
    reads differently (integers past 64 bits become floats there), refuses (lone surrogates, UTF-16) or takes
    deeper than the standard parser."""
    assert _outcome(loads, payload) == _outcome(json.loads, payload)


@pytest.mark.parametrize("payload", [b'{"a":NaN,"b":Infinity,"c":-Infinity}', b'{"a":1E400}', b'{"a":-1e400}'])
def test_events_with_what_no_frame_can_hold_are_not_json(payload: bytes) -> None:
    """NaN, Infinity and 1e400, which ``json.loads`` reads as floats no JSON text holds, are errors (``decode_event``:
    a frame with ``NaN`` is refused by the browser's ``JSON.parse``), so such an event is malformed."""
    assert _outcome(loads, payload) == ("error", "ValueError")
    dispatch = Dispatcher({"tasks": Recorder()})
    dispatch("tasks", payload)
    assert dispatch.malformed["tasks"] == 1


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=12))
def test_any_json_decodes_as_json_loads_does(value: Any) -> None:
    """Any JSON text the standard library writes (big integers, any string) decodes to the same value; with NaN or
    an infinity in it, to ValueError."""
    finite = all(f - f == 0.0 for f in _floats(value))  # (NaN and the infinities give NaN)
    for payload in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")):
        assert _outcome(loads, payload) == (_outcome(json.loads, payload) if finite else ("error", "ValueError"))


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, (list, dict)):
        return [f for v in (value.values() if isinstance(value, dict) else value) for f in _floats(v)]
    return []


def test_a_big_integer_reaches_the_handler_as_an_integer() -> None:
    """An event's integer past 64 bits is handed over as that integer (orjson alone would give a float)."""
    tree = Recorder()
    Dispatcher({"tree": tree})("tree", b'{"Size":123456789012345678901234567890}')
    assert tree.events == [{"Size": 123456789012345678901234567890}]


def test_log_events_name_the_module_that_logged_them(tracebacks: Any) -> None:
    """A dispatcher, fan-out or merge failure is logged under its module's namespace (the ``namespace`` of the
    JSON log lines, ``[namespace#level]`` of twistd's; README "Logs"), also when these modules are compiled
    (README "Compiled modules": there ``Logger()`` cannot find its caller's module, nor act as a descriptor)."""
    from twisted.internet.task import Clock

    from wsgw.events.batching import NodeBatcher
    from wsgw.sessions import Session, fan_out
    from wsgw.testing import RecordingConnection

    class Broken(RecordingConnection):
        def write(self, payload: bytes) -> None:
            raise ZeroDivisionError("a bug")

    Dispatcher({"tree": Recorder()})("tree", b'{"crash":true}')
    fan_out([Session(Broken())], b"{}", None)

    def deliver(event: dict[str, Any]) -> None:
        raise ZeroDivisionError("a bug")

    clock = Clock()
    batcher = NodeBatcher(clock, 1.0, deliver)
    batcher.add("n1", {"Type": "UPDATE_CONTENT", "Target": {"Uuid": "n1", "Path": "a/b"}})
    batcher.flush()
    assert [e["log_namespace"] for e in tracebacks] == [
        "wsgw.dispatch.Dispatcher", "wsgw.sessions", "wsgw.events.batching.NodeBatcher"]
