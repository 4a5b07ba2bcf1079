"""Per-user Target (PROTOCOL.md §4.1): each recipient's own metadata of the node, from the node-metadata backend.

Cells re-reads the Target of ``UPDATE_PATH``, ``UPDATE_CONTENT``, ``UPDATE_META``,
``UPDATE_USER_META`` and ``DELETE`` events (merged non-CREATE events included) in
each recipient's context, so that the user's bookmark and user meta survive the
stock client replacing the node's metadata with the frame's Target. With a
backend configured (``wsgw.interfaces.INodeMetaSource``), ``UserMeta`` asks it
once per such event for every recipient login, bounded by ``timeout`` on the
injected clock; on an answer the event goes out with each login's entries
merged into its copies of the Target, on a failure or a timeout as published
(both counted in ``outcomes``). While an event waits, the later events of its
node wait behind it, so a node's events keep their order; other nodes' events
do not wait.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw.events.batching import event_type
from wsgw.interfaces import INodeMetaSource

REFRESHED = frozenset({"UPDATE_PATH", "UPDATE_CONTENT", "UPDATE_META", "UPDATE_USER_META", "DELETE"})

Entries = dict[str, dict[str, str]]  # login -> MetaStore entries for that login's copies of the Target
Event = dict[str, Any]


def node_key(event: Event) -> str | None:
    """The uuid of the node an event is about (its Target's, else its Source's)."""
    for name in ("Target", "Source"):
        node = event.get(name)
        if node and node.get("Uuid"):
            return str(node["Uuid"])
    return None


class UserMeta:
    """Holds node events while their recipients' metadata is looked up.

    ``logins(event)`` gives the event's recipient logins now; ``send(event, entries)`` sends it (``entries``
    None: as published). ``outcomes`` counts the lookups by ``ok``, ``timeout``, ``failed``.
    """

    _log = Logger()

    def __init__(
        self,
        source: INodeMetaSource,
        clock: IReactorTime,
        timeout: float,
        logins: Callable[[Event], Sequence[str]],
        send: Callable[[Event, Entries | None], None],
    ) -> None:
        self._source = source
        self._clock = clock
        self._timeout = timeout
        self._logins = logins
        self._send = send
        self._held: dict[str, deque[Event]] = {}  # node uuid -> events waiting behind its lookup
        self.outcomes: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        """Nodes whose events wait for a lookup."""
        return len(self._held)

    def deliver(self, event: Event) -> None:
        """Send ``event`` now, or after its node's earlier events and its own lookup."""
        key = node_key(event)
        queue = self._held.get(key) if key is not None else None
        if queue is not None:
            queue.append(event)
            return
        lookup = self._start(event)
        if lookup is not None and key is not None:
            self._held[key] = deque()
            lookup.addBoth(self._resume, key)

    def _resume(self, _: object, key: str) -> None:
        queue = self._held[key]
        while queue:
            lookup = self._start(queue.popleft())
            if lookup is not None:
                lookup.addBoth(self._resume, key)
                return
        del self._held[key]

    def _start(self, event: Event) -> defer.Deferred[Any] | None:
        """Send ``event`` now (None), or start its lookup: the Deferred fires once it is sent."""
        target = event.get("Target")
        if event_type(event) not in REFRESHED or not target or not target.get("Uuid"):
            self._send(event, None)
            return None
        logins = sorted(set(self._logins(event)))
        if not logins:
            return None  # nobody receives it
        d = self._source.lookup({"Uuid": target["Uuid"], "Path": target.get("Path") or ""}, logins)
        expired: list[bool] = []  # the bound passed: the request was cancelled (whatever failure that gives)

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._clock.callLater(self._timeout, expire)

        def settled(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(settled)
        d.addCallbacks(self._answered, self._unanswered, callbackArgs=(event,), errbackArgs=(event, expired))
        return d.addErrback(lambda f: self._log.failure("sending a node event failed", f))

    def _answered(self, entries: Entries, event: Event) -> None:
        self.outcomes["ok"] += 1
        self._send(event, entries)

    def _unanswered(self, failure: Failure, event: Event, expired: list[bool]) -> None:
        outcome = "timeout" if expired else "failed"
        self.outcomes[outcome] += 1
        self._log.debug("node metadata lookup {outcome}: {error}", outcome=outcome, error=failure.getErrorMessage())
        self._send(event, None)
