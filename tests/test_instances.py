"""The instance registry (wsgw.instances, issue 14 "An operator page"): the heartbeat, its TTL, the removal on stop,
the history of rates, and the validation of records read back from the store. No Redis: MemoryInstances on a
``task.Clock``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from wsgw.instances import (
    HEARTBEAT_TTLS,
    MAX_INSTANCES,
    MAX_ITEMS,
    MAX_POINTS,
    MAX_RECORD_BYTES,
    MAX_TEXT,
    MIN_STEP,
    History,
    InstanceRegistry,
    MemoryInstances,
    instance_id,
    started_of,
    validate,
)


class Totals:
    def __init__(self) -> None:
        self.events = 0
        self.deliveries = 0

    def __call__(self) -> tuple[int, int]:
        return self.events, self.deliveries


def snapshot() -> dict[str, Any]:
    return {"listen": ["127.0.0.1:5050"], "connections": {"ws": 2, "chat": 1}, "subscribed": {"ws": 1, "chat": 0},
            "rooms": 3, "closes": {"4008": 1}, "bus": {"state": "embedded", "connected": True}}


def registry(clock: Clock, store: Any, name: str = "a", heartbeat: float = 5.0,
             totals: Totals | None = None) -> InstanceRegistry:
    return InstanceRegistry(clock, store, name, "1.2.3", heartbeat, totals or Totals(), snapshot)


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_the_heartbeat_writes_the_record_at_start_and_renews_it_before_its_ttl() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    reg = registry(clock, store)
    reg.start()
    found = result(store.load())
    assert [k for k, _ in found] == ["a"]
    record = json.loads(found[0][1])
    assert record["version"] == "1.2.3" and record["heartbeat"] == 5.0 and record["connections"] == {"ws": 2, "chat": 1}
    for _ in range(10):  # renewed every heartbeat: never expires while running
        clock.advance(5.0)
        assert [k for k, _ in result(store.load())] == ["a"]
    assert reg.written == 11


def test_a_record_not_renewed_expires_after_three_heartbeats() -> None:
    """A killed instance (its loop gone, nothing removed) disappears after HEARTBEAT_TTLS heartbeats."""
    clock = Clock()
    store = MemoryInstances(clock)
    reg = registry(clock, store)
    reg.start()
    reg._loop.stop()  # as if killed: no more heartbeats, no removal
    clock.advance(5.0 * HEARTBEAT_TTLS - 0.1)
    assert [k for k, _ in result(store.load())] == ["a"]
    clock.advance(0.2)
    assert result(store.load()) == []


def test_stop_removes_the_record_at_once() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    reg = registry(clock, store)
    reg.start()
    result(reg.stop())
    assert result(store.load()) == []
    clock.advance(60)
    assert result(store.load()) == []  # no heartbeat after stop


def test_the_history_counts_events_and_deliveries_per_heartbeat() -> None:
    clock = Clock()
    totals = Totals()
    reg = registry(clock, MemoryInstances(clock), totals=totals)
    reg.start()  # the baseline
    totals.events, totals.deliveries = 10, 25
    clock.advance(5.0)
    totals.events, totals.deliveries = 13, 25
    clock.advance(5.0)
    assert reg.record()["history"] == {"step": 5.0, "events": [10, 3], "deliveries": [25, 0]}


def test_the_history_keeps_ten_minutes_at_most_max_points() -> None:
    assert History(3).events.maxlen == 3
    clock = Clock()
    assert registry(clock, MemoryInstances(clock), heartbeat=5.0).history.events.maxlen == 120
    assert registry(clock, MemoryInstances(clock), heartbeat=0.1).history.events.maxlen == MAX_POINTS


def test_info_lists_every_live_instance_and_this_one_live() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    a, b = registry(clock, store, "a"), registry(clock, store, "b")
    a.start()
    b.start()
    answer = result(a.instances())
    assert answer["self"] == "a" and answer["registry"] == "embedded" and answer["skipped"] == 0
    assert [r["id"] for r in answer["instances"]] == ["a", "b"]
    result(b.stop())
    assert [r["id"] for r in result(a.instances())["instances"]] == ["a"]


def test_info_still_shows_this_instance_when_the_store_fails() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    reg = registry(clock, store)
    store.load = lambda: fail(ConnectionError("Redis down"))  # type: ignore[method-assign]
    answer = result(reg.instances())
    assert [r["id"] for r in answer["instances"]] == ["a"]
    assert "Redis down" in answer["error"]


def test_a_failing_store_never_stops_the_heartbeat() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    calls: list[str] = []

    def put(instance: str, record: bytes, ttl: float) -> Deferred[None]:
        calls.append(instance)
        return fail(ConnectionError("Redis down"))

    store.put = put  # type: ignore[method-assign]
    reg = registry(clock, store)
    reg.start()
    for _ in range(5):
        clock.advance(5.0)
    assert len(calls) == 6 and reg.written == 0


def test_the_heartbeat_must_be_more_than_zero() -> None:
    clock = Clock()
    with pytest.raises(ValueError):
        registry(clock, MemoryInstances(clock), heartbeat=0)


def test_instance_ids_are_the_name_or_host_pid_random() -> None:
    assert instance_id("gw-1") == "gw-1"
    generated = instance_id()
    assert generated.count(":") >= 2 and generated != instance_id()


GOOD = {"id": "x", "version": "1", "started": 1.0, "at": 2.0, "heartbeat": 5, "listen": ["a:1"],
        "connections": {"ws": 1, "chat": 2}, "subscribed": {"ws": 1}, "rooms": 4, "closes": {"4008": 2},
        "history": {"step": 5, "events": [1, 2], "deliveries": [3, 4]}, "bus": {"state": "connected",
                                                                                 "connected": True}}


def raw(record: Any) -> bytes:
    return json.dumps(record).encode()


def test_validate_keeps_a_good_record_as_it_is() -> None:
    assert validate("x", raw(GOOD)) == {**GOOD, "heartbeat": 5.0, "history": {**GOOD["history"], "step": 5.0}}


@pytest.mark.parametrize("bad", [
    b"not json", b"[1, 2]", b"\"text\"", raw({**GOOD, "id": "y"}), raw({k: v for k, v in GOOD.items() if k != "at"}),
    raw({**GOOD, "started": "yesterday"}), raw({**GOOD, "heartbeat": -1}), raw({**GOOD, "at": True}),
    b"[" * 100000 + b"]" * 100000, b"{\"id\": \"x\", \"pad\": \"" + b"a" * MAX_RECORD_BYTES + b"\"}",
])
def test_validate_refuses_what_is_not_a_record(bad: bytes) -> None:
    assert validate("x", bad) is None


def test_validate_caps_and_drops_what_does_not_fit() -> None:
    hostile = {**GOOD, "version": "v" * 10000, "listen": ["l" * 300] * 100 + [5],
               "connections": {f"e{i}": i for i in range(1000)}, "closes": {"4008": 1, "nope": 2, "123456": 3},
               "rooms": float("1e300"), "history": {"step": 1, "events": list(range(1000)), "deliveries": [1, "x"]},
               "bus": {"state": ["list"]}, "extra": {"deep": [1] * 100}, "subscribed": "many"}
    assert len(raw(hostile)) < MAX_RECORD_BYTES
    record = validate("x", raw(hostile))
    assert record is not None
    assert len(record["version"]) == MAX_TEXT
    assert len(record["listen"]) == MAX_ITEMS and all(len(a) == MAX_TEXT for a in record["listen"])
    assert len(record["connections"]) == MAX_ITEMS
    assert record["closes"] == {"4008": 1}
    assert record["rooms"] == 2**53
    assert "history" not in record  # one series mistyped: the history is left out
    assert "bus" not in record and "extra" not in record and "subscribed" not in record
    long = validate("x", raw({**GOOD, "history": {"step": 1, "events": list(range(5000)),
                                                  "deliveries": list(range(5000))}}))
    assert long is not None and len(long["history"]["events"]) == MAX_POINTS
    assert validate("x", b'{"id": "x", "started": 1, "at": NaN, "heartbeat": 5}') is None


def test_info_skips_records_that_are_not_valid() -> None:
    clock = Clock()
    store = MemoryInstances(clock)
    reg = registry(clock, store)
    result(store.put("evil", b"{\"id\": \"evil\"}", 60))
    result(store.put("bad", b"\xff\xfe", 60))
    answer = result(reg.instances())
    assert [r["id"] for r in answer["instances"]] == ["a"] and answer["skipped"] == 2


def test_validate_takes_integers_too_big_for_a_float_without_failing() -> None:
    """A record written by hand with a 400-digit integer made ``float()`` raise OverflowError: /info answered 503
    on every instance, and the operator page went blind (docs/protocol.md §1: a bad record is skipped)."""
    huge = "1" + "0" * 400
    assert validate("x", b'{"id": "x", "started": %s, "at": 2, "heartbeat": 5}' % huge.encode()) is not None
    record = validate("x", raw(GOOD)[:-1] + b', "rooms": %s, "connections": {"ws": %s}}' % ((huge.encode(),) * 2))
    assert record is not None and record["rooms"] == 2**53 and record["connections"] == {"ws": 2**53}
    assert validate("x", b'{"id": "x", "started": 1, "at": 2, "heartbeat": -%s}' % huge.encode()) is None
    clock = Clock()
    store = MemoryInstances(clock)
    result(store.put("evil", b'{"id": "evil", "started": %s, "at": 1, "heartbeat": 5}' % huge.encode(), 60))
    result(store.put("bad", b'{"id": "bad", "started": 1, "at": -%s, "heartbeat": 5}' % huge.encode(), 60))
    answer = result(registry(clock, store).instances())
    assert [r["id"] for r in answer["instances"]] == ["a", "evil"] and answer["skipped"] == 1



def test_validate_leaves_out_a_history_whose_per_second_rates_are_not_finite() -> None:
    """A ``step`` of 1e-300 s passed as a positive number: the page divided by it and drew Infinity and NaN (its
    summed charts broken, console errors). A step under MIN_STEP is not a heartbeat's."""
    for step in (1e-300, MIN_STEP / 2):
        record = validate("x", raw({**GOOD, "history": {"step": step, "events": [2**53], "deliveries": [1]}}))
        assert record is not None and "history" not in record
    kept = validate("x", raw({**GOOD, "history": {"step": MIN_STEP, "events": [2**53], "deliveries": [1]}}))
    assert kept is not None and math.isfinite(max(kept["history"]["events"]) / kept["history"]["step"] * MAX_INSTANCES)


