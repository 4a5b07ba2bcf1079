"""The daemon's garbage-collection policy: every collection's pause measured, long-lived objects frozen.

CPython's cycle collector stops the process for as long as it takes to scan
the generation it collects. A full (generation 2) collection scans every
tracked object that survived two younger collections: at 10,000 subscribed
sockets about 500,000 objects, 300-600 ms during which no frame is written
(bench/RESULTS.md, "Memory and GC"; issue 13, goal 4: no pause over 50 ms).

Objects ``gc.freeze()`` moved to the permanent generation are never scanned
again, and freezing costs no scan (the generations' lists are spliced). A frozen
object is still freed by reference counting when its last reference goes; only
one that ends in a reference cycle is never freed (until ``gc.unfreeze()``). A
closed socket leaves no cycle (``tests/test_session_gc.py``), so its objects may
be frozen while it lives.

``GcPolicy``:

- ``watch()`` times every collection (``gc.callbacks``, start to stop) into the
  histograms ``wsgw_gc_pause_seconds{generation}`` (wall clock: how long the
  daemon wrote nothing) and ``wsgw_gc_pause_cpu_seconds{generation}`` (CPU
  time of the thread that collects, ``time.thread_time``: the collector's own
  work). Wall includes time the process waited for a core: on a loaded machine
  young collections of 1-15 ms of CPU showed as 66-153 ms of wall
  (bench/RESULTS.md, "Memory and GC", and its "CPU time per pause"); the CPU
  figure is the one the collector's work, and so the policy, answers for
  (issue 13, goal 4). Reading the thread's CPU clock costs ~0.5 us, twice per
  collection;
- ``start_freezing(interval)`` collects and freezes the start-up heap; then,
  every ``interval`` seconds, if a collection of generation 1 or 2 ran since
  (objects were promoted to the oldest generation: they outlived two
  collections), it collects what is not frozen and freezes what is left. What
  is not frozen stays small (what a quarter of a second promotes: ~10,000
  objects during a connect storm), so that collection, and the full
  collections CPython starts by itself, scan that instead of the whole heap.
  Nothing happens while the daemon is idle. (The collector's callback only
  sets a flag: it runs inside any allocation, where calling into the reactor
  is not safe.) When the reactor is busy with one long turn (a connect storm
  of thousands of sockets makes turns of seconds), the check cannot run, and
  the promoted objects would pile up until a full collection scanned them
  all: past ``2 * interval`` seconds without a check, the callback itself
  freezes at the end of each generation-1 collection, without collecting the
  older generation first (safe there: the collection is over, and freezing
  only moves lists), until the check runs again.
  ``wsgw_gc_pause_longest_seconds{generation}`` and
  ``wsgw_gc_pause_longest_cpu_seconds{generation}`` are the longest since start
  (the longest wall and the longest CPU time: not always the same collection).
  ``wsgw_gc_frozen_objects`` is the size of the permanent generation: it falls
  back when the sockets frozen with it close, and its growth while the number of
  sockets stays flat would be a leak (the soak checks it: bench/RESULTS.md).
  (Counting it walks the permanent generation: a few ms per scrape at 10,000
  sockets.)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Gauges(Collector):
    def __init__(self, policy: GcPolicy) -> None:
        self._policy = policy

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("wsgw_gc_frozen_objects",
                                "Objects in the garbage collector's permanent generation (gc.freeze), never scanned "
                                "by a collection; freed by reference counting when they go.", gc.get_freeze_count())
        for name, text, pauses in (
                ("wsgw_gc_pause_longest_seconds", "The longest pause of a garbage collection since start, in "
                 "wall-clock time (which includes time waiting for a CPU), by the oldest generation collected.",
                 self._policy.longest),
                ("wsgw_gc_pause_longest_cpu_seconds", "The most CPU time one garbage collection took since start (the "
                 "collector's work, without time waiting for a CPU), by the oldest generation collected.",
                 self._policy.longest_cpu)):
            family = GaugeMetricFamily(name, text, labels=["generation"])
            for generation, pause in enumerate(pauses):
                family.add_metric([str(generation)], pause)
            yield family


class GcPolicy:
    """The collector's pauses (histograms in ``registry``, when given) and the periodic freeze (see module doc).

    ``clock`` (the reactor) runs the freeze check; ``stopwatch`` (seconds, monotonic: ``time.perf_counter``) times
    each pause's wall time, not ``clock``, whose ``seconds()`` is the system's wall clock, which can be stepped
    (NTP) during a collection."""

    def __init__(self, clock: IReactorTime, registry: CollectorRegistry | None = None,
                 stopwatch: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._stopwatch = stopwatch
        self._started = 0.0
        self._started_cpu = 0.0
        self._pauses: Any = None
        if registry is not None:
            self._pauses = Histogram(
                "wsgw_gc_pause_seconds",
                "Time the process was stopped by each garbage collection (gc.callbacks, start to stop), in "
                "wall-clock time, which includes time waiting for a CPU on a loaded machine, by the oldest "
                "generation collected (2: a full collection).",
                ["generation"], registry=registry, buckets=PAUSE_BUCKETS)
            cpu = Histogram(
                "wsgw_gc_pause_cpu_seconds",
                "CPU time of the collecting thread during each garbage collection (gc.callbacks, start to stop): "
                "the collector's work, without time waiting for a CPU (see wsgw_gc_pause_seconds for the wall "
                "clock), by the oldest generation collected (2: a full collection).",
                ["generation"], registry=registry, buckets=PAUSE_BUCKETS)
            self._children = [self._pauses.labels(generation=str(g)) for g in range(3)]
            self._cpu_children = [cpu.labels(generation=str(g)) for g in range(3)]
            registry.register(_Gauges(self))
        self.longest = [0.0, 0.0, 0.0]  # seconds of wall clock, by generation, since start
        self.longest_cpu = [0.0, 0.0, 0.0]  # seconds of the thread's CPU time, by generation, since start
        self.freezes = 0
        self.overdue_freezes = 0  # freezes by the collector's callback, during long reactor turns
        self._last_freeze = 0.0
        self._overdue = 0.0
        self._promoted = False
        self._in_freeze = False
        self._loop: LoopingCall | None = None

    # -- pauses ------------------------------------------------------------

    def watch(self) -> None:
        """Time every collection from now on (until ``stop``)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._stopwatch()
            self._started_cpu = time.thread_time()  # (callbacks run in the collecting thread; others' CPU is not its)
            return
        cpu = time.thread_time() - self._started_cpu
        pause = self._stopwatch() - self._started
        generation = info["generation"]
        if pause > self.longest[generation]:
            self.longest[generation] = pause
        if cpu > self.longest_cpu[generation]:
            self.longest_cpu[generation] = cpu
        if self._pauses is not None:
            self._children[generation].observe(pause)
            self._cpu_children[generation].observe(cpu)
        if generation > 0 and not self._in_freeze:
            self._promoted = True
            if self._loop is not None and self._clock.seconds() > self._last_freeze + self._overdue:
                gc.freeze()  # a long reactor turn: no check since (see the module docstring)
                self.overdue_freezes += 1

    # -- freezing ----------------------------------------------------------

    def start_freezing(self, interval: float) -> None:
        """Collect and freeze now (the start-up heap), then every ``interval`` seconds if objects were promoted
        since (``watch`` too)."""
        self.freeze()
        self.watch()
        self._overdue = 2 * interval
        self._loop = LoopingCall(self.freeze_if_promoted)
        self._loop.clock = self._clock
        self._loop.start(interval, now=False)

    def freeze_if_promoted(self) -> bool:
        """``freeze()`` if a collection of generation 1 or 2 ran since the last freeze; returns whether it did."""
        self._last_freeze = self._clock.seconds()
        if not self._promoted:
            return False
        self.freeze()
        return True

    def freeze(self) -> None:
        """Collect what is not frozen (its garbage goes now), then freeze the rest."""
        self._in_freeze = True
        try:
            gc.collect()
            gc.freeze()
        finally:
            self._in_freeze = False
        self._promoted = False
        self._last_freeze = self._clock.seconds()
        self.freezes += 1

    def stop(self) -> None:
        """No more timing nor freezing (what is frozen stays frozen)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
