"""The ``/chat`` endpoint (PROTOCOL.md §5): client chat frames in order, and room broadcasts of chat events.

``ChatService`` is one instance's chat core and the gateway's ``/chat`` endpoint.
The gateway hands it each chat frame of a socket (``receive``) and tells it when
sockets open, subscribe and close; the dispatcher hands it each chat-topic event
from the bus (``handle``). Every stored change is published on the bus and comes
back through ``handle`` on every instance, this one included: that is the only
way a message reaches the sockets of a room, so a room spans instances.

It owns the order of a socket's frames (one at a time, a POST right after a
JOIN sees the room joined; the frames waiting for the previous ones are bounded
in number and in bytes on the wire, by default what one burst the inbound
limit allows, so such a burst is served whole) and the work still in flight at shutdown;
``actions`` does each request, ``membership`` knows the rooms of the sockets
here and ``presence`` the logins in them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from wsgw.access import Access
from wsgw.chat import requests
from wsgw.chat.actions import Actions
from wsgw.chat.bounded import BoundedStore
from wsgw.chat.membership import ChatSocket, Membership
from wsgw.chat.model import StoreBusy, StoreUnavailable, validate
from wsgw.chat.presence import Changed, Presence
from wsgw.chat.requests import Frame, Limited, Refused
from wsgw.frames import CLOSE_FLOOD, encode, error
from wsgw.interfaces import IChatStore, IEndpoint
from wsgw.logs import LineBudget
from wsgw.sessions import Session, SessionTable

REPUBLISH_DELAY = 1.0  # seconds between two attempts to publish an event the bus refused
MAX_UNPUBLISHED = 1000  # events waiting for the bus to take them; past it one is dropped (logged, counted)

LIMITS = ("queued_frames", "queued_bytes", "rooms_per_user", "store_busy", "edits_per_message", "history_page",
          "rooms_per_socket", "history_bytes")
"""The bounds a chat frame can be refused by (the ``limit`` label of ``wsgw_chat_limits_refused_total``)."""


def _reject(session: Session, code: int, reason: str) -> None:
    """Close the socket with ``code`` (without a gateway to count it)."""
    session.connection.close(code, reason)
    session.flow.stop()


def _state(session: Session) -> ChatSocket:
    state = session.state
    if state is None:
        state = session.state = ChatSocket()
    assert isinstance(state, ChatSocket)
    return state


@implementer(IEndpoint)
class ChatService:
    """One instance's chat core: the /chat endpoint and the chat topic's handler.

    ``publish(payload)`` puts a chat event on the bus; ``offload(f, *args)`` runs ``f`` off the
    reactor thread (``deferToThreadPool``), None to run it inline; ``log_budget`` bounds the lines about frames
    refused while the store is unavailable (by default a budget of its own).

    A socket's frames run one at a time; at most ``max_queued_frames`` of them, and ``max_queued_bytes`` on the
    wire, wait for the one running (the service passes ``[websocket] inbound_burst`` frames of up to
    ``max_frame_chat`` bytes: a burst the inbound limit allows is served whole, PROTOCOL.md §5.2). One more is
    answered with an error frame naming the bound and the socket is closed 4029 by ``close(session, code,
    reason)`` (the gateway's ``reject``; by default the connection is closed directly).

    Counters (read by /metrics): ``handled`` (client frames done, by action), ``refused`` (answered with an
    error frame), ``delivered`` (bus chat events handed to sockets), ``limits_refused`` (frames refused by a
    bound, by limit: ``queued_frames``, ``queued_bytes``, ``rooms_per_user``: a JOIN that would create one more
    GLOBAL or NODE room than ``max_rooms_per_user`` allows its login, 0 = no cap; ``store_busy``: a frame whose
    store call found ``max_store_calls`` in flight on this instance, ``wsgw.chat.bounded``, 0 = no bound;
    ``edits_per_message``: an edit of a message edited ``max_edits_per_message`` times already, 0 = no bound;
    ``history_page``: a HISTORY asking more than ``max_history_page`` messages, or all, answered with that many
    and ``MAY_HAVE_MORE``, 0 = no bound; ``rooms_per_socket``: a JOIN of one more room than
    ``max_rooms_per_socket`` on one socket, 0 = no bound; ``history_bytes``: a HISTORY answer cut to its newest
    messages that fit in ``max_history_bytes``, then ``MAY_HAVE_MORE``: the service passes a quarter of
    ``max_queued_bytes``, so that one answer never closes a prompt reader 4008).
    """

    name = "chat"
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IChatStore,
        publish: Callable[[bytes], Deferred[Any]],
        *,
        history_cap: int = 1000,
        history_on_join: bool = False,
        presence_timeout: float = 20.0,
        max_message_chars: int = 8000,
        offload: Callable[..., Deferred[Any]] | None = None,
        log_budget: LineBudget | None = None,
        max_queued_frames: int = 60,
        max_queued_bytes: int = 60 * 16384,
        close: Callable[[Session, int, str], None] | None = None,
        max_rooms_per_user: int = 0,
        max_store_calls: int = 0,
        max_edits_per_message: int = 0,
        max_history_page: int = 0,
        max_rooms_per_socket: int = 0,
        max_history_bytes: int = 1 << 20,
        table: SessionTable | None = None,
    ) -> None:
        self._table = table if table is not None else SessionTable()
        self._store = store = BoundedStore(store, max_store_calls)
        self._publish = publish
        self._max_queued = max_queued_frames
        self._max_queued_bytes = max_queued_bytes
        self._close = close if close is not None else _reject
        self._budget = log_budget if log_budget is not None else LineBudget(clock)
        self._clock = clock
        self._stopping = False
        self.limits_refused: Counter[str] = Counter()
        self._presence = Presence(clock, store, presence_timeout, self._announce, self._track)
        self._membership = Membership(self._presence)
        self._actions = Actions(clock, store, self._membership, self._publish_change, history_cap=history_cap,
                                history_on_join=history_on_join, max_message_chars=max_message_chars,
                                offload=offload, max_rooms_per_user=max_rooms_per_user,
                                max_edits_per_message=max_edits_per_message, max_history_page=max_history_page,
                                limits=self.limits_refused, max_rooms_per_socket=max_rooms_per_socket,
                                max_history_bytes=max_history_bytes, track=self._track)
        self._pending: set[Deferred[Any]] = set()  # background store work and frames in flight, for stop()
        self._idle: list[Deferred[None]] = []  # stop() waiters: fired when _pending empties
        self.handled: Counter[str] = Counter()
        self.refused = 0
        self.delivered = 0
        self.unpublished = 0  # stored changes' events the bus refused, published again until it takes them
        self.republished = 0  # of those, published since
        self.unpublished_dropped = 0  # refused past MAX_UNPUBLISHED, or still refused at shutdown: never broadcast
        self.queued_frames = 0  # frames of every socket waiting for their socket's previous ones

    # ----------------------------------------------------------------- IEndpoint

    def opened(self, session: Session) -> None:
        session.state = ChatSocket()

    def subscribe(self, session: Session, access: Access) -> None:
        self._table.subscribe(session, access, events=False)  # found by designated() (PROTOCOL.md §3.1)
        self._access_changed(session)

    def unsubscribe(self, session: Session) -> None:
        self._table.unsubscribe(session)
        self._access_changed(session)

    def receive(self, session: Session, frame: Frame, size: int = 0) -> Deferred[None] | None:
        """Handle one chat frame (``size``: its length on the wire, in bytes); frames of a socket run one after
        the other, those waiting bounded as the class says. The Deferred fires (never fails) when the frame is
        done."""
        if session.access is None:
            action = frame.get("@type")
            session.send(error(f"{action if isinstance(action, str) else 'chat'}: not subscribed, send subscribe "
                               "with a token first"))
            return None
        state = _state(session)
        waits = state.lock.locked
        if waits:
            limit = ("queued_frames" if len(state.lock.waiting) >= self._max_queued else
                     "queued_bytes" if state.queued_bytes + size > self._max_queued_bytes else None)
            if limit is not None:
                self.limits_refused[limit] += 1
                action = frame.get("@type")
                session.send(error(f"{action if isinstance(action, str) else 'chat'}: too many chat frames waiting "
                                   f"for the previous ones (at most {self._max_queued} frames, "
                                   f"{self._max_queued_bytes} bytes): slow down"))
                self._close(session, CLOSE_FLOOD, "too many chat frames waiting")
                return None
            state.queued_bytes += size
            self.queued_frames += 1

        def run() -> Deferred[None]:
            if waits:  # its turn came: it waits no more
                state.queued_bytes -= size
                self.queued_frames -= 1
            return Deferred.fromCoroutine(self._frame(session, state, frame))

        return self._track(state.lock.run(run))

    def closed(self, session: Session) -> None:
        """The socket closed: leave its rooms (presence goes when it was the login's last socket)."""
        self._table.unsubscribe(session)
        state = session.state
        if isinstance(state, ChatSocket):
            for room_uuid in list(state.rooms):
                self._leave_soon(session, state, room_uuid)

    # ----------------------------------------------------------------- state

    @property
    def rooms_active(self) -> int:
        """Rooms that have at least one socket of this instance attached."""
        return self._membership.rooms_active

    def start(self) -> None:
        """Start the presence sweep (``wsgw.chat.presence``): from now on this instance also ends the
        presences other instances, dead or restarted ones included, left past their deadline."""
        self._presence.start()

    @property
    def store_calls(self) -> tuple[int, int]:
        """``(in flight, refused busy)``: this instance's chat store calls now, and those refused since it
        started (background ones included)."""
        return self._store.in_flight, self._store.refused

    @property
    def presences_expired(self) -> int:
        """Presences this instance's sweeps removed (any instance's), since it started."""
        return self._presence.expired

    def stop(self) -> Deferred[None]:
        """At shutdown, after the sockets were closed: stop the presence sweep. The Deferred fires
        when the presence removals (leaves of the closed sockets, a sweep) and frames still in flight
        are stored and published; it never fails. The caller bounds the wait (``addTimeout``):
        cancelling it only stops waiting, the work goes on."""
        self._presence.stop()
        self._stopping = True
        if not self._pending:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    def _access_changed(self, session: Session) -> None:
        """The socket re-subscribed or unsubscribed: leave the rooms its access no longer allows
        (all of them when the login changed or it unsubscribed). Also checked before each frame."""
        state = _state(session)
        access = session.access
        for room_uuid, (type, type_object) in list(state.rooms.items()):
            if access is None or access.login != state.login or not requests.may_join(access, type, type_object):
                self._leave_soon(session, state, room_uuid)
        if access is None or access.login != state.login:
            state.login = None if access is None else access.login

    def _leave_soon(self, session: Session, state: ChatSocket, room_uuid: str) -> None:
        """Leave a room now; the store update it causes completes in the background."""
        d = Deferred.fromCoroutine(self._membership.detach(session, state, room_uuid))
        self._track(d.addErrback(self._logged, "leaving a room"))

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        """Keep ``d`` (work that never fails) until it fires, so that stop() can wait for it."""
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            if not self._pending:
                waiters, self._idle = self._idle, []
                for waiter in waiters:
                    if not waiter.called:  # a waiter cancelled by its timeout has fired already
                        waiter.callback(None)
            return result

        return d.addBoth(done)

    # ----------------------------------------------------------------- frames

    async def _frame(self, session: Session, state: ChatSocket, frame: Frame) -> None:
        if not session.open or session.flow.stopped:
            return  # closed, or being closed (no frame of the client's is handled then), while it waited
        action = frame.get("@type")
        name = action if isinstance(action, str) and action else "chat frame"
        try:
            if not isinstance(action, str) or not action:
                raise Refused("chat frame: missing @type")
            handler = self._actions.by_type.get(action)
            if handler is None:
                raise Refused(f"unknown @type {requests.show(action)}")
            access = session.access
            if access is None:
                raise Refused(f"{action}: not subscribed")
            if access.login != state.login:
                self._access_changed(session)
            await handler(session, state, access, frame)
            self.handled[action] += 1
        except StoreBusy:
            self.limits_refused["store_busy"] += 1
            self._reply(session, error(f"{name}: the chat store is busy, try again later"))
        except StoreUnavailable as e:
            self._budget.warn(self._log, "chat_store", "chat {action} from {session} refused: store unavailable "
                              "({reason})", action=name, session=session, reason=str(e))
            self._reply(session, error(f"{name}: the chat store is unavailable, try again later"))
        except Refused as refused:
            self.refused += 1
            if isinstance(refused, Limited):
                self.limits_refused[refused.limit] += 1
            self._reply(session, error(str(refused)))
        except Exception:  # noqa: BLE001 - a store failure must answer the socket, not kill it
            self._budget.failure(self._log, "chat {action} from {session} failed", action=name, session=session)
            self._reply(session, error(f"{name}: internal error"))

    def _reply(self, session: Session, payload: bytes) -> None:
        if session.open:
            session.send(payload)

    # ----------------------------------------------------------------- bus

    def _announce(self, result: Changed) -> Deferred[bool]:
        """Publish the room when a presence change changed its Users (``_publish_change``)."""
        room, changed = result
        if room is None or not changed:
            return succeed(True)
        return self._publish_change(encode({"Room": room}))

    def _publish_change(self, payload: bytes) -> Deferred[bool]:
        """Publish a stored change's event (PROTOCOL.md §5: a stored change is always broadcast). Fires True when
        the bus took it, False when it refused it: it is then published again every ``REPUBLISH_DELAY`` seconds
        until the bus takes it (at most ``MAX_UNPUBLISHED`` such events at once; the rest, and those still
        refused after ``stop()``, are dropped, logged and counted). Never fails."""
        def refused(failure: Any) -> bool:
            self._budget.warn(self._log, "chat_store", "chat: the bus refused an event ({reason}): publishing it "
                              "again every {delay} s", reason=failure.getErrorMessage(), delay=REPUBLISH_DELAY)
            if self.unpublished >= MAX_UNPUBLISHED:
                self.unpublished_dropped += 1
            else:
                self.unpublished += 1
                self._track(Deferred.fromCoroutine(self._republish(payload)))
            return False
        return self._publish(payload).addCallbacks(lambda _: True, refused)

    async def _republish(self, payload: bytes) -> None:
        try:
            while True:
                await deferLater(self._clock, REPUBLISH_DELAY, lambda: None)
                try:
                    await self._publish(payload)
                except Exception:  # noqa: BLE001 - the bus is still down: again later, or dropped at shutdown
                    if self._stopping:
                        self.unpublished_dropped += 1
                        self._log.warn("chat: an event the bus refused was never broadcast (shutdown)")
                        return
                else:
                    self.republished += 1
                    return
        finally:
            self.unpublished -= 1

    def _logged(self, failure: Any, what: str) -> None:
        if failure.check(StoreUnavailable):  # an outage or a busy store: within the budget, no traceback
            self._budget.warn(self._log, "chat_store", "chat: {what} failed: {reason}", what=what,
                              reason=str(failure.value))
        else:
            self._log.failure("chat: {what} failed", failure, what=what)

    def handle(self, event: dict[str, Any]) -> None:
        """A chat-topic event from the bus (§5.4): broadcast it to this instance's sockets in the room."""
        room_uuid, payload = validate(event)
        self.delivered += self._membership.broadcast(room_uuid, payload)