def test_two_live_registries_with_one_name_warn_once_each_whatever_their_heartbeats() -> None:
    """One name, two processes (here two registries on one store, heartbeats of 1 s and 3 s): each warns once,
    though the faster one finds its own record between the other's heartbeats; a third registry of that name
    started after the first stops (its record left to expire) says nothing. ``started_of`` reads what ``put``
    replaced."""
    from twisted.logger import globalLogPublisher

    clock, events = Clock(), []
    store = MemoryInstances(clock)
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(1.0)
        fast = registry(clock, store, "twin", heartbeat=1.0)
        clock.advance(0.5)
        slow = registry(clock, store, "twin", heartbeat=3.0)
        fast.start()
        slow.start()
        for _ in range(60):
            clock.advance(0.5)
        warned = [e for e in events if "another live instance" in (e.get("log_format") or "")]
        assert [e["log_source"] for e in warned] == [fast, slow] or [e["log_source"] for e in warned] == [slow, fast]
        fast._loop.stop()
        slow._loop.stop()  # both killed: the record stays for its TTL
        clock.advance(0.5)
        again = registry(clock, store, "twin", heartbeat=1.0)
        again.start()
        for _ in range(20):
            clock.advance(0.5)
        assert again.written >= 10 and len([e for e in events if "another live instance" in (
            e.get("log_format") or "")]) == 2
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert result(MemoryInstances(clock).put("x", b'{"id":"x","started":12.5}', 1.0)) is None
    assert started_of(b'{"id":"x","version":"1","started":1796097580.2433205,"at":1}') == "1796097580.2433205"
    assert started_of(b'{"id":"x"}') is None
