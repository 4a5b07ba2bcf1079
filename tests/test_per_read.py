"""The messages of one bus read handled in one call (issue 13, goal 2): ``RedisBus`` hands them to its only
listener's ``batch``, ``TimedListener.batch`` times each with one clock read, ``Dispatcher.batch`` handles them
in order; each gives what the message-by-message path gives. And the node checks of every event
(``validate``, ``event_paths``) give what their general forms give."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from wsgw.access import Access, Root, Workspace
from wsgw.bus.redis import RedisBus
from wsgw.cells import EVENT_TYPE
from wsgw.dispatch import Dispatcher
from wsgw.events.nodes import PreparedEvent, event_paths, validate
from wsgw.frames import MalformedEvent, field
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection
from wsgw.web.timing import PlainHistogram, TimedListener

pytestmark = pytest.mark.unit


class Recorder:
    """A topic handler: records events; ``bad`` is malformed, ``crash`` a bug."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def handle(self, event: dict[str, Any]) -> None:
        if event.get("bad"):
            raise MalformedEvent("bad is set")
        if event.get("crash"):
            raise ZeroDivisionError("a bug")
        self.log.append(event)


_PAYLOADS = st.sampled_from([b'{"a":1}', b'{"a":2}', b'{"bad":true}', b'{"crash":1}', b"{nope", b"[1]",
                             b'{"x":"' + b"y" * 120 + b'"}', b"\xff", b'{"n":123456789012345678901234}'])
_MESSAGES = st.lists(st.tuples(st.sampled_from(["tree", "tasks", "other"]), _PAYLOADS), max_size=12)


def _dispatcher() -> tuple[Dispatcher, list[Any]]:
    log: list[Any] = []
    return Dispatcher({"tree": Recorder(log), "tasks": Recorder(log)}, max_event_bytes=100), log


@settings(max_examples=200, deadline=None)
@given(_MESSAGES)
def test_a_batch_is_dispatched_as_that_many_calls(messages: list[tuple[str, bytes]]) -> None:
    """``Dispatcher.batch``: the same events handled in the same order, the same counts (received, malformed,
    crashed) and the same log lines as one call per message."""
    one, one_log = _dispatcher()
    batched, batch_log = _dispatcher()
    with capturedLogs() as one_lines:
        for topic, payload in messages:
            one(topic, payload)
    with capturedLogs() as batch_lines:
        batched.batch(messages)
    assert batch_log == one_log
    assert (batched.received, batched.malformed, batched.crashed) == (one.received, one.malformed, one.crashed)
    assert [(e["log_format"], e.get("topic")) for e in batch_lines] == [
        (e["log_format"], e.get("topic")) for e in one_lines]


def test_each_calls_after_once_each_event_is_handled() -> None:
    """``Dispatcher.each`` calls ``after(topic)`` after each event, handled or not (no handler, malformed,
    crashed)."""
    dispatch, log = _dispatcher()
    seen = []
    with capturedLogs():
        dispatch.each([("tree", b'{"a":1}'), ("other", b"{}"), ("tasks", b"{nope"), ("tree", b'{"crash":1}'),
                       ("tasks", b'{"a":2}')], lambda topic: seen.append((topic, len(log))))
    assert seen == [("tree", 1), ("other", 1), ("tasks", 1), ("tree", 1), ("tasks", 2)]


