"""The merge of the workers' /metrics (wsgw/workers/aggregate.py): sums, states, and counters that never go down
when a worker is started again."""

from __future__ import annotations

import itertools
import random

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wsgw.workers.aggregate import Aggregate, Families, parse


def exposition(deliveries: float, connections: float, bus_up: int, stalled: int = 0, revocations: int = 3) -> str:
    return f"""# HELP wsgw_deliveries_total Frames handed to sockets, by kind of event.
# TYPE wsgw_deliveries_total counter
wsgw_deliveries_total{{kind="nodes"}} {deliveries}
# HELP wsgw_connections Open WebSocket connections.
# TYPE wsgw_connections gauge
wsgw_connections{{endpoint="ws"}} {connections}
# HELP wsgw_bus_up 1 while the bus can deliver and publish.
# TYPE wsgw_bus_up gauge
wsgw_bus_up {bus_up}
# HELP wsgw_redis_stalled stalled
# TYPE wsgw_redis_stalled gauge
wsgw_redis_stalled{{role="chat store"}} {stalled}
# HELP wsgw_revocations in force
# TYPE wsgw_revocations gauge
wsgw_revocations {revocations}
# HELP wsgw_listener_sockets sockets
# TYPE wsgw_listener_sockets gauge
wsgw_listener_sockets{{listener="public"}} {connections}
wsgw_listener_sockets{{listener="operator"}} 1
# HELP wsgw_delivery_lag_seconds lag
# TYPE wsgw_delivery_lag_seconds histogram
wsgw_delivery_lag_seconds_bucket{{topic="tree",le="0.01"}} {deliveries}
wsgw_delivery_lag_seconds_bucket{{topic="tree",le="+Inf"}} {deliveries}
wsgw_delivery_lag_seconds_count{{topic="tree"}} {deliveries}
wsgw_delivery_lag_seconds_sum{{topic="tree"}} 0.5
wsgw_delivery_lag_seconds_created{{topic="tree"}} 1.7e9
"""


