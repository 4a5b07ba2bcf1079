"""The gateway core: sessions of both endpoints, subscription, auth timeout and token expiry.

Protocols hand it decoded client frames; it never sees Autobahn. Events reach
``/ws`` sessions through ``table`` (the topic handlers read it); ``/chat``
sessions are handed to the chat service once subscribed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw import frames
from wsgw.access import Access, AccessError
from wsgw.auth import AuthError
from wsgw.interfaces import IAccessResolver, IConnection, ITokenVerifier
from wsgw.pacing import Pacer
from wsgw.sessions import Session, SessionTable

CLOSE_NORMAL = 1000
CLOSE_BAD_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_AUTH = 4001
CLOSE_SLOW = 4008
CLOSE_FLOOD = 4029

SUBSCRIBE = ("subscribe", "register")
UNSUBSCRIBE = ("unsubscribe", "unregister")


class Gateway:
    """Sessions, their subscription state and their timers."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        verifier: ITokenVerifier,
        resolver: IAccessResolver,
        chat: Any = None,
        *,
        auth_timeout: float = 30.0,
        leeway: float = 30.0,
        pacing_rate: float = 30.0,
        pacing_burst: float = 20.0,
        max_queued_frames: int = 10_000,
    ) -> None:
        self._clock = clock
        self._verifier = verifier
        self._resolver = resolver
        self._chat = chat
        self._auth_timeout = auth_timeout
        self._leeway = leeway
        self._pacing = (pacing_rate, pacing_burst, max_queued_frames)
        self.table = SessionTable()
        self.sessions: set[Session] = set()
        self._timers: dict[Session, IDelayedCall] = {}
        self._attempt: dict[Session, int] = {}
        self._drain_waiters: list[Deferred[None]] = []
        self.subscribes_accepted = 0
        self.subscribes_refused = 0
        self.refusals: Counter[str] = Counter()  # subscribe refusals by kind (metrics)
        self.closes: Counter[int] = Counter()  # closes the server initiated, by code (counted by the protocol)

    # -- socket lifecycle -------------------------------------------------

    def open(self, connection: IConnection, endpoint: str) -> Session:
        """A socket finished its handshake on ``endpoint`` ("ws" or "chat")."""
        session = Session(connection, endpoint)
        self.sessions.add(session)
        if endpoint == "ws":
            self.table.add(session)
            rate, burst, limit = self._pacing
            if rate > 0:
                session.pacer = Pacer(rate, burst, self._clock, connection.send, lambda: self._too_slow(session), limit)
        elif self._chat is not None:
            self._chat.attach(session)
        if self._auth_timeout > 0:
            self._set_timer(session, self._auth_timeout, self._auth_timed_out, session)
        return session

    def closed(self, session: Session) -> None:
        """The socket is gone: forget the session everywhere."""
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._cancel_timer(session)
        self._attempt.pop(session, None)
        if session.pacer is not None:
            session.pacer.stop()
        if session.endpoint == "ws":
            self.table.remove(session)
        elif self._chat is not None:
            self._chat.detach(session)
        if not self.sessions:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def when_empty(self) -> Deferred[None]:
        """Fires when no socket is left open."""
        if not self.sessions:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        return d

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.connection.close(code, reason)

    # -- client frames ----------------------------------------------------

    def receive(self, session: Session, frame: dict[str, Any]) -> Deferred[None] | None:
        """One decoded client frame (a JSON object)."""
        kind = frame.get("@type")
        if kind in SUBSCRIBE:
            return self._subscribe(session, frame.get("jwt"))
        if kind in UNSUBSCRIBE:
            self._unsubscribe(session)
            return None
        if session.endpoint == "chat" and self._chat is not None:
            if session.access is None:
                session.send(frames.error(f"{kind}: not subscribed, send subscribe with a token first"))
                return None
            return self._chat.handle_frame(session, frame)
        return None  # anything else on /ws is ignored, as in Cells

    def _subscribe(self, session: Session, token: object) -> Deferred[None] | None:
        if not isinstance(token, str) or not token:
            self._refuse(session, "subscribe: missing token", CLOSE_AUTH, "missing_token")
            return None
        attempt = self._attempt.get(session, 0) + 1
        self._attempt[session] = attempt

        def verified(claims: dict[str, Any]) -> Deferred[Access]:
            return self._resolver.resolve(token, claims)

        def resolved(access: Access) -> None:
            if session not in self.sessions or self._attempt.get(session) != attempt:
                return  # closed meanwhile, or a later subscribe overtook this one
            self._accept(session, access, token)

        def failed(failure: Failure) -> None:
            if session not in self.sessions or self._attempt.get(session) != attempt:
                return
            if failure.check(AuthError):
                self._refuse(session, f"subscribe: {failure.value}", CLOSE_AUTH, "invalid_token")
            elif failure.check(AccessError):
                reason = str(failure.value)
                code = CLOSE_TRY_AGAIN if "unavailable" in reason else CLOSE_AUTH
                self._refuse(session, f"subscribe: {reason}", code,
                             "access_unavailable" if code == CLOSE_TRY_AGAIN else "access_denied")
            else:
                self._log.failure("subscribe failed unexpectedly for session {sid}", failure, sid=session.sid)
                self._refuse(session, "subscribe: internal error", CLOSE_TRY_AGAIN, "internal_error")

        d = self._verifier.verify(token)
        d.addCallback(verified)
        d.addCallbacks(resolved, failed)
        return d

    def _accept(self, session: Session, access: Access, token: str) -> None:
        if session.endpoint == "ws":
            self.table.subscribe(session, access)
        else:
            session.access = access
            if self._chat is not None:
                self._chat.access_changed(session)
        session.token = token
        self.subscribes_accepted += 1
        self._cancel_timer(session)
        if access.exp is not None:
            delay = max(0.0, access.exp + self._leeway - self._clock.seconds())
            self._set_timer(session, delay, self._expired, session)
        self._log.info("session {sid} subscribed as {login} on /{endpoint}", sid=session.sid, login=access.login,
                       endpoint=session.endpoint)
        session.send(frames.encode({"@type": "subscribed", "user": access.login, "exp": access.exp}))

    def _refuse(self, session: Session, reason: str, code: int, kind: str) -> None:
        self.subscribes_refused += 1
        self.refusals[kind] += 1
        self._log.info("session {sid} refused: {reason}", sid=session.sid, reason=reason)
        session.send(frames.error(reason))
        session.connection.close(code, reason[:120])

    def _unsubscribe(self, session: Session) -> None:
        self._attempt[session] = self._attempt.get(session, 0) + 1  # a subscribe in flight no longer counts
        self._cancel_timer(session)
        if session.endpoint == "ws":
            self.table.unsubscribe(session)
        else:
            session.access = None
            if self._chat is not None:
                self._chat.access_changed(session)
        session.token = None

    # -- timers -----------------------------------------------------------

    def _set_timer(self, session: Session, delay: float, fn: Any, *args: Any) -> None:
        self._cancel_timer(session)
        self._timers[session] = self._clock.callLater(delay, fn, *args)

    def _cancel_timer(self, session: Session) -> None:
        call = self._timers.pop(session, None)
        if call is not None and call.active():
            call.cancel()

    def _auth_timed_out(self, session: Session) -> None:
        self._timers.pop(session, None)
        if session in self.sessions and session.access is None:
            session.connection.close(CLOSE_AUTH, "authentication timeout")

    def _expired(self, session: Session) -> None:
        self._timers.pop(session, None)
        if session in self.sessions:
            session.connection.close(CLOSE_AUTH, "token expired")

    def _too_slow(self, session: Session) -> None:
        self._log.warn("session {sid} reads too slowly: closing it", sid=session.sid)
        session.connection.close(CLOSE_SLOW, "client too slow")
