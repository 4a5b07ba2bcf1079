"""One ``/metrics`` for N worker processes: the workers' expositions merged by the supervisor.

Why not prometheus-client's multiprocess mode: it covers metric objects that
write every change to a memory-mapped file (``Counter.inc()`` on the per-event
path), while the gateway's metrics cost nothing per event: ``GatewayCollector``
reads counters the core keeps anyway, at scrape time (wsgw/web/metrics.py), and
custom collectors are exactly what multiprocess mode cannot see. So the
supervisor scrapes each worker's own ``/metrics`` over a private UNIX socket
(wsgw/workers/operator.py) and merges them here.

The merge (every sample keyed by its name and labels):

- counters, histograms and summaries are summed, and stay monotonic across a
  worker's restart: the last values scraped from a worker that ended are kept
  (``retired``) and added to every later answer, so Prometheus never sees the
  sum fall (what the dead worker counted after its last scrape is lost, as a
  single process's counts after its last scrape are at a crash);
- gauges are summed over the workers that answered this scrape, except those
  naming a state rather than an amount: ``MINIMUM`` ones (1 only if every
  worker's bus is up; the smallest per-process limit; the oldest start) and
  ``MAXIMUM`` ones (a stalled connection anywhere; revocations, which every
  worker holds the same copy of; the longest GC pause of any worker);
- ``SHARED`` counters count the bus stream every worker reads whole (each
  event, for its own sockets): not their N-fold sum but the stream's count,
  the largest of the workers' estimates of it: a process's estimate is its own
  count plus a ``base``: 0 for the processes started with the supervisor (they
  read the same stream from the start), and for a process started again in a
  worker's slot, fixed when its sample is first seen: the count of the last
  merge (all answers scraped before this one) less what the process had counted
  by then (at least 0). So the count goes on with the survivors' increase when
  the process with the largest count ends (it is not hidden until a survivor's
  own count passes it), an event is never counted twice (what a new process
  read before its first scrape is within the last merge's count or not
  counted), and an ended process's last estimate is kept as a floor (monotonic);
- ``_created`` samples (a per-process timestamp) are left out, and so are the
  workers' samples about their private operator listener (``listener="operator"``):
  the supervisor's own listener is the operator listener.

Shapes: an exposition is a list of ``prometheus_client`` ``Metric`` families as
``text_string_to_metric_families`` parses them; ``Key`` is ``(sample name,
sorted (label, value) pairs)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

Key = tuple[str, tuple[tuple[str, str], ...]]

MINIMUM = frozenset({"wsgw_bus_up", "wsgw_redis_connected", "process_max_fds", "process_start_time_seconds"})
MAXIMUM = frozenset({"wsgw_redis_stalled", "wsgw_revocations", "wsgw_gc_pause_longest_seconds",
                     "wsgw_gc_pause_longest_cpu_seconds"})
SHARED = frozenset({"wsgw_bus_events_received_total", "wsgw_bus_events_malformed_total", "wsgw_bus_events_failed_total",
                    "wsgw_control_messages_total", "wsgw_reauthorization_events_total"})
CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def parse(text: str) -> list[Metric]:
    """The families of one Prometheus text exposition (ValueError when it is not one)."""
    return list(text_string_to_metric_families(text))


def _kept(sample: Any, private: bool) -> bool:
    if sample.name.endswith("_created"):
        return False
    return not (private and sample.labels.get("listener") == "operator")


def _key(sample: Any) -> Key:
    return sample.name, tuple(sorted(sample.labels.items()))


class Aggregate:
    """The workers' last expositions, by worker slot, and the counts of the worker processes that ended."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, list[Metric]]] = {}  # slot -> (pid, its last exposition)
        self._bases: dict[int, dict[Key, float]] = {}  # slot -> its process's SHARED bases (see the module's doc)
        self._first: dict[int, int] = {}  # slot -> the pid of its first process (started with the supervisor)
        self._high: dict[Key, float] = {}  # SHARED sample -> its count at the last merge
        self._retired: dict[Key, float] = {}  # cumulative samples of ended processes, summed
        self._shapes: dict[str, tuple[str, str, str]] = {}  # family name -> (type, help, unit)
        self._family_of: dict[str, str] = {}  # sample name -> family name

    def record(self, slot: int, pid: int, families: list[Metric]) -> None:
        """``families``, just scraped from worker ``slot`` (process ``pid``); a new pid in the slot retires the
        counts of the previous one."""
        previous = self._last.get(slot)
        if previous is not None and previous[0] != pid:
            self._retire(slot, previous[1])
        bases = self._bases.setdefault(slot, {})
        replacing = self._first.setdefault(slot, pid) != pid
        for family in families:
            for sample in family.samples:
                if sample.name in SHARED and _key(sample) not in bases:
                    key = _key(sample)
                    bases[key] = max(0.0, self._high.get(key, 0.0) - sample.value) if replacing else 0.0
        self._last[slot] = (pid, families)
        for family in families:
            self._shapes.setdefault(family.name, (family.type, family.documentation, family.unit))
            for sample in family.samples:
                self._family_of.setdefault(sample.name, family.name)

    def ended(self, slot: int, pid: int) -> None:
        """Worker ``slot``'s process ``pid`` ended: its last counts are kept in the sums from now on."""
        previous = self._last.get(slot)
        if previous is not None and previous[0] == pid:
            self._retire(slot, previous[1])
            del self._last[slot]

    def _retire(self, slot: int, families: list[Metric]) -> None:
        bases = self._bases.pop(slot, {})
        for family in families:
            if family.type in CUMULATIVE:
                for sample in family.samples:
                    if _kept(sample, True):
                        key = _key(sample)
                        if sample.name in SHARED:
                            self._retired[key] = max(self._retired.get(key, 0.0), bases.get(key, 0.0) + sample.value)
                        else:
                            self._retired[key] = self._retired.get(key, 0.0) + sample.value

    def total(self, slot: int, sample_name: str) -> float:
        """The sum of the samples named ``sample_name`` (every label) in worker ``slot``'s last exposition; 0
        without one."""
        last = self._last.get(slot)
        if last is None:
            return 0.0
        return sum(s.value for family in last[1] for s in family.samples if s.name == sample_name)

    def merged(self, fresh: Iterable[int], own: Iterable[Metric] = ()) -> list[Metric]:
        """The merged families: cumulative samples of every worker's last exposition plus the retired counts;
        gauges of the slots in ``fresh`` (those that answered this scrape) only; ``own`` (the supervisor's own
        families: its process, its operator listener) merged in as one more answer."""
        fresh = set(fresh)
        values: dict[Key, float] = dict(self._retired)
        sources: list[tuple[bool, bool, list[Metric], dict[Key, float]]] = [(True, False, list(own), {})]
        sources += [(slot in fresh, True, families, self._bases.get(slot, {}))
                    for slot, (_, families) in sorted(self._last.items())]
        for answered, private, families, bases in sources:
            for family in families:
                self._shapes.setdefault(family.name, (family.type, family.documentation, family.unit))
                if family.type not in CUMULATIVE and not answered:
                    continue
                for sample in family.samples:
                    if not _kept(sample, private):
                        continue
                    self._family_of.setdefault(sample.name, family.name)
                    key = _key(sample)
                    if sample.name in SHARED:
                        values[key] = max(values.get(key, 0.0), bases.get(key, 0.0) + sample.value)
                    elif key not in values:
                        values[key] = sample.value
                    elif sample.name in MINIMUM:
                        values[key] = min(values[key], sample.value)
                    elif sample.name in MAXIMUM:
                        values[key] = max(values[key], sample.value)
                    else:
                        values[key] += sample.value
        self._high = {key: value for key, value in values.items() if key[0] in SHARED}
        out: dict[str, Metric] = {}
        for (name, labels), value in values.items():
            family_name = self._family_of.get(name, name)
            if family_name not in out:
                typ, doc, unit = self._shapes.get(family_name, ("gauge", "", ""))
                out[family_name] = Metric(family_name, doc, typ, unit)
            out[family_name].add_sample(name, dict(labels), value)
        return list(out.values())


class Families(Collector):
    """A collector yielding the families ``produce()`` returns at each collection (for ``generate_latest``)."""

    def __init__(self, produce: Any) -> None:
        self._produce = produce

    def collect(self) -> Iterator[Metric]:
        yield from self._produce()


def per_worker(name: str, doc: str, typ: str, values: Mapping[int, float]) -> Metric:
    """One family with a ``worker`` label (the slot, 0 to N-1) holding ``values``."""
    family = Metric(name, doc, typ)
    sample = f"{name}_total" if typ == "counter" else name
    for slot, value in sorted(values.items()):
        family.add_sample(sample, {"worker": str(slot)}, value)
    return family
