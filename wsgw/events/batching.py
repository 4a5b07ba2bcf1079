"""The per-node idle-window merge of node events (PROTOCOL.md §4.1, point 2).

``CREATE``, ``UPDATE_CONTENT`` and ``UPDATE_META`` events that have a Target
are folded per ``Target.Uuid`` while events for that node keep coming; each
new event restarts the node's window, and when it passes the merged event is
handed to ``deliver``. ``Merge`` is the fold itself (pure, no clock);
``NodeBatcher`` owns the windows on an injected clock.

Merge rules: the merged ``Type`` is CREATE if any event was a CREATE, else
UPDATE_CONTENT if any was, else the last type; ``Source`` is the last one;
``Target`` is the first one (copied, never mutated) with each later
``Etag``, ``Type``, ``MTime`` and ``Size`` overwriting it when the later node
carries the field, later ``MetaStore`` keys merged in, ``Path`` filled if
empty, and an ``Etag`` of ``"temporary"`` replaced by the last real one.
The merged event is ``Silent`` only if every event was (one audible change
makes it audible) and ``Optimistic`` if any was.

Two safety bounds beyond the spec, so a node that changes forever and a
flood of distinct nodes both cost bounded time and memory: a node is held at
most ``max_hold`` seconds after its first event (default ten windows), and at
most ``max_pending`` nodes wait at once (beyond that the oldest is flushed).

``NodeBatcher.observe`` (settable, None by default), when set, is called once
per merged event handed on, with the seconds from its first event's receipt
until ``deliver`` returned (the window it was held in, and its fan-out): the
``wsgw_node_merge_delay_seconds`` histogram of /metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

MERGEABLE = frozenset({"CREATE", "UPDATE_CONTENT", "UPDATE_META"})
TEMPORARY_ETAG = "temporary"
_OVERWRITTEN = ("Etag", "Type", "MTime", "Size")


def event_type(event: dict[str, Any]) -> str:
    """The event's type name, ``CREATE`` when absent (protobuf zero value)."""
    return event.get("Type") or "CREATE"


def merge_key(event: dict[str, Any]) -> str | None:
    """The ``Target.Uuid`` an event is merged under, or None when it goes out at once."""
    if event_type(event) not in MERGEABLE:
        return None
    target = event.get("Target")
    if not target:
        return None
    return target.get("Uuid") or None


class Merge:
    """The fold of the events of one node; ``event()`` is the merged event."""

    __slots__ = (
        "_has_content",
        "_has_create",
        "_last_type",
        "_meta_copied",
        "_optimistic",
        "_real_etag",
        "_silent",
        "_source",
        "_target",
        "count",
        "started",
    )

    def __init__(self, event: dict[str, Any], started: float = 0.0) -> None:
        self.started = started
        self.count = 0
        self._has_create = False
        self._has_content = False
        self._last_type = "CREATE"
        self._source: dict[str, Any] | None = None
        self._target: dict[str, Any] = dict(event["Target"])
        self._meta_copied = False
        self._real_etag: str | None = None
        self._silent = True
        self._optimistic = False
        self._account(event)
        etag = self._target.get("Etag")
        if etag and etag != TEMPORARY_ETAG:
            self._real_etag = etag

    def _account(self, event: dict[str, Any]) -> None:
        kind = event_type(event)
        self._has_create = self._has_create or kind == "CREATE"
        self._has_content = self._has_content or kind == "UPDATE_CONTENT"
        self._last_type = kind
        self._source = event.get("Source")
        self._silent = self._silent and bool(event.get("Silent"))
        self._optimistic = self._optimistic or bool(event.get("Optimistic"))
        self.count += 1

    def fold(self, event: dict[str, Any]) -> None:
        """Fold a later event of the same node into this merge (``event`` is not modified)."""
        self._account(event)
        later: dict[str, Any] = event["Target"]
        target = self._target
        for name in _OVERWRITTEN:
            value = later.get(name)
            if value is not None:
                target[name] = value
        etag = later.get("Etag")
        if etag == TEMPORARY_ETAG:
            if self._real_etag is not None:
                target["Etag"] = self._real_etag
        elif etag:
            self._real_etag = etag
        if not target.get("Path") and later.get("Path"):
            target["Path"] = later["Path"]
        meta = later.get("MetaStore")
        if meta:
            if not self._meta_copied:
                target["MetaStore"] = dict(target.get("MetaStore") or {})
                self._meta_copied = True
            target["MetaStore"].update(meta)

    def event(self) -> dict[str, Any]:
        """The merged event; its Target is a copy (a MetaStore is copied before any key is merged in)."""
        if self._has_create:
            kind = "CREATE"
        elif self._has_content:
            kind = "UPDATE_CONTENT"
        else:
            kind = self._last_type
        merged: dict[str, Any] = {"Type": kind, "Target": self._target}
        if self._source is not None:
            merged["Source"] = self._source
        if self._silent:
            merged["Silent"] = True
        if self._optimistic:
            merged["Optimistic"] = True
        return merged


class NodeBatcher:
    """Idle windows per node uuid on ``clock``; a flushed merge goes to ``deliver(event)``."""

    _log = Logger(namespace=f"{__name__}.NodeBatcher")  # named: compiled (mypyc), Logger() finds no module

    def __init__(
        self,
        clock: IReactorTime,
        window: float,
        deliver: Callable[[dict[str, Any]], None],
        max_hold: float | None = None,
        max_pending: int = 10_000,
    ) -> None:
        if window <= 0:
            raise ValueError("the batching window must be positive (0 disables batching: use no batcher)")
        self._clock = clock
        self._window = window
        self._deliver = deliver
        self._max_hold = max_hold if max_hold is not None else 10 * window
        self._max_pending = max_pending
        # insertion order = age order, used to flush the oldest when full
        self._pending: dict[str, tuple[Merge, IDelayedCall]] = {}
        self.observe: Callable[[float], object] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._pending

    def add(self, uuid: str, event: dict[str, Any]) -> bool:
        """Fold ``event`` into the window of ``uuid`` (opening one if needed).

        Returns True when the event joined a pending merge, False when it opened one.
        """
        now = self._clock.seconds()
        pending = self._pending.get(uuid)
        if pending is not None:
            merge, call = pending
            merge.fold(event)
            call.reset(max(0.0, min(self._window, merge.started + self._max_hold - now)))
            return True
        if len(self._pending) >= self._max_pending:
            self.flush_node(next(iter(self._pending)))
        merge = Merge(event, now)
        self._pending[uuid] = (merge, self._clock.callLater(self._window, self._expire, uuid))
        return False

    def flush_node(self, uuid: str) -> None:
        """Deliver the pending merge of ``uuid`` now, if there is one."""
        pending = self._pending.pop(uuid, None)
        if pending is None:
            return
        merge, call = pending
        if call.active():
            call.cancel()
        self._emit(uuid, merge)

    def flush(self) -> None:
        """Deliver every pending merge now, oldest first (shutdown)."""
        while self._pending:
            self.flush_node(next(iter(self._pending)))

    def _expire(self, uuid: str) -> None:
        pending = self._pending.pop(uuid, None)
        if pending is not None:
            self._emit(uuid, pending[0])

    def _emit(self, uuid: str, merge: Merge) -> None:
        try:
            self._deliver(merge.event())
        except Exception:  # noqa: BLE001 - a failing delivery must not break the windows
            self._log.failure("delivering the merged events of node {uuid} failed", uuid=uuid)
        if self.observe is not None:
            self.observe(self._clock.seconds() - merge.started)
