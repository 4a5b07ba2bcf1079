"""The live instances of one deployment: each gateway announces itself; ``GET /info`` lists every one alive.

Issue 14 ("An operator page"); issue 9's presence liveness can use the same
heartbeat. Identity: ``[operator] instance_name``, or ``<host>:<pid>:<6 hex>``
(``instance_id``), so a restarted process is a new instance.

Heartbeat: every ``[operator] heartbeat`` seconds ``InstanceRegistry`` samples
the gateway's counters into a ``History`` and writes its record to its store
for ``HEARTBEAT_TTLS`` heartbeats (a record not renewed in time expires: a
killed instance disappears from ``/info`` within 3 heartbeats); a clean stop
removes it at once. Stores: on Redis ``wsgw.redis.instances.RedisInstances``
(one key per instance under ``[operator] key_prefix``, and an index), on the embedded bus
``MemoryInstances`` (this process only).

The record, a JSON object (docs/protocol.md "Operator page: GET /info")::

    {"id": str, "version": str, "started": unix s, "at": unix s of the sample, "heartbeat": s,
     "listen": [address, ...], "connections": {"ws": n, "chat": n}, "subscribed": {"ws": n, "chat": n},
     "history": {"step": s, "events": [n, ...], "deliveries": [n, ...]},
     "rooms": n, "closes": {"<close code>": n}, "bus": {"state": str, "connected": bool}}

One name, one process: two live processes given the same ``[operator] instance_name`` write one record, each
replacing the other's (``/info`` shows one of them, whichever wrote last). A store's ``put`` tells what it replaced
(the ``started`` of that record), so a heartbeat that replaces a record of another ``started`` than its own, after
its own first heartbeat (which may replace the record of the process it restarts), logs a warning: once, and again
only after ``HEARTBEAT_TTLS`` heartbeats without one. It does not refuse: PROTOCOL.md and DESIGN.md say nothing of
instance names, and an instance restarted while the old one still stops is no mistake.

``history`` holds, oldest first, the bus events received and the frames
delivered during each of the last heartbeats (at most ``HISTORY_SECONDS`` of
them, ``MAX_POINTS`` points): per second is a count divided by ``step``.
Records read back from the store are another process's (or anyone's who can
write to that Redis): ``validate`` keeps only the fields above, typed, finite
and capped (``MAX_*``), so a hostile or huge record costs ``/info`` nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

HEARTBEAT_TTLS = 3  # a record lives this many heartbeats unless renewed
HISTORY_SECONDS = 600.0  # the span of a record's history
MAX_POINTS = 300  # points of each history series, whatever the heartbeat
MAX_RECORD_BYTES = 64 * 1024  # a stored record over this is not read
MAX_INSTANCES = 1000  # records /info reads at most
MAX_TEXT = 200  # characters of a string field
MAX_ITEMS = 64  # entries of a list or object field
MAX_COUNT = 2**53  # a count over this is cut to it (JSON numbers stay exact)
MIN_STEP = 0.001  # a history step under this (s) is left out: its per-second rates could overflow to Infinity


def instance_id(name: str = "") -> str:
    """``name`` when configured, else ``<host>:<pid>:<6 random hex digits>`` (at most MAX_TEXT characters)."""
    return (name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}")[:MAX_TEXT]


class History:
    """Per-heartbeat counts of two growing totals (bus events received, frames delivered), the last ``points``."""

    def __init__(self, points: int) -> None:
        self.events: deque[int] = deque(maxlen=points)
        self.deliveries: deque[int] = deque(maxlen=points)
        self._last: tuple[int, int] | None = None

    def sample(self, events: int, deliveries: int) -> None:
        """Add the counts since the previous sample (the first sample only sets the baseline)."""
        if self._last is not None:
            self.events.append(max(0, events - self._last[0]))
            self.deliveries.append(max(0, deliveries - self._last[1]))
        self._last = (events, deliveries)


class InstanceStore(Protocol):
    """Where the records of a deployment's instances live; ``kind``: ``redis`` or ``embedded``."""

    kind: str

    def put(self, instance: str, record: bytes, ttl: float) -> Deferred[str | None]:
        """Store ``record`` as ``instance``'s for ``ttl`` seconds; fires with the ``started`` of the record it
        replaced (``started_of``), or None when there was none."""

    def remove(self, instance: str) -> Deferred[None]:
        """Forget ``instance``'s record."""

    def load(self) -> Deferred[list[tuple[str, bytes]]]:
        """Every live record as (instance id, JSON bytes): at most MAX_INSTANCES, none over MAX_RECORD_BYTES."""