class Stepping:
    """A dispatcher stand-in whose events take known times on a clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, topic: str, payload: bytes) -> None:
        self.each([(topic, payload)], lambda _: None)

    def each(self, messages: list[tuple[str, bytes]], after: Any) -> None:
        for topic, payload in messages:
            self.clock.advance(int(payload) / 1000)
            after(topic)


def _observed(histogram: PlainHistogram) -> dict[str, tuple[list[float], float]]:
    (family,) = histogram.collect()
    out: dict[str, tuple[list[float], float]] = {}
    for sample in family.samples:
        topic = sample.labels["topic"]
        counts, total = out.get(topic, ([], 0.0))
        if sample.name.endswith("_bucket"):
            counts.append(sample.value)
        elif sample.name.endswith("_sum"):
            total = sample.value
        out[topic] = (counts, total)
    return out


def _timed(clock: Clock, listener: Any) -> tuple[TimedListener, PlainHistogram]:
    histogram = PlainHistogram("lag", "doc", (0.001, 0.005, 0.01, 0.1), clock, ["topic"])
    return TimedListener(listener, clock, {"tree": histogram.child("tree"), "chat": histogram.child("chat")}), histogram


@pytest.mark.parametrize("times", [[3], [3, 7, 1, 40, 2], [0, 0, 12]])
def test_a_timed_batch_observes_what_timed_calls_observe(times: list[int]) -> None:
    """``TimedListener.batch``: each event observed once in its topic's series, for the time it took, as a call
    per message would observe; a topic without a series is not observed."""
    topics = ["tree", "chat", "idm"]
    messages = [(topics[i % 3], b"%d" % ms) for i, ms in enumerate(times)]
    clock_one, clock_batch = Clock(), Clock()
    one, one_histogram = _timed(clock_one, Stepping(clock_one))
    batched, batch_histogram = _timed(clock_batch, Stepping(clock_batch))
    for topic, payload in messages:
        one(topic, payload)
    batched.batch(messages)
    assert _observed(batch_histogram) == _observed(one_histogram)


def test_a_timed_batch_of_a_plain_listener_calls_it_per_message_and_isolates_its_failures() -> None:
    """Around a listener without ``each``, ``batch`` calls it for each message, as the bus would: a failure
    is logged and the next message still goes."""
    got: list[Any] = []

    def listener(topic: str, payload: bytes) -> None:
        got.append(payload)
        if payload == b"1":
            raise RuntimeError("bug")

    timed, _ = _timed(Clock(), listener)
    with capturedLogs() as lines:
        timed.batch([("tree", b"1"), ("tree", b"2")])
    assert got == [b"1", b"2"] and [e for e in lines if e.get("log_failure") is not None]


class BatchListener:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def __call__(self, topic: str, payload: bytes) -> None:
        self.log.append((topic, payload))

    def batch(self, messages: list[tuple[str, bytes]]) -> None:
        self.log.append(list(messages))
        if messages and messages[0][1] == b"boom":
            raise RuntimeError("a bug")


def _bus() -> RedisBus:
    return RedisBus(MemoryReactorClock(), "tcp:127.0.0.1:1", {"tree": "c.tree", "chat": "c.chat"})


def test_the_only_listener_with_batch_gets_each_read_in_one_call() -> None:
    """One call per read, topics named, unknown channels dropped (and logged); a failing batch is logged and the
    next read is delivered."""
    log: list[Any] = []
    bus = _bus()
    bus.listen(BatchListener(log))
    with capturedLogs() as lines:
        bus._deliveries.messages([(b"c.tree", b"1"), (b"c.other", b"x"), (b"c.chat", b"2")])
        bus._deliveries.messages([(b"c.tree", b"boom")])
    bus._deliveries.messages([(b"c.chat", b"3")])
    assert log == [[("tree", b"1"), ("chat", b"2")], [("tree", b"boom")], [("chat", b"3")]]
    assert any("unexpected channel" in e["log_format"] for e in lines)
    assert any(e.get("log_failure") is not None for e in lines)


def test_several_listeners_get_each_message_in_turn() -> None:
    """With two listeners, each message goes to both before the next one (no batch call)."""
    log: list[Any] = []
    bus = _bus()
    bus.listen(BatchListener(log))
    bus.listen(lambda topic, payload: log.append(("second", payload)))
    bus._deliveries.messages([(b"c.tree", b"1"), (b"c.chat", b"2")])
    assert log == [("tree", b"1"), ("second", b"1"), ("chat", b"2"), ("second", b"2")]


def test_the_daemons_chain_handles_a_read_as_its_messages() -> None:
    """Bus, timed listener and dispatcher together: the events of one read reach their handler in order and are
    each observed."""
    log: list[Any] = []
    clock = Clock()
    dispatch = Dispatcher({"tree": Recorder(log)})
    timed, histogram = _timed(clock, dispatch)
    bus = _bus()
    bus.listen(timed)
    bus._deliveries.messages([(b"c.tree", b'{"a":1}'), (b"c.chat", b"{}"), (b"c.tree", b'{"a":2}')])
    assert log == [{"a": 1}, {"a": 2}] and dispatch.received == {"tree": 2, "chat": 1}
    assert _observed(histogram)["tree"][0][-1] == 2 and _observed(histogram)["chat"][0][-1] == 1


# -- the node checks of every event -------------------------------------------------------------


def _reference_validate(event: object) -> dict[str, Any]:
    """``validate`` as written before its fast path (the oracle; the nodes themselves are checked against their
    own oracle in tests/test_events_nodes.py)."""
    if not isinstance(event, dict):
        raise MalformedEvent("a node event must be an object")
    kind = event.get("Type")
    if kind is not None:
        kind = EVENT_TYPE.name(kind, "Type")
    for flag in ("Silent", "Optimistic"):
        value = event.get(flag)
        if value is not None and type(value) is not bool:
            field(event, flag, bool)
    checked = validate({"Target": event["Target"]}) if event.get("Target") is not None else None
    target = checked["Target"] if checked is not None else None
    checked = validate({"Source": event["Source"]}) if event.get("Source") is not None else None
    source = checked["Source"] if checked is not None else None
    if target is None and source is None:
        raise MalformedEvent("a node event needs a Target or a Source")
    named = dict(event)
    if kind is not None:
        named["Type"] = kind
    for name, node in (("Target", target), ("Source", source)):
        if node is not None:
            named[name] = node
    return named


_NODES = st.one_of(st.none(), st.just("x"), st.fixed_dictionaries(
    {"Path": st.sampled_from(["", "/", "a", "/a/b/", "a/.hidden", "p/q"])},
    optional={"Uuid": st.sampled_from(["u", 3]), "Type": st.sampled_from(["LEAF", 1, "CREATE", None]),
              "Size": st.sampled_from(["1", 2, 2.5, True])}))
_FLAGS = st.sampled_from([None, True, False, 1, "yes"])
_EVENTS = st.fixed_dictionaries({}, optional={
    "Type": st.sampled_from(["CREATE", "UPDATE_PATH", "UPDATE_USER_META", "READ", "DELETE", 0, 4, 7, 99, "NOPE",
                             True, 2.0, None]),
    "Target": _NODES, "Source": _NODES, "Silent": _FLAGS, "Optimistic": _FLAGS, "Extra": st.integers()})


@settings(max_examples=500, deadline=None)
@given(_EVENTS)
def test_validate_gives_what_the_general_checks_give(event: dict[str, Any]) -> None:
    """The event checks by exact type (``Type``, ``Silent``, ``Optimistic``, nodes tried as plain first) accept,
    rename and refuse exactly what the generic checks do, with the same message."""
    try:
        expected = _reference_validate(event)
    except MalformedEvent as e:
        with pytest.raises(MalformedEvent) as raised:
            validate(event)
        assert str(raised.value) == str(e)
        return
    got = validate(event)
    assert got == expected
    assert (got is event) == (json.dumps(expected, sort_keys=True) == json.dumps(event, sort_keys=True))


@settings(max_examples=300, deadline=None)
@given(_EVENTS)
def test_event_paths_are_those_of_the_prepared_event(event: dict[str, Any]) -> None:
    """``event_paths`` (looked up before anything is prepared) gives the prepared event's paths for every valid
    event."""
    try:
        event = validate(event)
    except MalformedEvent:
        return
    assert event_paths(event) == PreparedEvent(event).paths()


_ROOTS = ["a", "a/b", "a/b/c", "x", "x/y"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(range(6)), min_size=1, max_size=3), max_size=8),
       st.lists(st.sampled_from(["a/b/c/f", "a/b/g", "a", "x/y/z", "q/r", "a/bb/c", "x"]), max_size=3))
def test_views_for_paths_is_the_union_of_each_paths_views(holdings: list[list[int]], paths: list[str]) -> None:
    """``SessionTable.views_for_paths``: each workspace view having a root at or above any path, with every session
    holding it (the union over the paths, the same set again when two paths meet the same root)."""
    workspaces = [Workspace(f"ws{i}", f"slug{i}", (Root(f"r{i}", _ROOTS[i % 5], f"k{i}"),)) for i in range(6)]
    workspaces[5] = Workspace("ws5", "slug5", (Root("r5a", "a/b", "k5a"), Root("r5b", "x", "k5b")))
    table = SessionTable()
    holders: dict[Workspace, set[Session]] = {}
    for i, held in enumerate(holdings):
        session = Session(RecordingConnection(f"s{i}"))
        table.add(session)
        table.subscribe(session, Access(f"u{i}", f"sub{i}", "standard", frozenset(),
                                        tuple(workspaces[w] for w in dict.fromkeys(held))))
        for w in held:
            holders.setdefault(workspaces[w], set()).add(session)
    expected = {ws: sessions for ws, sessions in holders.items()
                if any(p == r.path or p.startswith(r.path + "/") for p in paths for r in ws.roots)}
    assert {ws: set(s) for ws, s in table.views_for_paths(paths).items()} == expected
