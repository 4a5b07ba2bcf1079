"""Tests of the per-node idle-window merge (wsgw.events.batching)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from twisted.internet.task import Clock

from wsgw.events.batching import Merge, NodeBatcher, merge_key


def merge_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the (mergeable, same-node) ``events`` in order, as a window would."""
    merge = Merge(events[0])
    for event in events[1:]:
        merge.fold(event)
    return merge.event()


def ev(kind: str | None = None, uuid: str = "n1", **target: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"Target": {"Uuid": uuid, **target}}
    if kind is not None:
        event["Type"] = kind
    return event


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


# -- merge rules --------------------------------------------------------------------------------


def test_any_create_makes_the_merge_a_create() -> None:
    """A merge holding a CREATE is a CREATE, wherever the CREATE came."""
    assert merge_events([ev("UPDATE_META"), ev(None), ev("UPDATE_CONTENT")])["Type"] == "CREATE"


def test_update_content_wins_over_update_meta() -> None:
    """Without a CREATE, a merge holding an UPDATE_CONTENT is an UPDATE_CONTENT."""
    assert merge_events([ev("UPDATE_CONTENT"), ev("UPDATE_META")])["Type"] == "UPDATE_CONTENT"


def test_otherwise_the_last_type_is_kept() -> None:
    """A merge of UPDATE_META events only is an UPDATE_META."""
    assert merge_events([ev("UPDATE_META"), ev("UPDATE_META")])["Type"] == "UPDATE_META"


def test_target_is_the_first_with_later_fields_overwriting() -> None:
    """Later Etag, Type, MTime and Size overwrite the first Target; other fields stay the first's."""
    first = ev(None, Path="ds/a.txt", Etag="e1", Type="LEAF", MTime="1", Size="1", Mode=420)
    later = ev("UPDATE_CONTENT", Path="ds/renamed.txt", Etag="e2", MTime="2", Size="20", Mode=511)
    merged = merge_events([first, later])["Target"]
    assert merged == {"Uuid": "n1", "Path": "ds/a.txt", "Etag": "e2", "Type": "LEAF", "MTime": "2",
                      "Size": "20", "Mode": 420}


def test_fields_absent_from_a_later_target_are_kept() -> None:
    """A later Target without Size or MTime does not erase the known ones."""
    merged = merge_events([ev(None, Size="10", MTime="5"), ev("UPDATE_META", Etag="e9")])["Target"]
    assert (merged["Size"], merged["MTime"], merged["Etag"]) == ("10", "5", "e9")


def test_empty_path_is_filled_by_a_later_one() -> None:
    """A first Target with an empty Path takes the Path of a later event."""
    merged = merge_events([ev("UPDATE_META", Path=""), ev("UPDATE_META", Path="ds/x")])["Target"]
    assert merged["Path"] == "ds/x"


def test_meta_store_keys_are_merged_in() -> None:
    """Later MetaStore keys are added to, and override, the first Target's MetaStore."""
    merged = merge_events([
        ev(None, MetaStore={"a": "1", "b": "2"}),
        ev("UPDATE_META", MetaStore={"b": "3", "c": "4"}),
    ])["Target"]
    assert merged["MetaStore"] == {"a": "1", "b": "3", "c": "4"}


def test_temporary_etag_is_replaced_by_the_last_real_one() -> None:
    """An Etag of "temporary" coming after real ones is replaced by the last real one."""
    merged = merge_events([ev(None, Etag="real1"), ev("UPDATE_CONTENT", Etag="real2"),
                           ev("UPDATE_META", Etag="temporary")])
    assert merged["Target"]["Etag"] == "real2"


def test_temporary_etag_is_overwritten_by_a_later_real_one() -> None:
    """A first "temporary" Etag gives way to a later real Etag."""
    merged = merge_events([ev(None, Etag="temporary"), ev("UPDATE_CONTENT", Etag="real")])
    assert merged["Target"]["Etag"] == "real"


def test_temporary_etag_stays_when_no_real_one_was_seen() -> None:
    """Without any real Etag, "temporary" is all there is."""
    assert merge_events([ev(None, Etag="temporary"), ev("UPDATE_META")])["Target"]["Etag"] == "temporary"


def test_source_is_the_last_events() -> None:
    """The merged Source is the last event's, absent when the last event has none."""
    a, b, c = ev(None), ev("UPDATE_META"), ev("UPDATE_META")
    a["Source"] = {"Uuid": "n1", "Path": "ds/a"}
    b["Source"] = {"Uuid": "n1", "Path": "ds/b"}
    assert merge_events([a, b])["Source"] == {"Uuid": "n1", "Path": "ds/b"}
    assert "Source" not in merge_events([a, b, c])


def test_silent_only_when_every_event_was_silent_and_optimistic_when_any() -> None:
    """One audible event makes the merge audible; one optimistic event makes it optimistic."""
    silent = {**ev(None), "Silent": True}
    loud = ev("UPDATE_META")
    optimistic = {**ev("UPDATE_META"), "Optimistic": True}
    assert merge_events([silent, {**silent}]).get("Silent") is True
    assert "Silent" not in merge_events([silent, loud])
    assert merge_events([loud, optimistic]).get("Optimistic") is True
    assert "Optimistic" not in merge_events([loud, loud])


def test_merging_never_modifies_the_folded_events() -> None:
    """The events folded into a merge are left exactly as they were."""
    events = [ev(None, Etag="a", MetaStore={"k": "1"}), ev("UPDATE_META", Etag="temporary", Path="p",
                                                            MetaStore={"j": "2"})]
    before = copy.deepcopy(events)
    merge_events(events)
    assert events == before


