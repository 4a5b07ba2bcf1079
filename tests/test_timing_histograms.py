"""The histograms /metrics measures as they happen (wsgw/web/timing.py) on plain numbers: the same exposition as
prometheus-client's ``Histogram`` fed the same observations (text and OpenMetrics, merged by the supervisor the
same), and no prometheus-client code, no lock, on the per-event path (issue 13, goal 2)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from twisted.internet.task import Clock

from wsgw.web.timing import ACCESS_BUCKETS, HOLD_BUCKETS, LAG_BUCKETS, PlainHistogram, TimedListener, histograms
from wsgw.workers.aggregate import Aggregate, Families, parse

pytestmark = pytest.mark.unit

# Every kind of value: bounds exactly, between, below the first, above the last, zero, negative, infinite.
OBSERVED = [0.0, 0.0005, 0.0004, 0.001, 0.0011, 0.003, 0.01, 0.5, 0.75, 1.0, 2.4999, 2.5, 4.0, 5.0, 9.9, 10.0,
            30.0, 31.0, 1e6, -0.25, math.inf, 1e-9, 0.02, 0.0099, 0.1, 0.25, 0.05]


class Holder:
    """What ``histograms`` sets observers on (the node handler, the events endpoint, the access resolver)."""

    def __init__(self) -> None:
        self.observe_merge: Callable[[float], object] | None = None
        self.observe_pacing: Callable[[float], object] | None = None
        self.observe: Callable[[float], object] | None = None


def reference(registry: CollectorRegistry, topics: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """prometheus-client's own histograms with wsgw's names, help texts and buckets (the documentation read off
    ours, so that a changed text cannot pass unnoticed: the test below compares it with the literal)."""
    ours = CollectorRegistry(auto_describe=False)
    holder = Holder()
    histograms(ours, Clock(), topics, holder, holder, holder)
    docs = {family.name: family.documentation for family in ours.collect()}
    lag = Histogram("wsgw_delivery_lag_seconds", docs["wsgw_delivery_lag_seconds"], ["topic"], registry=registry,
                    buckets=LAG_BUCKETS)
    plain = {name: Histogram(name, docs[name], registry=registry, buckets=buckets)
             for name, buckets in (("wsgw_node_merge_delay_seconds", HOLD_BUCKETS),
                                   ("wsgw_pacing_delay_seconds", HOLD_BUCKETS),
                                   ("wsgw_access_request_seconds", ACCESS_BUCKETS))}
    return {topic: lag.labels(topic=topic) for topic in topics}, plain


def fed(monkeypatch: pytest.MonkeyPatch) -> tuple[CollectorRegistry, CollectorRegistry]:
    """Two registries, ours and prometheus-client's, made at the same (pinned) time and fed the same values: ours
    reads the clock it is given, prometheus-client ``time.time()``."""
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.25)
    clock = Clock()
    clock.advance(1_790_000_000.25)
    topics = ["tree", "idm", "tasks"]
    ours, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    holder = Holder()
    children = histograms(ours, clock, topics, holder, holder, holder)
    their_children, their_plain = reference(theirs, topics)
    for n, value in enumerate(OBSERVED):
        topic = topics[n % 2]  # "tasks" stays at zero: a series made but never observed
        children[topic].observe(value)
        their_children[topic].observe(value)
        for observe, name in ((holder.observe_merge, "wsgw_node_merge_delay_seconds"),
                              (holder.observe_pacing, "wsgw_pacing_delay_seconds"),
                              (holder.observe, "wsgw_access_request_seconds")):
            if n % 3 or name == "wsgw_access_request_seconds":
                assert observe is not None
                observe(value)
                their_plain[name].observe(value)
    return ours, theirs


def test_the_exposition_is_prometheus_clients_own_for_the_same_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text format and OpenMetrics: byte for byte what prometheus-client's Histogram writes (names, help,
    type, buckets, counts, sums, ``_created``)."""
    ours, theirs = fed(monkeypatch)
    assert generate_latest(ours) == generate_latest(theirs)
    assert generate_openmetrics(ours) == generate_openmetrics(theirs)
    text = generate_latest(ours).decode()
    assert 'wsgw_delivery_lag_seconds_bucket{le="0.0005",topic="tree"} 2.0' in text
    assert 'wsgw_delivery_lag_seconds_count{topic="tasks"} 0.0' in text


