"""Chat presence (PROTOCOL.md §5.2): which logins are in a room's ``Users``, over the store every instance shares.

A login is in a room's stored ``Users`` until ``timeout`` after the last JOIN or
PING of one of its sockets, on any instance: each one stores the presence with
that deadline (``touch_user``), and a later one, from any instance, moves it on.
Every instance sweeps the store every ``sweep_interval`` (``expire_users``) and
removes the presences past their deadline, whichever instance stored them: so
the presence an instance leaves behind when it dies (SIGKILL, a lost machine)
or restarts ends within ``timeout`` plus one sweep, with nobody touching the
room. No instance needs an identity: a presence belongs to no instance, and only
a live instance with a live socket can move its deadline on.

The login's last socket here leaving the room (LEAVE, a lost access, a close)
removes it at once, unless another instance refreshed it since this one last
did (``remove_user`` with ``idle_since``). A removal that changed ``Users`` is
announced with ``announce`` (a ``ROOM_UPDATE`` on the bus), by the instance that
made it only; a removal the store did not answer (``OutcomeUnknown``) is announced
once it answers, and the sweep waits for a sweep of its own in doubt.

Costs: an idle socket costs a set entry here and nothing on the reactor (no
timer per login); a sweep is one store call, an index range read of the due
presences (O(log n) for n presences when none is due), and at most
``SWEEP_BATCHES`` calls of ``SWEEP_BATCH`` presences each when many are due at
once; N instances make N such calls per ``sweep_interval`` in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsgw.chat.model import OutcomeUnknown, Room, StoreUnavailable
from wsgw.interfaces import IChatStore
from wsgw.sessions import Session

Changed = tuple[Room | None, bool]  # what the store's presence calls fire: (the room, whether Users changed)

SWEEP_INTERVAL = 1.0  # seconds between sweeps, at most (a quarter of the timeout when that is shorter)
SWEEP_BATCH = 100  # presences one store call removes, at most
SWEEP_BATCHES = 10  # store calls one sweep makes, at most, while they come back full


def sweep_interval(timeout: float) -> float:
    """The sweep period for a presence ``timeout`` (seconds): ``SWEEP_INTERVAL``, or a quarter of the timeout
    when that is shorter, but never under 50 ms."""
    return max(min(SWEEP_INTERVAL, timeout / 4), 0.05)


@attrs.define(eq=False)
class _Member:
    """A login in a room, as seen from this instance: its sockets here and when one of them last refreshed it."""

    sockets: set[Session] = attrs.field(factory=set)
    last_touch: float | None = None  # None: not stored by this instance yet


class Presence:
    """The presence of this instance's logins in rooms, over the store shared by every instance, and the sweep
    that ends the presences past their deadline (``start``/``stop``).

    ``announce(result)`` publishes the room when a removal changed its Users (it never fails);
    ``track(d)`` keeps background work until it fires, so that a shutdown can wait for it.
    ``expired`` counts the presences this instance's sweeps removed.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IChatStore,
        timeout: float,
        announce: Callable[[Changed], Deferred[Any]],
        track: Callable[[Deferred[Any]], object],
    ) -> None:
        self._clock = clock
        self._store = store
        self._timeout = timeout
        self._announce = announce
        self._track = track
        self._members: dict[tuple[str, str], _Member] = {}
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._failing = False
        self._sweep_in_doubt = False  # a sweep got no answer: the next ones wait for its outcome
        self.expired = 0

    def start(self) -> None:
        """Start sweeping, every ``sweep_interval(timeout)`` seconds from now."""
        if not self._sweeper.running:
            self._sweeper.start(sweep_interval(self._timeout), now=False)

    def stop(self) -> None:
        """Stop sweeping (shutdown: the sockets' closing removes their logins; a sweep in flight goes on)."""
        if self._sweeper.running:
            self._sweeper.stop()

    def attach(self, room_uuid: str, login: str, session: Session) -> None:
        """A socket of ``login`` here attached the room."""
        self._members.setdefault((room_uuid, login), _Member()).sockets.add(session)

    def touch(self, room_uuid: str, login: str, now: float) -> Deferred[Changed]:
        """A JOIN or PING: store the login present until ``now + timeout``."""
        member = self._members.get((room_uuid, login))
        if member is not None:
            member.last_touch = now
        return self._store.touch_user(room_uuid, login, now, now + self._timeout)

    async def detach(self, room_uuid: str, login: str, session: Session) -> None:
        """A socket of ``login`` here detached the room; the login's last one takes its presence along."""
        key = (room_uuid, login)
        member = self._members.get(key)
        if member is None:
            return
        member.sockets.discard(session)
        if member.sockets:
            return
        del self._members[key]
        if member.last_touch is None:
            return  # never stored from here
        try:
            removed = await self._store.remove_user(room_uuid, login, self._clock.seconds(), member.last_touch)
        except OutcomeUnknown as unknown:  # announced once the store answers (issue 11, section 5)
            self._track(unknown.outcome.addCallback(self._announce).addErrback(self._unknown, "removing a presence"))
            return
        await self._announce(removed)

    def _sweep(self) -> Deferred[None] | None:
        if self._sweep_in_doubt:
            return None  # the last sweep got no answer yet: its outcome comes first
        d = Deferred.fromCoroutine(self._expire())
        self._track(d)
        return d

    async def _expire(self) -> None:
        """Remove the presences past their deadline (any instance's) and announce the rooms that changed.
        Never fails (the LoopingCall would stop): a store failure is logged once per outage."""
        try:
            for _ in range(SWEEP_BATCHES):
                try:
                    expired = await self._store.expire_users(self._clock.seconds(), SWEEP_BATCH)
                except OutcomeUnknown as unknown:  # announced once the store answers (issue 11, section 5)
                    self._sweep_in_doubt = True
                    settled = unknown.outcome.addCallback(lambda r: Deferred.fromCoroutine(self._expired(r)))
                    self._track(settled.addErrback(self._unknown, "a sweep").addBoth(self._swept))
                    raise StoreUnavailable(str(unknown)) from None
                if (await self._expired(expired)) < SWEEP_BATCH:
                    break
        except StoreUnavailable as e:
            if not self._failing:
                self._log.warn("chat: presence sweep failed, retrying every sweep: {reason}", reason=str(e))
            self._failing = True
            return
        except Exception:  # noqa: BLE001 - the sweep must go on
            self._log.failure("chat: presence sweep failed")
            return
        if self._failing:
            self._failing = False
            self._log.info("chat: presence sweep works again")

    async def _expired(self, result: tuple[list[Room], int]) -> int:
        """Count and announce what one ``expire_users`` call removed; how many presences were due."""
        rooms, due = result
        self.expired += due
        if rooms:
            self._log.debug("presence expired in {n} rooms", n=len(rooms))
            await DeferredList([self._announce((room, True)) for room in rooms])
        return due

    def _swept(self, _: object) -> None:
        self._sweep_in_doubt = False

    def _unknown(self, failure: Any, what: str) -> None:
        if failure.check(CancelledError):  # the store stopped (shutdown) before it answered
            self._log.warn("chat: the outcome of {what} stayed unknown: the store stopped first", what=what)
        else:
            self._log.failure("chat: the outcome of {what} stayed unknown", failure, what=what)
