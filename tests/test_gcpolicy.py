"""The garbage-collection policy (``wsgw.gcpolicy``): pauses timed into /metrics, long-lived objects frozen."""

from __future__ import annotations

import gc

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from tests.support.daemon import StartGateway, scrape, value
from wsgw.gcpolicy import GcPolicy

ADMIN = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def thawed():  # type: ignore[no-untyped-def]
    """No automatic collection during the test (only the test's own), and whatever it freezes is thawed after
    it (the test process's heap is not the daemon's)."""
    gc.disable()
    yield
    gc.enable()
    gc.unfreeze()


def test_every_collection_is_timed_by_generation_until_stopped() -> None:
    registry = CollectorRegistry()
    policy = GcPolicy(Clock(), registry)
    policy.watch()
    policy.watch()  # (once only)
    gc.collect(0)
    gc.collect()
    count = registry.get_sample_value("wsgw_gc_pause_seconds_count", {"generation": "2"})
    assert count is not None and count >= 1
    assert registry.get_sample_value("wsgw_gc_pause_seconds_count", {"generation": "0"}) >= 1  # type: ignore[operator]
    assert policy.longest[2] > 0
    policy.stop()
    gc.collect()
    assert registry.get_sample_value("wsgw_gc_pause_seconds_count", {"generation": "2"}) == count


@pytest.mark.usefixtures("thawed")
def test_it_freezes_at_start_then_only_after_objects_were_promoted() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    policy = GcPolicy(clock, registry)
    policy.start_freezing(0.25)
    assert policy.freezes == 1 and gc.get_freeze_count() > 0
    assert registry.get_sample_value("wsgw_gc_frozen_objects") == gc.get_freeze_count()
    gc.collect(0)  # (a young collection promotes nothing to the oldest generation)
    clock.advance(0.25)
    assert policy.freezes == 1
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]
    gc.collect(1)  # (what the collector does by itself after ten young collections)
    assert policy.freezes == 1  # (not inside the collection: at the next check)
    clock.advance(0.25)
    assert policy.freezes == 2
    assert gc.get_freeze_count() >= frozen + 1000
    assert not gc.get_objects(generation=2)
    clock.advance(0.25)
    assert policy.freezes == 2
    policy.stop()
    assert not clock.getDelayedCalls()
    del kept


@pytest.mark.usefixtures("thawed")
def test_while_the_reactor_is_stuck_in_one_turn_the_collector_callback_freezes_what_it_promotes() -> None:
    """No check for more than twice the interval (a long reactor turn): each generation-1 collection's objects
    are frozen by the callback at its end, so that no full collection has them all to scan."""
    clock = Clock()
    policy = GcPolicy(clock)
    policy.start_freezing(0.25)
    gc.collect(1)
    assert policy.overdue_freezes == 0  # (the check is not late)
    clock.rightNow += 0.6  # time passes, the reactor runs nothing
    kept = [[i] for i in range(1000)]
    gc.collect(1)
    assert policy.overdue_freezes == 1
    assert not gc.get_objects(generation=2)  # frozen, not collected
    clock.advance(0.25)  # the check runs again: back to collecting first
    gc.collect(1)
    assert policy.overdue_freezes == 1
    policy.stop()
    del kept


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_pauses_and_the_frozen_objects(gateway: StartGateway) -> None:
    daemon = await gateway(admin=ADMIN)
    gc.collect()
    samples = await scrape(daemon)
    assert value(samples, "wsgw_gc_pause_seconds_count", generation="2") >= 1
    assert ("wsgw_gc_frozen_objects", ()) in samples
    assert value(samples, "wsgw_gc_pause_longest_seconds", generation="2") > 0