def test_the_help_texts_are_unchanged() -> None:
    registry = CollectorRegistry(auto_describe=False)
    holder = Holder()
    histograms(registry, Clock(), ["tree"], holder, holder, holder)
    docs = {family.name: (family.type, family.documentation) for family in registry.collect()}
    assert docs["wsgw_access_request_seconds"] == ("histogram", "Duration of each request to the access backend "
                                                  "(answered, refused, failed or timed out).")
    assert docs["wsgw_delivery_lag_seconds"][1].startswith("From a bus event's receipt to its frames handed")
    assert docs["wsgw_pacing_delay_seconds"][1].startswith("Per node-event frame held by a socket's pacing")
    assert docs["wsgw_node_merge_delay_seconds"][1].startswith("Per merged node event (one per node and window")


def test_two_workers_merge_as_prometheus_clients_histograms_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's merge of two workers' /metrics (wsgw/workers/aggregate.py) is the same for ours."""
    ours, theirs = fed(monkeypatch)
    merged = []
    for registry in (ours, theirs):
        aggregate = Aggregate()
        for slot in (0, 1):
            aggregate.record(slot, 100 + slot, parse(generate_latest(registry).decode()))
        registry_of_merge = CollectorRegistry(auto_describe=False)
        registry_of_merge.register(Families(lambda aggregate=aggregate: aggregate.merged([0, 1])))
        merged.append(generate_latest(registry_of_merge).decode())
    assert merged[0] == merged[1]
    assert 'wsgw_delivery_lag_seconds_count{topic="tree"} 28.0' in merged[0]


def test_the_per_event_path_calls_no_prometheus_client_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observing takes no lock and touches no prometheus-client value: with its values made to raise, every
    observer on the event path still works, and the scrape shows what was observed."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("prometheus-client code on the per-event path")

    registry = CollectorRegistry(auto_describe=False)
    holder = Holder()
    clock = Clock()
    children = histograms(registry, clock, ["tree"], holder, holder, holder)
    monkeypatch.setattr(prometheus_values.MutexValue, "inc", refuse)
    monkeypatch.setattr(prometheus_values.MutexValue, "set", refuse)
    timed = TimedListener(lambda topic, payload: clock.advance(0.003), clock, children)
    timed("tree", b"{}")
    timed("idm", b"{}")  # a topic without a series: not observed
    for observe in (holder.observe_merge, holder.observe_pacing, holder.observe):
        assert observe is not None
        observe(0.2)
    monkeypatch.undo()
    text = generate_latest(registry).decode()
    assert 'wsgw_delivery_lag_seconds_bucket{le="0.0025",topic="tree"} 0.0' in text
    assert 'wsgw_delivery_lag_seconds_bucket{le="0.005",topic="tree"} 1.0' in text
    assert "wsgw_pacing_delay_seconds_count 1.0" in text
    assert "wsgw_node_merge_delay_seconds_sum 0.2" in text
    assert 'wsgw_access_request_seconds_bucket{le="0.25"} 1.0' in text


def test_a_plain_histogram_refuses_unsorted_buckets_and_adds_infinity() -> None:
    with pytest.raises(ValueError):
        PlainHistogram("h", "doc", (0.5, 0.1), Clock())
    histogram = PlainHistogram("h", "doc", (0.5, 1.0), Clock())
    histogram.observe(7.0)
    (family,) = histogram.collect()
    assert [(s.labels["le"], s.value) for s in family.samples if s.name == "h_bucket"] == [
        ("0.5", 0.0), ("1.0", 0.0), ("+Inf", 1.0)]


def test_each_series_is_created_at_the_time_its_clock_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_created`` is the injected clock's time when the series is made (at construction unlabelled, at its
    first ``child`` labelled), never the process's wall clock."""
    monkeypatch.setattr(time, "time", lambda: pytest.fail("time.time() read"))
    clock = Clock()
    clock.advance(1_700_000_000.5)
    plain = PlainHistogram("p", "doc", (1.0,), clock)
    labelled = PlainHistogram("l", "doc", (1.0,), clock, ["topic"])
    clock.advance(30)
    labelled.child("tree").observe(0.5)
    created = {(s.name, tuple(s.labels.items())): s.value for h in (plain, labelled) for f in h.collect()
               for s in f.samples if s.name.endswith("_created")}
    assert created == {("p_created", ()): 1_700_000_000.5, ("l_created", (("topic", "tree"),)): 1_700_000_030.5}
