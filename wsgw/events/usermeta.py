"""Per-user Target (PROTOCOL.md §4.1): each recipient's own metadata of the node, from the node-metadata backend.

Cells re-reads the Target of ``UPDATE_PATH``, ``UPDATE_CONTENT``, ``UPDATE_META``,
``UPDATE_USER_META`` and ``DELETE`` events (merged non-CREATE events included) in
each recipient's context, so that the user's bookmark and user meta survive the
stock client replacing the node's metadata with the frame's Target. With a
backend configured (``wsgw.interfaces.INodeMetaSource``), ``UserMeta`` asks it
once per such event (that has a Target) for every recipient login, the moment
the event arrives; the event goes out with each login's entries merged into its
copies of the Target once the answer is in, or as published when the lookup
fails or takes longer than ``timeout`` (on the injected clock; the request is
then abandoned). The events of one node go out in their order: an event whose
lookup is done waits for the node's earlier ones, so no event waits more than
``timeout`` past its own arrival; other nodes' events never wait.

Bounds: at most ``max_lookups`` requests run at once (an event arriving past it
goes out as published, counted ``busy``); after ``failures_to_suspend`` failed
or timed-out lookups in a row, lookups stop for ``suspend_for`` seconds (counted
``suspended``), so a backend that is down costs nothing more than its count.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw.events.batching import event_type
from wsgw.interfaces import INodeMetaSource

REFRESHED = frozenset({"UPDATE_PATH", "UPDATE_CONTENT", "UPDATE_META", "UPDATE_USER_META", "DELETE"})
OUTCOMES = ("ok", "timeout", "failed", "busy", "suspended")

Entries = dict[str, dict[str, str]]  # login -> MetaStore entries for that login's copies of the Target
Event = dict[str, Any]


def node_key(event: Event) -> str | None:
    """The uuid of the node an event is about (its Target's, else its Source's)."""
    for name in ("Target", "Source"):
        node = event.get(name)
        if node and node.get("Uuid"):
            return str(node["Uuid"])
    return None


@attrs.define(eq=False)
class _Waiting:
    """An event waiting for its lookup (``done`` once answered, failed or out of time) or its turn."""

    event: Event
    done: bool = False
    entries: Entries | None = None


class UserMeta:
    """Holds node events while their recipients' metadata is looked up.

    ``logins(event)`` gives the event's recipient logins now; ``send(event, entries)`` sends it (``entries``
    None: as published). ``outcomes`` counts the events by ``OUTCOMES``.
    """

    _log = Logger()

    def __init__(
        self,
        source: INodeMetaSource,
        clock: IReactorTime,
        timeout: float,
        logins: Callable[[Event], Sequence[str]],
        send: Callable[[Event, Entries | None], None],
        *,
        max_lookups: int = 64,
        failures_to_suspend: int = 5,
        suspend_for: float = 5.0,
    ) -> None:
        self._source = source
        self._clock = clock
        self._timeout = timeout
        self._logins = logins
        self._send = send
        self._max_lookups = max_lookups
        self._failures_to_suspend = failures_to_suspend
        self._suspend_for = suspend_for
        self._held: dict[str | None, deque[_Waiting]] = {}  # node uuid -> its events waiting, in order
        self._in_flight = 0
        self._failures = 0  # failed or timed-out lookups in a row
        self._suspended_until = 0.0
        self._idle: list[Deferred[None]] = []
        self.outcomes: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        """Events held for a lookup or for their node's earlier events."""
        return sum(len(queue) for queue in self._held.values())

    def deliver(self, event: Event) -> None:
        """Send ``event`` now, or once its lookup and its node's earlier events are done."""
        key = node_key(event)
        if key not in self._held and not self._wants_lookup(event):
            self._send(event, None)
            return
        waiting = _Waiting(event)
        self._held.setdefault(key, deque()).append(waiting)
        if self._wants_lookup(event):
            self._look_up(waiting, key)
        else:
            waiting.done = True
        self._release(key)

    def idle(self) -> Deferred[None]:
        """Fires once no event is held (shutdown: each is out within ``timeout`` of its arrival)."""
        if not self._held:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _wants_lookup(self, event: Event) -> bool:
        target = event.get("Target")
        return event_type(event) in REFRESHED and isinstance(target, dict) and bool(target.get("Uuid"))

    def _look_up(self, waiting: _Waiting, key: str | None) -> None:
        event = waiting.event
        logins = sorted(set(self._logins(event)))
        if not logins:
            waiting.done = True  # nobody receives it
            return
        if self._clock.seconds() < self._suspended_until:
            self._finish(waiting, None, "suspended")
            return
        if self._in_flight >= self._max_lookups:
            self._finish(waiting, None, "busy")
            return
        target: dict[str, Any] = event["Target"]
        self._in_flight += 1
        d: Deferred[Entries] = maybeDeferred(
            self._source.lookup, {"Uuid": target["Uuid"], "Path": target.get("Path") or ""}, logins)
        expired: list[bool] = []  # the bound passed: the request was cancelled (whatever failure that gives)

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._clock.callLater(self._timeout, expire)

        def answered(entries: Entries) -> None:
            self._failures = 0
            self._finish(waiting, entries, "ok")

        def unanswered(failure: Failure) -> None:
            outcome = "timeout" if expired else "failed"
            self._log.debug("node metadata lookup {outcome}: {error}", outcome=outcome,
                            error=failure.getErrorMessage())
            self._failures += 1
            if self._failures >= self._failures_to_suspend:
                self._suspended_until = self._clock.seconds() + self._suspend_for
                self._log.warn("node metadata backend: {n} lookups in a row failed, none for {s} s",
                               n=self._failures, s=self._suspend_for)
                self._failures = 0
            self._finish(waiting, None, outcome)

        def settled(result: object) -> object:
            self._in_flight -= 1
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(settled)
        d.addCallbacks(answered, unanswered)
        d.addCallback(lambda _: self._release(key))
        d.addErrback(lambda f: self._log.failure("sending a node event after its lookup failed", f))

    def _finish(self, waiting: _Waiting, entries: Entries | None, outcome: str) -> None:
        self.outcomes[outcome] += 1
        waiting.entries = entries
        waiting.done = True

    def _release(self, key: str | None) -> None:
        """Send the node's events from the first on, as long as they are done."""
        queue = self._held.get(key)
        while queue and queue[0].done:
            waiting = queue.popleft()
            try:
                self._send(waiting.event, waiting.entries)
            except Exception:  # noqa: BLE001 - one event's failure must not hold its node's later events
                self._log.failure("sending a node event failed")
        if queue is not None and not queue:
            del self._held[key]
            if not self._held:
                waiters, self._idle = self._idle, []
                for d in waiters:
                    d.callback(None)
