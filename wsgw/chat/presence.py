"""Chat presence (PROTOCOL.md §5.2): which logins are in a room's ``Users``, as this instance keeps it.

A login is in a room's stored ``Users`` while one of its sockets here has the
room joined and JOINed or PINGed it within ``timeout``. Each instance expires
the logins of its own sockets, conditionally (``remove_user`` with
``idle_since``), so a fresher refresh from another instance wins; and the
login's last socket here leaving the room removes it at once. A removal that
changed ``Users`` is announced with ``announce`` (a ``ROOM_UPDATE`` on the bus).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsgw.chat.model import Room
from wsgw.interfaces import IChatStore
from wsgw.sessions import Session

Changed = tuple[Room | None, bool]  # what the store's presence calls fire: (the room, whether Users changed)


@attrs.define(eq=False)
class _Member:
    """A login in a room, as seen from this instance: its sockets here and its expiry timer."""

    sockets: set[Session] = attrs.field(factory=set)
    last_touch: float | None = None
    timer: IDelayedCall | None = None


class Presence:
    """The presence of this instance's logins in rooms, over the store shared by every instance.

    ``announce(result)`` publishes the room when a removal changed its Users (it never fails);
    ``track(d)`` keeps background work until it fires, so that a shutdown can wait for it.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IChatStore,
        timeout: float,
        announce: Callable[[Changed], Deferred[None]],
        track: Callable[[Deferred[Any]], object],
    ) -> None:
        self._clock = clock
        self._store = store
        self._timeout = timeout
        self._announce = announce
        self._track = track
        self._members: dict[tuple[str, str], _Member] = {}

    def attach(self, room_uuid: str, login: str, session: Session) -> None:
        """A socket of ``login`` here attached the room."""
        self._members.setdefault((room_uuid, login), _Member()).sockets.add(session)

    def touch(self, room_uuid: str, login: str, now: float) -> Deferred[Changed]:
        """A JOIN or PING: restart the login's expiry timer here and refresh it in the store."""
        member = self._members.get((room_uuid, login))
        if member is not None:
            member.last_touch = now
            if member.timer is not None and member.timer.active():
                member.timer.reset(self._timeout)
            else:
                member.timer = self._clock.callLater(self._timeout, self._expire, room_uuid, login)
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
        if member.timer is None:
            return  # already expired: nothing of ours left in the store
        if member.timer.active():
            member.timer.cancel()
        removed = await self._store.remove_user(room_uuid, login, self._clock.seconds(), member.last_touch)
        await self._announce(removed)

    def stop(self) -> None:
        """Cancel every expiry timer (shutdown: the sockets' closing removes their logins)."""
        for member in self._members.values():
            if member.timer is not None and member.timer.active():
                member.timer.cancel()
            member.timer = None

    def _expire(self, room_uuid: str, login: str) -> None:
        member = self._members.get((room_uuid, login))
        if member is None:
            return
        since, member.last_touch, member.timer = member.last_touch, None, None
        self._log.debug("presence of {login} in {room} expired", login=login, room=room_uuid)
        d = self._store.remove_user(room_uuid, login, self._clock.seconds(), since)
        d.addCallback(self._announce)
        d.addErrback(lambda f: self._log.failure("chat: expiring presence failed", f))
        self._track(d)
