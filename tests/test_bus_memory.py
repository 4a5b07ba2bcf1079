"""The embedded bus: delivery, ordering without re-entry, listener isolation, refusal of bad input."""

from __future__ import annotations

import pytest
from twisted.internet.defer import fail
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from wsgw.bus import check_topics
from wsgw.bus.memory import MemoryBus
from wsgw.interfaces import IBus

TOPICS = {"tree": "topic.pydio.tree.nodes.changes", "chat": "topic.pydio.chat.event"}


def recorder() -> tuple[list[tuple[str, bytes]], object]:
    got: list[tuple[str, bytes]] = []
    return got, lambda topic, payload: got.append((topic, payload))


def test_provides_ibus_and_is_always_connected() -> None:
    """MemoryBus provides IBus, is connected and reports the 'embedded' state."""
    bus = MemoryBus(TOPICS)
    assert verifyObject(IBus, bus)
    assert bus.connected is True
    assert bus.state == "embedded"
    assert bus.topics == TOPICS
    assert bus.whenConnected().called and bus.whenSubscribed().called


def test_publish_delivers_to_every_listener_before_returning() -> None:
    """A top-level publish hands (topic, payload) to every listener, on every topic, and its Deferred has fired."""
    bus = MemoryBus(TOPICS)
    first, listen_first = recorder()
    second, listen_second = recorder()
    bus.listen(listen_first)
    bus.listen(listen_second)
    d1 = bus.publish("tree", b'{"a":1}')
    d2 = bus.publish("chat", b"\xff\x00")
    assert first == second == [("tree", b'{"a":1}'), ("chat", b"\xff\x00")]
    assert d1.called and d2.called


def test_publish_from_a_listener_is_queued_in_order() -> None:
    """A publish made by a listener is delivered after the current message reached every listener, in order."""
    bus = MemoryBus(TOPICS)
    seen: list[tuple[str, bytes, str]] = []

    def republisher(topic: str, payload: bytes) -> None:
        seen.append((topic, payload, "A"))
        if payload == b"1":
            bus.publish("tree", b"2")
            bus.publish("tree", b"3")

    bus.listen(republisher)
    bus.listen(lambda topic, payload: seen.append((topic, payload, "B")))
    bus.publish("tree", b"1")
    assert seen == [
        ("tree", b"1", "A"), ("tree", b"1", "B"),
        ("tree", b"2", "A"), ("tree", b"2", "B"),
        ("tree", b"3", "A"), ("tree", b"3", "B"),
    ]


def test_failing_listener_is_logged_and_isolated() -> None:
    """A listener that raises (or returns a failing Deferred) is logged with its traceback; others still receive."""
    bus = MemoryBus(TOPICS)
    got, listen = recorder()

    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    bus.listen(broken)
    bus.listen(lambda topic, payload: fail(KeyError("async boom")))
    bus.listen(listen)
    with capturedLogs() as events:
        d = bus.publish("chat", b"x")
        bus.publish("chat", b"y")
    assert d.called
    assert got == [("chat", b"x"), ("chat", b"y")]
    failures = [e["log_failure"].value for e in events if "log_failure" in e]
    assert [type(f) for f in failures] == [RuntimeError, KeyError, RuntimeError, KeyError]


def test_unknown_topic_and_non_bytes_payload_are_refused() -> None:
    """Publishing on an unknown topic raises ValueError, a str payload TypeError, and nothing is delivered."""
    bus = MemoryBus(TOPICS)
    got, listen = recorder()
    bus.listen(listen)
    with pytest.raises(ValueError, match="unknown bus topic 'nope'"):
        bus.publish("nope", b"x")
    with pytest.raises(TypeError, match="bytes"):
        bus.publish("tree", "text")  # type: ignore[arg-type]
    assert got == []


@pytest.mark.parametrize(
    "topics, message",
    [
        ({}, "at least one topic"),
        ({"a": "same", "b": "same"}, "used by both 'a' and 'b'"),
        ({"a": ""}, "non-empty string"),
        ({"": "chan"}, "non-empty string"),
    ],
)
def test_bad_topic_maps_are_refused(topics: dict[str, str], message: str) -> None:
    """An empty topic map, an empty name or a channel shared by two topics is refused with a clear ValueError."""
    with pytest.raises(ValueError, match=message):
        check_topics(topics)
    with pytest.raises(ValueError, match=message):
        MemoryBus(topics)
