"""The delays /metrics measures as they happen (``wsgw.web.metrics`` reads everything else at scrape time).

A node event's time from the bus to its socket is the sum of three histograms,
each saying in its help text what it covers:

- ``wsgw_delivery_lag_seconds``, once per bus event (not per recipient), by
  ``TimedListener`` around the dispatcher: from the bus handing the event over
  to its frames handed to every recipient's flow (from there written at once,
  with the other frames of the same bus read, or after a pacing hold);
  a node event held by the merge window is handed on later, in that window's
  observation;
- ``wsgw_node_merge_delay_seconds``, once per merged node event
  (``NodeBatcher.observe``): from its first event's receipt to its frames handed
  to every recipient's flow, the window included;
- ``wsgw_pacing_delay_seconds``, once per frame held by a socket's pacing
  (``Flow.pace``'s ``observe``), at its release: how long it was held. Frames
  sent at once cost nothing more.

Frames blocked by a client reading slowly, and node events waiting for their
node-metadata lookup, are in none of them. ``wsgw_access_request_seconds`` is
each access backend request's duration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from twisted.internet.interfaces import IReactorTime

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HOLD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0)
ACCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Merging(Protocol):
    """Where merged node events are observed (``wsgw.events.nodes.NodeHandler.observe_merge``)."""

    observe_merge: Callable[[float], object] | None


class Pacing(Protocol):
    """Where held frames are observed (``wsgw.events.endpoint.EventsEndpoint.observe_pacing``)."""

    observe_pacing: Callable[[float], object] | None


class Timed(Protocol):
    """Where access backend requests are observed (``wsgw.auth.resolvers.HttpResolver.observe``)."""

    observe: Callable[[float], object] | None


def histograms(registry: CollectorRegistry, topics: Iterable[str], nodes: Merging, pacing: Pacing | None,
               access: Timed | None) -> dict[str, Any]:
    """Register the histograms in ``registry`` and set each observer (``pacing``, ``access``: when not None);
    returns the delivery lag histogram's child for each of ``topics`` (for ``TimedListener``)."""
    lag = Histogram(
        "wsgw_delivery_lag_seconds",
        "From a bus event's receipt to its frames handed to every recipient's outbound flow (from there written at "
        "once, with the other frames of the same bus read, or after a pacing hold), by topic. Not included: a node "
        "event's merge window (wsgw_node_merge_delay_seconds), pacing holds (wsgw_pacing_delay_seconds), frames "
        "blocked by a client reading slowly, node-metadata lookups.",
        ["topic"], registry=registry, buckets=LAG_BUCKETS,
    )
    nodes.observe_merge = Histogram(
        "wsgw_node_merge_delay_seconds", "Per merged node event (one per node and window, however many events it "
        "folds): from its first event's receipt to its frames handed to every recipient's flow, the merge window "
        "([delivery] batch_window, restarted by each event of the node) included.", registry=registry,
        buckets=HOLD_BUCKETS).observe
    if pacing is not None:
        pacing.observe_pacing = Histogram(
            "wsgw_pacing_delay_seconds", "Per node-event frame held by a socket's pacing ([delivery] pacing_rate, "
            "pacing_burst): from being held to being released to the socket (at most pacing_max_delay; earlier for "
            "an Optimistic event). Frames sent at once are not observed.", registry=registry,
            buckets=HOLD_BUCKETS).observe
    if access is not None:
        access.observe = Histogram(
            "wsgw_access_request_seconds", "Duration of each request to the access backend (answered, refused, "
            "failed or timed out).", registry=registry, buckets=ACCESS_BUCKETS,
        ).observe
    return {topic: lag.labels(topic=topic) for topic in topics}


class TimedListener:
    """A bus listener that observes, once per event, how long the wrapped listener took."""

    def __init__(self, listener: Callable[[str, bytes], Any], clock: IReactorTime, children: Mapping[str, Any]) -> None:
        self._listener = listener
        self._clock = clock
        self._children = children

    def __call__(self, topic: str, payload: bytes) -> Any:
        start = self._clock.seconds()
        try:
            return self._listener(topic, payload)
        finally:
            child = self._children.get(topic)
            if child is not None:
                child.observe(self._clock.seconds() - start)