def samples(aggregate: Aggregate, fresh: list[int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The merged families as the supervisor serves them, read back by a Prometheus parser."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(lambda: aggregate.merged(fresh)))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_and_amounts_are_summed_states_are_not() -> None:
    """Counters, histograms and amount gauges are the workers' sums; bus_up is 1 only if every worker's is;
    a stall anywhere shows; revocations (the same copy in each) are not multiplied; per-process timestamps and
    the workers' private operator listeners are left out."""
    aggregate = Aggregate()
    aggregate.record(0, 100, parse(exposition(10, 4, 1)))
    aggregate.record(1, 101, parse(exposition(5, 3, 0, stalled=1)))
    got = samples(aggregate, [0, 1])
    assert got[("wsgw_deliveries_total", (("kind", "nodes"),))] == 15
    assert got[("wsgw_connections", (("endpoint", "ws"),))] == 7
    assert got[("wsgw_delivery_lag_seconds_count", (("topic", "tree"),))] == 15
    assert got[("wsgw_delivery_lag_seconds_bucket", (("le", "+Inf"), ("topic", "tree")))] == 15
    assert got[("wsgw_bus_up", ())] == 0
    assert got[("wsgw_redis_stalled", (("role", "chat store"),))] == 1
    assert got[("wsgw_revocations", ())] == 3
    assert ("wsgw_listener_sockets", (("listener", "operator"),)) not in got
    assert not any(name.endswith("_created") for name, _ in got)


def test_a_restarted_worker_never_makes_a_counter_go_down() -> None:
    """A worker's new process starts its counts at 0: the last counts scraped from the one that ended are kept
    in the sums (its gauges are not), so the summed counters only grow."""
    aggregate = Aggregate()
    aggregate.record(0, 100, parse(exposition(10, 4, 1)))
    aggregate.record(1, 101, parse(exposition(5, 3, 1)))
    assert samples(aggregate, [0, 1])[("wsgw_deliveries_total", (("kind", "nodes"),))] == 15
    aggregate.ended(1, 101)
    after_crash = samples(aggregate, [0])
    assert after_crash[("wsgw_deliveries_total", (("kind", "nodes"),))] == 15
    assert after_crash[("wsgw_connections", (("endpoint", "ws"),))] == 4
    aggregate.record(1, 202, parse(exposition(2, 1, 1)))  # the new process, started again
    got = samples(aggregate, [0, 1])
    assert got[("wsgw_deliveries_total", (("kind", "nodes"),))] == 17
    assert got[("wsgw_connections", (("endpoint", "ws"),))] == 5
    # a worker that did not answer this scrape: its last counts stay, its gauges are left out
    got = samples(aggregate, [0])
    assert got[("wsgw_deliveries_total", (("kind", "nodes"),))] == 17
    assert got[("wsgw_connections", (("endpoint", "ws"),))] == 4


def test_the_longest_gc_pauses_are_the_longest_of_any_worker_not_their_sum() -> None:
    """``wsgw_gc_pause_longest_seconds`` and ``..._longest_cpu_seconds`` (wsgw.gcpolicy) name one collection:
    the merge keeps the largest, where a sum would name a pause no process had."""
    def gc_exposition(wall: float, cpu: float) -> str:
        return (f"# HELP wsgw_gc_pause_longest_seconds wall\n# TYPE wsgw_gc_pause_longest_seconds gauge\n"
                f'wsgw_gc_pause_longest_seconds{{generation="2"}} {wall}\n'
                f"# HELP wsgw_gc_pause_longest_cpu_seconds cpu\n# TYPE wsgw_gc_pause_longest_cpu_seconds gauge\n"
                f'wsgw_gc_pause_longest_cpu_seconds{{generation="2"}} {cpu}\n')

    aggregate = Aggregate()
    aggregate.record(0, 100, parse(gc_exposition(0.04, 0.01)))
    aggregate.record(1, 101, parse(gc_exposition(0.03, 0.02)))
    got = samples(aggregate, [0, 1])
    assert got[("wsgw_gc_pause_longest_seconds", (("generation", "2"),))] == 0.04
    assert got[("wsgw_gc_pause_longest_cpu_seconds", (("generation", "2"),))] == 0.02


def test_the_bus_stream_every_worker_reads_is_counted_once_not_once_per_worker() -> None:
    """Every worker subscribes to the bus and reads every event (each for its own sockets): the bus events
    received, malformed or failed, the control messages and the re-authorization events are the instance's stream
    seen N times, so the merge keeps the largest count, not the N-fold sum; still never going down when a worker
    is started again (the ended process's last count is kept as a floor)."""
    def bus(received: float, control: float) -> str:
        return (f"# HELP wsgw_bus_events_received_total received\n# TYPE wsgw_bus_events_received_total counter\n"
                f'wsgw_bus_events_received_total{{topic="tree"}} {received}\n'
                f"# HELP wsgw_bus_events_malformed_total malformed\n# TYPE wsgw_bus_events_malformed_total counter\n"
                f'wsgw_bus_events_malformed_total{{topic="tree"}} 1\n'
                f"# HELP wsgw_bus_events_failed_total failed\n# TYPE wsgw_bus_events_failed_total counter\n"
                f'wsgw_bus_events_failed_total{{topic="tree"}} 0\n'
                f"# HELP wsgw_control_messages_total control\n# TYPE wsgw_control_messages_total counter\n"
                f'wsgw_control_messages_total{{kind="revoke"}} {control}\n'
                f"# HELP wsgw_reauthorization_events_total reauth\n# TYPE wsgw_reauthorization_events_total "
                f'counter\nwsgw_reauthorization_events_total{{kind="acl"}} 2\n' + exposition(received, 1, 1))

    received = ("wsgw_bus_events_received_total", (("topic", "tree"),))
    aggregate = Aggregate()
    aggregate.record(0, 100, parse(bus(100, 3)))
    aggregate.record(1, 101, parse(bus(99, 3)))  # (scraped a moment apart)
    got = samples(aggregate, [0, 1])
    assert got[received] == 100
    assert got[("wsgw_bus_events_malformed_total", (("topic", "tree"),))] == 1
    assert got[("wsgw_control_messages_total", (("kind", "revoke"),))] == 3
    assert got[("wsgw_reauthorization_events_total", (("kind", "acl"),))] == 2
    assert got[("wsgw_deliveries_total", (("kind", "nodes"),))] == 199  # each worker's own sockets: summed
    aggregate.ended(0, 100)
    assert samples(aggregate, [1])[received] == 100
    aggregate.record(0, 200, parse(bus(5, 0)))  # started again: counts from 0
    aggregate.record(1, 101, parse(bus(104, 3)))
    assert samples(aggregate, [0, 1])[received] == 104
    aggregate.ended(1, 101)
    aggregate.record(1, 201, parse(bus(6, 0)))  # both restarted: the largest count seen stays the floor
    assert samples(aggregate, [0, 1])[received] == 104


def _received(count: float) -> str:
    return ("# HELP wsgw_bus_events_received_total received\n# TYPE wsgw_bus_events_received_total counter\n"
            f'wsgw_bus_events_received_total{{topic="tree"}} {count}\n')


def test_the_bus_stream_counts_on_after_the_largest_worker_ended() -> None:
    """Workers ended one after the other (kill -9): the one that had the largest count ends, and the other,
    started again earlier, has counted the stream only since its own start. The events read from then on are counted (the merged
    count goes on from the ended process's floor with the survivor's increase), not hidden until the survivor's
    own count passes the floor (Prometheus' rate() showing no events while the stream flowed)."""
    key = ("wsgw_bus_events_received_total", (("topic", "tree"),))
    aggregate = Aggregate()
    aggregate.record(0, 100, parse(_received(100)))
    aggregate.record(1, 101, parse(_received(100)))
    assert samples(aggregate, [0, 1])[key] == 100  # (each scrape of the supervisor: every worker's, then merged)
    aggregate.ended(0, 100)
    aggregate.record(0, 200, parse(_received(2)))  # started again: it read 2 events before its first scrape
    assert samples(aggregate, [0, 1])[key] == 100
    aggregate.record(0, 200, parse(_received(52)))  # 50 more events, read by both
    aggregate.record(1, 101, parse(_received(150)))
    assert samples(aggregate, [0, 1])[key] == 150
    aggregate.ended(1, 101)  # now the other one
    assert samples(aggregate, [0])[key] == 150
    aggregate.record(0, 200, parse(_received(82)))  # 30 more events
    aggregate.record(1, 201, parse(_received(1)))
    assert samples(aggregate, [0, 1])[key] == 180
    aggregate.record(0, 200, parse(_received(92)))  # 10 more
    aggregate.record(1, 201, parse(_received(11)))
    assert samples(aggregate, [0, 1])[key] == 190


def test_a_new_label_of_the_bus_stream_is_not_double_counted_nor_lost() -> None:
    """A topic first seen in both workers (each read the same 4 events) counts 4; one first seen in a single worker
    counts what it read."""
    def two(tree: float, chat: float) -> str:
        return ("# HELP wsgw_bus_events_received_total received\n# TYPE wsgw_bus_events_received_total counter\n"
                f'wsgw_bus_events_received_total{{topic="tree"}} {tree}\n'
                f'wsgw_bus_events_received_total{{topic="chat"}} {chat}\n')

    aggregate = Aggregate()
    aggregate.record(0, 100, parse(_received(10)))
    aggregate.record(1, 101, parse(_received(10)))
    aggregate.record(0, 100, parse(two(10, 4)))
    aggregate.record(1, 101, parse(two(10, 4)))
    got = samples(aggregate, [0, 1])
    assert got[("wsgw_bus_events_received_total", (("topic", "chat"),))] == 4
    assert got[("wsgw_bus_events_received_total", (("topic", "tree"),))] == 10


def test_the_bus_stream_count_never_goes_down_nor_passes_the_events_read_through_kills_and_late_answers() -> None:
    """A stream of events read by 3 workers, killed and started again at random, answering each scrape in a
    random order with events arriving between answers (and now and then not at all): after every scrape the merged
    count is at least the last one and at most the events sent; with a worker alive throughout a stretch of the
    stream, that stretch is counted."""
    rng = random.Random(20)
    key = ("wsgw_bus_events_received_total", (("topic", "tree"),))
    aggregate = Aggregate()
    sent, pids = 0, itertools.count(100)
    workers = {slot: (next(pids), 0) for slot in range(3)}  # slot -> (pid, the events sent when it started)
    last = 0.0
    for _ in range(400):
        for slot in rng.sample(range(3), 3):
            sent += rng.choice((0, 0, 1, 5, 40))
            if rng.random() < 0.9:
                pid, start = workers[slot]
                aggregate.record(slot, pid, parse(_received(sent - start)))
        merged = samples(aggregate, [0, 1, 2])[key]
        assert last <= merged <= sent
        last = merged
        if rng.random() < 0.15:
            slot = rng.randrange(3)
            aggregate.ended(slot, workers[slot][0])
            workers[slot] = (next(pids), sent)
    assert last > 0.9 * sent  # (a merge keeping only the largest count as a floor ends at 20 %: each kill hid a stretch)