class MemoryInstances:
    """``InstanceStore`` of the embedded bus: this process's records, each until its TTL on ``clock``."""

    kind = "embedded"

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._records: dict[str, tuple[bytes, float]] = {}

    def put(self, instance: str, record: bytes, ttl: float) -> Deferred[str | None]:
        now = self._clock.seconds()
        old = self._records.get(instance)
        self._records[instance] = (record, now + ttl)
        return succeed(started_of(old[0]) if old is not None and old[1] > now else None)

    def remove(self, instance: str) -> Deferred[None]:
        self._records.pop(instance, None)
        return succeed(None)

    def load(self) -> Deferred[list[tuple[str, bytes]]]:
        now = self._clock.seconds()
        self._records = {k: v for k, v in self._records.items() if v[1] > now}
        return succeed([(k, v[0]) for k, v in list(self._records.items())[:MAX_INSTANCES]])


_STARTED = re.compile(rb'"started":(-?[0-9.eE+-]+)')


def started_of(record: bytes) -> str | None:
    """The ``started`` of a record as its writer wrote it (``json.dumps``: a JSON number's text), or None."""
    found = _STARTED.search(record)
    return found.group(1).decode("ascii") if found is not None else None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    if isinstance(value, int):  # JSON integers are unbounded: float() of a 400-digit one raises OverflowError
        return float(min(value, MAX_COUNT))
    return min(value, float(MAX_COUNT)) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _counts(value: Any, key: Callable[[str], bool] = lambda _: True) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    kept = {k[:MAX_TEXT]: n for k, v in list(value.items())[:MAX_ITEMS] if key(k) and (n := _count(v)) is not None}
    return kept


