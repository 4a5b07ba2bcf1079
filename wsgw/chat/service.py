"""The ``/chat`` endpoint (PROTOCOL.md §5): client chat frames in order, and room broadcasts of chat events.

``ChatService`` is one instance's chat core and the gateway's ``/chat`` endpoint.
The gateway hands it each chat frame of a socket (``receive``) and tells it when
sockets open, subscribe and close; the dispatcher hands it each chat-topic event
from the bus (``handle``). Every stored change is published on the bus and comes
back through ``handle`` on every instance, this one included: that is the only
way a message reaches the sockets of a room, so a room spans instances.

It owns the order of a socket's frames (one at a time, a POST right after a
JOIN sees the room joined) and the work still in flight at shutdown;
``actions`` does each request, ``membership`` knows the rooms of the sockets
here and ``presence`` the logins in them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wsgw.access import Access
from wsgw.chat import requests
from wsgw.chat.actions import Actions
from wsgw.chat.membership import ChatSocket, Membership
from wsgw.chat.model import StoreUnavailable, validate
from wsgw.chat.presence import Changed, Presence
from wsgw.chat.requests import Frame, Refused
from wsgw.frames import encode, error
from wsgw.interfaces import IChatStore, IEndpoint
from wsgw.logs import LineBudget
from wsgw.sessions import Session

_MAX_QUEUED = 32  # frames of one socket waiting for the previous ones


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
    refused while the store is unavailable (by default a budget of its own). Counters (read by /metrics):
    ``handled`` (client frames done, by action), ``refused`` (answered with an error frame),
    ``delivered`` (bus chat events handed to sockets).
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
    ) -> None:
        self._publish = publish
        self._budget = log_budget if log_budget is not None else LineBudget(clock)
        self._presence = Presence(clock, store, presence_timeout, self._announce, self._track)
        self._membership = Membership(self._presence)
        self._actions = Actions(clock, store, self._membership, publish, history_cap=history_cap,
                                history_on_join=history_on_join, max_message_chars=max_message_chars,
                                offload=offload, track=self._track)
        self._pending: set[Deferred[Any]] = set()  # background store work and frames in flight, for stop()
        self._idle: list[Deferred[None]] = []  # stop() waiters: fired when _pending empties
        self.handled: Counter[str] = Counter()
        self.refused = 0
        self.delivered = 0

    # ----------------------------------------------------------------- IEndpoint

    def opened(self, session: Session) -> None:
        session.state = ChatSocket()

    def subscribe(self, session: Session, access: Access) -> None:
        session.access = access
        self._access_changed(session)

    def unsubscribe(self, session: Session) -> None:
        session.access = None
        self._access_changed(session)

    def receive(self, session: Session, frame: Frame) -> Deferred[None] | None:
        """Handle one chat frame; frames of a socket run one after the other. The Deferred
        fires (never fails) when the frame is done."""
        if session.access is None:
            session.send(error(f"{frame.get('@type')}: not subscribed, send subscribe with a token first"))
            return None
        state = _state(session)
        if len(state.lock.waiting) >= _MAX_QUEUED:
            action = frame.get("@type")
            session.send(error(f"{action if isinstance(action, str) else 'chat'}: too many requests in flight"))
            return None
        return self._track(state.lock.run(lambda: Deferred.fromCoroutine(self._frame(session, state, frame))))

    def closed(self, session: Session) -> None:
        """The socket closed: leave its rooms (presence goes when it was the login's last socket)."""
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
    def presences_expired(self) -> int:
        """Presences this instance's sweeps removed (any instance's), since it started."""
        return self._presence.expired

    def stop(self) -> Deferred[None]:
        """At shutdown, after the sockets were closed: stop the presence sweep. The Deferred fires
        when the presence removals (leaves of the closed sockets, a sweep) and frames still in flight
        are stored and published; it never fails. The caller bounds the wait (``addTimeout``):
        cancelling it only stops waiting, the work goes on."""
        self._presence.stop()
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
        if not session.open:
            return  # closed while this frame waited for the previous ones
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
        except StoreUnavailable as e:
            self._budget.warn(self._log, "chat_store", "chat {action} from {session} refused: store unavailable "
                              "({reason})", action=name, session=session, reason=str(e))
            self._reply(session, error(f"{name}: the chat store is unavailable, try again later"))
        except Refused as refused:
            self.refused += 1
            self._reply(session, error(str(refused)))
        except Exception:  # noqa: BLE001 - a store failure must answer the socket, not kill it
            self._log.failure("chat {action} from {session} failed", action=name, session=session)
            self._reply(session, error(f"{name}: internal error"))

    def _reply(self, session: Session, payload: bytes) -> None:
        if session.open:
            session.send(payload)

    # ----------------------------------------------------------------- bus

    def _announce(self, result: Changed) -> Deferred[None]:
        """Publish the room when a presence change changed its Users; a bus failure is only logged."""
        room, changed = result
        if room is None or not changed:
            return succeed(None)
        return self._publish(encode({"Room": room})).addErrback(self._logged, "publishing a room update")

    def _logged(self, failure: Any, what: str) -> None:
        self._log.failure("chat: {what} failed", failure, what=what)

    def handle(self, event: dict[str, Any]) -> None:
        """A chat-topic event from the bus (§5.4): broadcast it to this instance's sockets in the room."""
        room_uuid, payload = validate(event)
        self.delivered += self._membership.broadcast(room_uuid, payload)
