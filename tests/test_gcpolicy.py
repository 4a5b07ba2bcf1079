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


def test_each_collection_is_timed_in_cpu_time_too_never_more_than_its_wall_time() -> None:
    registry = CollectorRegistry()
    policy = GcPolicy(Clock(), registry)
    policy.watch()
    kept = [[i] for i in range(50_000)]  # (a heap worth scanning: measurable CPU time)
    gc.collect()
    policy.stop()
    del kept
    count = registry.get_sample_value("wsgw_gc_pause_cpu_seconds_count", {"generation": "2"})
    assert count is not None and count >= 1
    assert count == registry.get_sample_value("wsgw_gc_pause_seconds_count", {"generation": "2"})
    cpu = registry.get_sample_value("wsgw_gc_pause_cpu_seconds_sum", {"generation": "2"})
    wall = registry.get_sample_value("wsgw_gc_pause_seconds_sum", {"generation": "2"})
    assert cpu is not None and wall is not None and 0 < cpu <= wall
    assert 0 < policy.longest_cpu[2] <= policy.longest[2]
    assert registry.get_sample_value("wsgw_gc_pause_longest_cpu_seconds", {"generation": "2"}) == policy.longest_cpu[2]


def test_time_spent_not_running_counts_in_wall_time_not_in_cpu_time() -> None:
    """60 ms pass on the wall clock at the start of one collection while the thread does not run (a collector
    callback after the policy's moves the policy's stopwatch on, as when the thread waits for a core on a loaded
    machine): the pause is those 60 ms of wall time, and the thread's CPU time (real) stays below half of it."""
    registry = CollectorRegistry()
    wall = [1000.0]
    policy = GcPolicy(Clock(), registry, stopwatch=lambda: wall[0])
    policy.watch()
    stall = [True]

    def stalled(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and stall[0]:
            stall[0] = False
            wall[0] += 0.06

    gc.callbacks.append(stalled)
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(stalled)
        policy.stop()
    assert stall == [False]
    assert policy.longest[0] == pytest.approx(0.06)
    assert policy.longest_cpu[0] < 0.03
    count = registry.get_sample_value("wsgw_gc_pause_seconds_count", {"generation": "0"})
    assert count is not None and count >= 1
    assert registry.get_sample_value("wsgw_gc_pause_seconds_sum", {"generation": "0"}) == pytest.approx(0.06)
    assert registry.get_sample_value("wsgw_gc_pause_seconds_bucket", {"generation": "0", "le": "0.05"}) == count - 1
    assert registry.get_sample_value("wsgw_gc_pause_cpu_seconds_bucket", {"generation": "0", "le": "0.05"}) == count


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
    assert value(samples, "wsgw_gc_pause_cpu_seconds_count", generation="2") >= 1
    assert value(samples, "wsgw_gc_pause_longest_cpu_seconds", generation="2") > 0