def _series(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return None
    counts = [_count(v) for v in value[-MAX_POINTS:]]
    return None if any(c is None for c in counts) else [c for c in counts if c is not None]


def validate(instance: str, raw: bytes) -> dict[str, Any] | None:
    """The record ``raw`` stored under ``instance`` as ``/info`` shows it, or None when it is not one: over
    MAX_RECORD_BYTES, not a JSON object, an ``id`` other than ``instance``, a required field missing or mistyped
    (``id``, ``started``, ``at``, ``heartbeat``). Optional fields mistyped are left out, as is a history whose
    ``step`` is under MIN_STEP; strings, lists, objects and counts are cut to the MAX_* caps; unknown fields are
    dropped."""
    if len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("id") != instance or len(instance) > MAX_TEXT:
        return None
    out: dict[str, Any] = {"id": instance}
    for field in ("started", "at", "heartbeat"):
        number = _number(record.get(field))
        if number is None:
            return None
        out[field] = number
    if (version := _text(record.get("version"))) is not None:
        out["version"] = version
    listen = record.get("listen")
    if isinstance(listen, list):
        out["listen"] = [t for item in listen[:MAX_ITEMS] if (t := _text(item)) is not None]
    for field in ("connections", "subscribed"):
        if (counts := _counts(record.get(field))) is not None:
            out[field] = counts
    if (closes := _counts(record.get("closes"), lambda code: code.isdigit() and len(code) <= 5)) is not None:
        out["closes"] = closes
    if (rooms := _count(record.get("rooms"))) is not None:
        out["rooms"] = rooms
    history = record.get("history")
    if isinstance(history, dict) and (step := _number(history.get("step"))) is not None and step >= MIN_STEP:
        events, deliveries = _series(history.get("events")), _series(history.get("deliveries"))
        if events is not None and deliveries is not None:
            out["history"] = {"step": step, "events": events, "deliveries": deliveries}
    bus = record.get("bus")
    if isinstance(bus, dict) and (state := _text(bus.get("state"))) is not None:
        out["bus"] = {"state": state, "connected": bus.get("connected") is True}
    return out


class InstanceRegistry:
    """This instance's heartbeat into ``store``, and the listing of every instance for ``GET /info``.

    ``totals()`` gives the two growing totals the history samples (bus events received, frames delivered);
    ``snapshot()`` the record's live fields (``listen``, ``connections``, ``subscribed``, ``rooms``, ``closes``,
    ``bus``); ``ready()`` (optional) fires once the store's connection is set up, for a heartbeat then.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, store: InstanceStore, instance: str, version: str, heartbeat: float,
                 totals: Callable[[], tuple[int, int]], snapshot: Callable[[], Mapping[str, Any]],
                 ready: Callable[[], Deferred[Any]] | None = None) -> None:
        if not heartbeat > 0:
            raise ValueError("the heartbeat must be more than 0 seconds")
        self.id = instance
        self.store = store
        self._clock = clock
        self._version = version
        self.heartbeat = heartbeat
        self.started = clock.seconds()
        self.history = History(max(1, min(MAX_POINTS, math.ceil(HISTORY_SECONDS / heartbeat))))
        self._totals = totals
        self._snapshot = snapshot
        self._ready = ready
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        self._failing = 0  # heartbeats failed in a row
        self.written = 0  # heartbeats the store took
        self.twin_seen = -HEARTBEAT_TTLS - 1  # ``written`` when a heartbeat last replaced another process's record

    def start(self) -> None:
        """Heartbeat now, then every ``heartbeat`` seconds (and once the store's connection is set up)."""
        self._loop.start(self.heartbeat, now=True)
        if self._ready is not None:
            connected = self._ready()  # the first heartbeat went before Redis was up: the next one at once
            connected.addCallback(lambda _: self._write() if self._loop.running else None)
            connected.addErrback(lambda _: None)  # cancelled: the store stopped first

    def stop(self) -> Deferred[None]:
        """Stop the heartbeat and remove this instance's record (a failure is logged: the record then expires)."""
        if self._loop.running:
            self._loop.stop()
        d = self.store.remove(self.id)
        d.addErrback(lambda f: self._log.warn("could not remove this instance ({id}) from the instance registry: "
                                              "{error}", id=self.id, error=f.getErrorMessage()))
        return d

    def record(self) -> dict[str, Any]:
        """This instance's record now (the module docstring's shape)."""
        return {
            "id": self.id, "version": self._version, "started": self.started, "at": self._clock.seconds(),
            "heartbeat": self.heartbeat, **self._snapshot(),
            "history": {"step": self.heartbeat, "events": list(self.history.events),
                        "deliveries": list(self.history.deliveries)},
        }

    def beat(self) -> None:
        """Sample the totals into the history and write the record."""
        self.history.sample(*self._totals())
        self._write()

    def _write(self) -> None:
        record = json.dumps(self.record(), separators=(",", ":")).encode()
        self.store.put(self.id, record, self.heartbeat * HEARTBEAT_TTLS).addCallbacks(self._wrote, self._failed)

    def _wrote(self, replaced: str | None) -> None:
        if self._failing >= HEARTBEAT_TTLS:
            self._log.info("instance registry: the heartbeat of {id} is written again", id=self.id)
        self._failing = 0
        self.written += 1
        if self.written > 1 and replaced is not None and replaced != json.dumps(self.started):
            if self.written - self.twin_seen > HEARTBEAT_TTLS:
                self._log.warn("instance registry: another live instance is named {id}: each heartbeat replaces the "
                               "other's record (GET /info shows one of them at a time); give each instance its own "
                               "[operator] instance_name", id=self.id)
            self.twin_seen = self.written

    def _failed(self, failure: Failure) -> None:
        self._failing += 1
        if self._failing == HEARTBEAT_TTLS:  # one line per outage; a start before Redis is up says nothing
            self._log.warn("instance registry: the heartbeat of {id} could not be written {n} times in a row "
                           "(other instances' /info no longer list it): {error}", id=self.id, n=self._failing,
                           error=failure.getErrorMessage())

    def instances(self) -> Deferred[dict[str, Any]]:
        """The ``GET /info`` answer: ``{"self": id, "registry": kind, "instances": [records, by id], "skipped":
        records not valid, "error"?: why the store could not be read}``; this instance's own record is the live
        one and always there, whether or not the store answers. Never fails."""
        d: Deferred[list[tuple[str, bytes]]] = maybeDeferred(self.store.load)

        def listed(found: list[tuple[str, bytes]]) -> dict[str, Any]:
            records = {self.id: self.record()}
            skipped = 0
            for instance, raw in found[:MAX_INSTANCES]:
                if instance == self.id:
                    continue
                record = validate(instance, raw)
                if record is None:
                    skipped += 1
                else:
                    records[instance] = record
            return self._answer(sorted(records.values(), key=lambda r: str(r["id"])), skipped)

        def failed(failure: Failure) -> dict[str, Any]:
            answer = self._answer([self.record()], 0)
            answer["error"] = f"the instance registry could not be read: {failure.getErrorMessage()}"[:MAX_TEXT]
            return answer

        return d.addCallbacks(listed, failed)

    def _answer(self, records: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        return {"self": self.id, "registry": self.store.kind, "at": self._clock.seconds(), "instances": records,
                "skipped": skipped}