def test_merge_counts_its_events() -> None:
    """A Merge counts the events folded into it."""
    merge = Merge(ev(None))
    merge.fold(ev("UPDATE_META"))
    assert merge.count == 2


def test_merge_key_only_for_mergeable_types_with_a_target_uuid() -> None:
    """CREATE, UPDATE_CONTENT and UPDATE_META with a Target Uuid are merged; nothing else is."""
    assert merge_key(ev(None)) == "n1"
    assert merge_key(ev("UPDATE_CONTENT")) == "n1"
    assert merge_key(ev("UPDATE_META")) == "n1"
    assert merge_key(ev("DELETE")) is None
    assert merge_key(ev("UPDATE_PATH")) is None
    assert merge_key(ev("UPDATE_USER_META")) is None
    assert merge_key({"Type": "UPDATE_META", "Source": {"Uuid": "n1"}}) is None
    assert merge_key({"Target": {"Path": "a"}}) is None


# -- windows on the clock -----------------------------------------------------------------------


def test_each_event_restarts_the_window() -> None:
    """A node's merge goes out one window after its last event, once."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out)
    assert batcher.add("n1", ev(None, Size="1")) is False
    clock.advance(0.9)
    assert batcher.add("n1", ev("UPDATE_CONTENT", Size="2")) is True
    clock.advance(0.9)
    assert out.events == []
    clock.advance(0.1)
    assert [(e["Type"], e["Target"]["Size"]) for e in out.events] == [("CREATE", "2")]
    clock.advance(5)
    assert len(out.events) == 1 and len(batcher) == 0


def test_nodes_have_separate_windows() -> None:
    """Events of different nodes are not merged together."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out)
    batcher.add("n1", ev(None, uuid="n1"))
    clock.advance(0.5)
    batcher.add("n2", ev(None, uuid="n2"))
    clock.advance(0.5)
    assert [e["Target"]["Uuid"] for e in out.events] == ["n1"]
    clock.advance(0.5)
    assert [e["Target"]["Uuid"] for e in out.events] == ["n1", "n2"]


def test_flush_node_delivers_now_and_cancels_the_timer() -> None:
    """flush_node delivers the node's merge at once and leaves no timer behind."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out)
    batcher.add("n1", ev(None))
    batcher.flush_node("n1")
    batcher.flush_node("n1")  # nothing pending any more: no-op
    assert len(out.events) == 1
    assert clock.getDelayedCalls() == []
    assert "n1" not in batcher


def test_flush_delivers_everything_oldest_first() -> None:
    """flush (shutdown) delivers every pending merge, oldest first."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out)
    for uuid in ("a", "b", "c"):
        batcher.add(uuid, ev(None, uuid=uuid))
    batcher.flush()
    assert [e["Target"]["Uuid"] for e in out.events] == ["a", "b", "c"]
    assert clock.getDelayedCalls() == [] and len(batcher) == 0


def test_a_node_that_never_stops_changing_is_flushed_after_max_hold() -> None:
    """A steady stream of events for one node still goes out every max_hold seconds."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out, max_hold=3.0)
    for _ in range(7):
        batcher.add("n1", ev("UPDATE_META"))
        clock.advance(0.5)
    # events at t=0..2.5 merge and go out at t=3.0 (not at t=3.5); the one at t=3.0 opens a new window
    assert len(out.events) == 1
    assert len(batcher) == 1
    clock.advance(10)
    assert len(out.events) == 2 and len(batcher) == 0


def test_pending_nodes_are_bounded() -> None:
    """Beyond max_pending open windows, the oldest is flushed to make room."""
    clock, out = Clock(), Collector()
    batcher = NodeBatcher(clock, 1.0, out, max_pending=2)
    for uuid in ("a", "b", "c"):
        batcher.add(uuid, ev(None, uuid=uuid))
    assert [e["Target"]["Uuid"] for e in out.events] == ["a"]
    assert len(batcher) == 2


def test_a_failing_delivery_is_logged_and_does_not_break_the_batcher() -> None:
    """An exception from deliver on expiry is caught; later windows still work."""
    clock = Clock()
    calls: list[str] = []

    def deliver(event: dict[str, Any]) -> None:
        calls.append(event["Target"]["Uuid"])
        if len(calls) == 1:
            raise RuntimeError("boom")

    batcher = NodeBatcher(clock, 1.0, deliver)
    batcher.add("a", ev(None, uuid="a"))
    clock.advance(1)
    batcher.add("b", ev(None, uuid="b"))
    clock.advance(1)
    assert calls == ["a", "b"]


def test_window_must_be_positive() -> None:
    """A zero window is refused: batching is disabled by not using a batcher."""
    with pytest.raises(ValueError):
        NodeBatcher(Clock(), 0, Collector())


def test_each_merged_event_is_observed_once_with_its_time_since_the_first_event() -> None:
    """``observe`` gets one value per merged event handed on: from its first event to its delivery."""
    clock = Clock()
    out: list[dict[str, Any]] = []
    batcher = NodeBatcher(clock, 1.0, out.append)
    delays: list[float] = []
    batcher.observe = delays.append
    batcher.add("n1", {"Type": "UPDATE_CONTENT", "Target": {"Uuid": "n1"}})
    clock.advance(0.5)
    batcher.add("n1", {"Type": "UPDATE_CONTENT", "Target": {"Uuid": "n1"}})
    clock.advance(1.0)
    assert len(out) == 1 and delays == [1.5]
