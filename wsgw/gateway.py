"""The gateway core: the life of every session, whatever its endpoint (PROTOCOL.md §2, §6).

Protocols hand it sockets and decoded client frames; it never sees Autobahn. It owns: opening and closing sessions
(registered in the ``SessionTable``, each with its outbound ``wsgw.flow.Flow``), subscribe / unsubscribe (verify the
token, resolve the access, hand it to the session's endpoint, then drop the frames still waiting that the new access
would not produce; the frames a client sends meanwhile wait for it, in order), the auth timeout and token expiry
timers, the cap on one login's subscribed sockets, and every close the server initiates, counted by code. What a
session receives is its endpoint's business (``wsgw.interfaces.IEndpoint``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from types import MethodType
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw import frames
from wsgw.access import Access, AccessBusy, AccessError, AuthError
from wsgw.flow import Flow
from wsgw.frames import CLOSE_AUTH, CLOSE_FLOOD, CLOSE_REVOKED, CLOSE_SLOW, CLOSE_TRY_AGAIN
from wsgw.interfaces import IAccessResolver, IConnection, IEndpoint, ITokenVerifier
from wsgw.logs import LineBudget
from wsgw.revocations import Revocations
from wsgw.sessions import Census, Deadlines, Session, SessionTable, take_census

SUBSCRIBE = ("subscribe", "register")
UNSUBSCRIBE = ("unsubscribe", "unregister")


class Gateway:
    """Sessions of every endpoint, their subscription state and their timers.

    ``max_queued_bytes`` bounds what each session's flow holds (PROTOCOL.md §4.1). ``max_sockets_per_user``
    (0 = no cap) bounds the subscribed sockets of one login on this instance, both endpoints together: one more
    subscribe is refused with an error frame and close 4029. ``max_waiting_frames`` and ``max_waiting_bytes``
    bound the frames waiting for a subscribe in flight. The lines it logs about a socket (subscribed,
    refused, too slow) are within ``log_budget`` (by default its own, of 60 lines a minute of each kind).
    Counters (read by /metrics): ``subscribes_accepted``, ``refusals`` (subscribe refusals by kind), ``closes``
    (closes the server initiated, by close code), ``withdrawn`` (waiting frames dropped by an access change).
    """

    _log = Logger(namespace=f"{__name__}.Gateway")  # named: compiled (mypyc), Logger() finds no module

    def __init__(self, clock: IReactorTime, verifier: ITokenVerifier, resolver: IAccessResolver, *,
                 auth_timeout: float = 30.0, leeway: float = 30.0, max_queued_bytes: int = 4 << 20,
                 max_waiting_frames: int = 64, max_waiting_bytes: int = 64 * 1024, max_sockets_per_user: int = 0,
                 log_budget: LineBudget | None = None, revocations: Revocations | None = None) -> None:
        self._clock = clock
        self._verifier = verifier
        self._resolver = resolver
        self._deadlines = Deadlines(clock, auth_timeout, self._auth_timed_out)  # (0: none)
        self._leeway = leeway
        self._max_queued_bytes = max_queued_bytes
        self._max_waiting = max_waiting_frames
        self._max_waiting_bytes = max_waiting_bytes
        self._max_per_user = max_sockets_per_user
        self._logins: dict[Session, str] = {}  # subscribed session -> its login, counted in _per_login
        self._per_login: Counter[str] = Counter()
        self._budget = log_budget if log_budget is not None else LineBudget(clock)
        self.revocations = revocations if revocations is not None else Revocations(clock, 86400.0)
        self._ready: Callable[[Access], Access | Deferred[Access]] | None = None  # see wait_for
        self.table = SessionTable()
        self._drain_waiters: list[Deferred[None]] = []
        self.subscribes_accepted = 0
        self.refusals: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.withdrawn = 0
        self.revoked: Counter[str] = Counter()  # sessions closed because their access was revoked, by why

    # -- socket lifecycle -------------------------------------------------

    def open(self, connection: IConnection, endpoint: IEndpoint, write: Callable[[bytes], None] | None = None) -> Session:
        """A socket finished its opening handshake on ``endpoint``; its flow writes through ``write`` (what
        ``connection.write`` does, without the calls between: the delivery path), by default ``connection.write``."""
        session = Session(connection, endpoint, Flow(write or connection.write, max_bytes=self._max_queued_bytes))
        # too_slow(session) as a bound method of the session (48 bytes; a partial is ~250 with its tuple and dict)
        session.flow.overflow = MethodType(self.too_slow, session)
        self.table.add(session)
        endpoint.opened(session)
        self._deadlines.add(session)
        return session

    def closed(self, session: Session) -> None:
        """The socket is gone: forget the session everywhere (called once or more, acts once)."""
        if not session.open:
            return
        session.open = False
        session.flow.stop()
        session.waiting = None
        self._cancel_timer(session)
        self._deadlines.discard(session)
        self._count_as(session, None)
        self.table.remove(session)
        assert session.endpoint is not None
        session.endpoint.closed(session)
        if not self.table:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def census(self) -> Census:
        """Count the open sessions (a scan: for /metrics at scrape time, never per event)."""
        return take_census(self.table)

    def when_empty(self) -> Deferred[None]:
        """Fires when no socket is left open."""
        if not self.table:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        return d

    def close(self, session: Session, code: int, reason: str) -> None:
        """Close the session's socket with ``code`` (PROTOCOL.md §6), counted once per socket; after the close
        frame nothing more is sent, no frame of the client's is handled, and a subscribe in flight is void."""
        if session.connection.close(code, reason):
            self.closes[code] += 1
        session.flow.stop()
        session.waiting = None
        session.attempt += 1  # (answered before the socket is gone, it may not subscribe it nor count)

    def failed(self, text: str, failure: Any, **fields: Any) -> None:
        """Log the traceback of work for a client that failed unexpectedly (a bug a peer may repeat), within the
        log budget (kind ``internal_error``)."""
        self._budget.failure(self._log, text, failure, **fields)

    def reject(self, session: Session, code: int, reason: str) -> None:
        """Tell the client why in an error frame, then close with ``code``."""
        session.send(frames.error(reason))
        self.close(session, code, reason)

    def revoke(self, session: Session, reason: str, why: str, code: int = CLOSE_REVOKED) -> None:
        """The session may no longer have its access (PROTOCOL.md §3.1): drop every frame waiting for it but
        replies, tell it ``access revoked: <reason>`` and close it with ``code`` (4003; 1013 when its access could
        not be re-derived), counted in ``revoked`` by ``why``."""
        if not session.open or session.flow.stopped:
            return
        self.revoked[why] += 1
        self.withdrawn += session.flow.refilter(lambda scope: False)
        session.flow.unsuspend()
        prefix = "access revoked" if code == CLOSE_REVOKED else "access unknown"
        self._budget.info(self._log, "revoked", "session {sid} ({login}): {prefix}: {reason}", sid=session.sid,
                          login=session.access.login if session.access else "-", prefix=prefix, reason=reason)
        self.reject(session, code, f"{prefix}: {reason}")

    def reauthorized(self, session: Session, access: Access) -> None:
        """``session``'s access was re-derived without the client asking (PROTOCOL.md §3.1): apply ``access`` as a
        re-subscribe would (less what a revocation withholds; a revoked token closes it 4003), drop the frames
        waiting that it would not produce, and let the rest go out. No frame tells the client."""
        if not session.open or session.flow.stopped:
            return
        revocation = self.revocations.refuses(access.identity)
        if revocation is not None:
            self.revoke(session, f"{revocation.kind} revoked", "revoked")
            return
        access = access.without_workspaces(self.revocations.withheld(access))
        before = session.access
        assert session.endpoint is not None
        session.endpoint.subscribe(session, access)
        self._refilter(session, before)
        session.flow.unsuspend()

    def too_slow(self, session: Session) -> None:
        """The one answer to a reader that stopped reading, whichever of its queues overflowed: 4008. A reader that
        reads, whose frames pile up only because its access is being re-derived (PROTOCOL.md §3.1), is not too
        slow: it is closed 1013 (its access unknown; it reconnects and subscribes afresh)."""
        if session.flow.suspended:
            self._budget.warn(self._log, "too_slow", "session {sid} ({peer}): over the byte bound while its access "
                              "is re-derived: closing it with 1013", sid=session.sid, peer=session.connection.peer)
            self.close(session, CLOSE_TRY_AGAIN, "access unknown: too many frames while it is re-derived")
            return
        self._budget.warn(self._log, "too_slow", "session {sid} ({peer}) reads too slowly: closing it with 4008",
                          sid=session.sid, peer=session.connection.peer)
        self.close(session, CLOSE_SLOW, "client too slow")

    def close_all(self, code: int, reason: str) -> None:
        """Close every open socket (shutdown), after the frames its pacing still holds."""
        for session in list(self.table):
            session.flow.release()
            self.close(session, code, reason)

    def abort_all(self) -> None:
        """Drop every socket still open at once (shutdown, past its bound)."""
        for session in list(self.table):
            session.connection.abort()

    # -- client frames ----------------------------------------------------

    def receive(self, session: Session, frame: dict[str, Any], size: int = 0) -> Deferred[None] | None:
        """One decoded client frame (a JSON object; ``size``: its length on the wire, in bytes). A socket's
        frames are handled in the order sent: while a subscribe is in flight (token check, access lookup) the
        frames after it wait, at most ``max_waiting_frames`` of them and ``max_waiting_bytes`` on the wire (past
        either: error, close 4029), and are handled once it is done (PROTOCOL.md §2)."""
        waiting = session.waiting
        if waiting is None:
            return self._handle(session, frame, size)
        if len(waiting) >= self._max_waiting or sum(s for _, s in waiting) + size > self._max_waiting_bytes:
            self._refuse(session, f"too many frames while subscribing (at most {self._max_waiting}, "
                                  f"{self._max_waiting_bytes} bytes)", CLOSE_FLOOD, "too_many_waiting")
            return None
        waiting.append((frame, size))
        return None

    def _handle(self, session: Session, frame: dict[str, Any], size: int = 0) -> Deferred[None] | None:
        kind = frame.get("@type")
        if kind in SUBSCRIBE:
            d = self._subscribe(session, frame.get("jwt"))
            if d is not None:
                session.waiting = deque()  # until the subscribe is done (at once, when nothing had to wait)
                d.addBoth(self._subscribed, session)
            return d
        if kind in UNSUBSCRIBE:
            self._unsubscribe(session)
            return None
        assert session.endpoint is not None
        return session.endpoint.receive(session, frame, size)

    def _subscribed(self, result: object, session: Session) -> object:
        """A subscribe in flight is done: handle the frames that waited for it, in order, until one of them is a
        subscribe in flight again (a closed socket's frames are dropped)."""
        waiting, session.waiting = session.waiting, None
        while waiting and not session.flow.stopped and _waiting(session) is None:
            d = self._handle(session, *waiting.popleft())
            if d is not None:
                d.addErrback(lambda f: self.failed("handling a frame of session {sid}", f, sid=session.sid))
        again = _waiting(session)
        if waiting and again is not None:
            again.extendleft(reversed(waiting))
        return result

    def _subscribe(self, session: Session, token: object) -> Deferred[None] | None:
        if not isinstance(token, str) or not token:
            self._refuse(session, "subscribe: missing token", CLOSE_AUTH, "missing_token")
            return None
        attempt = session.attempt = session.attempt + 1
        # Each step known at once (an HMAC token, an access from its claims) runs here, not through a chain of Deferreds
        # (bench/RESULTS.md "Connect path", part 5): the same calls, in order, a raise a failure as in a chain.
        d: Any = self._verifier.verify(token)
        steps = 0
        try:
            value = _now(d)
            if value is not _LATER:
                d, steps = self._resolve(value, token), 1
                value = _now(d)
                if value is not _LATER and self._ready is not None:  # the revocations first
                    d, steps = self._ready(value), 2
                    value = _now(d)
        except BaseException:
            d, value = fail(), _LATER
        if value is not _LATER:
            try:
                self._resolved(value, session, attempt, token)
            except BaseException:  # (as the caller's errback logs what a chain ends with)
                self.failed("handling a frame of session {sid}", Failure(), sid=session.sid)  # type: ignore[no-untyped-call]
            return None
        # Bound methods and arguments, no nested functions: compiled (mypyc), a nested function is kept in an
        # environment object that holds it back, a reference cycle that would keep the session until a collection.
        if steps < 1:
            d.addCallback(self._resolve, token)
        if steps < 2 and self._ready is not None:
            d.addCallback(self._ready)
        d.addCallbacks(self._resolved, self._failed, callbackArgs=(session, attempt, token),
                       errbackArgs=(session, attempt))
        return d  # type: ignore[no-any-return]

    def _resolve(self, claims: dict[str, Any], token: str) -> Deferred[Access]:
        return self._resolver.resolve(token, claims)

    def _resolved(self, access: Access, session: Session, attempt: int, token: str) -> None:
        if not session.open or session.attempt != attempt:  # closed, or overtaken by a later subscribe
            return
        refused = self._refused(access)
        if refused is not None:
            self._refuse(session, f"subscribe: {refused}", CLOSE_AUTH, "revoked")
            return
        session.token = token if self._resolver.refreshes else None
        self._accept(session, access.without_workspaces(self.revocations.withheld(access)))

    def _failed(self, failure: Failure, session: Session, attempt: int) -> None:
        if not session.open or session.attempt != attempt:
            return
        if isinstance(failure.value, AuthError):
            self._refuse(session, f"subscribe: {failure.value}", CLOSE_AUTH, "invalid_token")
        elif isinstance(failure.value, AccessBusy):
            self._refuse(session, f"subscribe: {failure.value}", CLOSE_TRY_AGAIN, "access_busy")
        elif isinstance(failure.value, AccessError):
            unavailable = "unavailable" in str(failure.value)
            self._refuse(session, f"subscribe: {failure.value}", CLOSE_TRY_AGAIN if unavailable else CLOSE_AUTH,
                         "access_unavailable" if unavailable else "access_denied")
        else:
            self.failed("subscribe failed unexpectedly for session {sid}", failure, sid=session.sid)
            self._refuse(session, "subscribe: internal error", CLOSE_TRY_AGAIN, "internal_error")

    def wait_for(self, ready: Callable[[Access], Access | Deferred[Access]]) -> None:
        """Every subscribe's access passes through ``ready`` before it is checked against ``revocations``
        (PROTOCOL.md §3.1): ``wsgw.control.RevocationLoader.ready`` holds it while they load, and fails it with
        AccessError ``revocations unavailable, try again`` (1013) while they cannot be loaded: fail closed."""
        self._ready = ready

    def _refused(self, access: Access) -> str | None:
        """Why a token giving ``access`` may not subscribe (PROTOCOL.md §3.1): revoked, issued (``iat``) later than
        now + leeway, or living longer than revocations are kept (``Revocations.max_token_lifetime``, from ``iat``,
        else from now); None when it may."""
        if self.revocations.refuses(access.identity) is not None:
            return "token revoked"
        now, lifetime = self._clock.seconds(), self.revocations.max_token_lifetime
        if access.iat is not None and access.iat > now + self._leeway:  # it would escape every revocation by time
            return "token issued in the future (iat)"
        if access.exp is not None and access.exp - (now if access.iat is None else access.iat) > lifetime:
            return f"token lives longer than {lifetime:g} s (exp - iat)"
        return None

    def _accept(self, session: Session, access: Access) -> None:
        assert session.endpoint is not None
        login = access.login
        if (self._max_per_user and self._logins.get(session) != login
                and self._per_login[login] >= self._max_per_user):
            self._refuse(session, f"subscribe: too many sockets for this user (at most {self._max_per_user})",
                         CLOSE_FLOOD, "too_many_sockets")
            return
        self._count_as(session, login)
        before = session.access
        session.endpoint.subscribe(session, access)
        self._refilter(session, before)
        self.subscribes_accepted += 1
        self._deadlines.discard(session)
        if access.exp is None:
            self._cancel_timer(session)
        else:
            self._set_expiry(session, max(0.0, access.exp + self._leeway - self._clock.seconds()))
        self._budget.info(self._log, "subscribed", "session {sid} subscribed as {login} on /{endpoint}",
                          sid=session.sid, login=access.login, endpoint=session.endpoint.name)
        # (a string and an integer or None: orjson's bytes are encode's, without building a JSON encoder per call)
        session.send(frames.encode_plain({"@type": "subscribed", "user": access.login, "exp": access.exp}))

    def _refuse(self, session: Session, reason: str, code: int, kind: str) -> None:
        self.refusals[kind] += 1
        self._budget.info(self._log, "refused", "session {sid} refused: {reason}", sid=session.sid, reason=reason)
        self.reject(session, code, reason)

    def _unsubscribe(self, session: Session) -> None:
        session.attempt += 1  # a subscribe in flight no longer counts
        session.token = None
        self._cancel_timer(session)
        self._count_as(session, None)
        assert session.endpoint is not None
        before = session.access
        session.endpoint.unsubscribe(session)
        self._refilter(session, before)

    def _count_as(self, session: Session, login: str | None) -> None:
        """Count ``session`` among the subscribed sockets of ``login`` (None: of no login) from now on."""
        before = self._logins.pop(session, None)
        if before is not None:
            self._per_login[before] -= 1
            if not self._per_login[before]:
                del self._per_login[before]
        if login is not None:
            self._logins[session] = login
            self._per_login[login] += 1

    def _refilter(self, session: Session, before: Access | None) -> None:
        """The session's access changed from ``before``: drop the frames waiting in its flow that the new
        access would not produce (PROTOCOL.md §3.1, §4.1); a new login, or none, keeps only replies."""
        now = session.access
        if now is None or before is None or now.login != before.login:
            self.withdrawn += session.flow.refilter(lambda scope: False)
        else:
            self.withdrawn += session.flow.refilter(lambda scope: scope.admits(session))

    # -- timers -----------------------------------------------------------

    def _set_expiry(self, session: Session, delay: float) -> None:
        """The session's expiry in ``delay`` s: a pending one due no later is moved on (``reset``, no re-sort of the
        reactor's heap), a later one replaced (moving a timer sooner re-sorts it)."""
        call = session.timer
        if isinstance(call, DelayedCall) and call.active() and call.getTime() <= self._clock.seconds() + delay:
            call.reset(delay)
        else:
            self._cancel_timer(session)
            session.timer = self._clock.callLater(delay, self._expired, session)

    def _cancel_timer(self, session: Session) -> None:
        call, session.timer = session.timer, None
        if call is not None and call.active():
            call.cancel()

    def _auth_timed_out(self, session: Session) -> None:
        if session.open and session.access is None:
            self.close(session, CLOSE_AUTH, "authentication timeout")

    def _expired(self, session: Session) -> None:
        session.timer = None
        if session.open:
            self.close(session, CLOSE_AUTH, "token expired")


_LATER = object()  # (not known yet)


def _now(result: Any) -> Any:
    """``result``, or a Deferred's value when it has one (fired, not paused, not a failure); else ``_LATER``."""
    if not isinstance(result, Deferred):
        return result
    if not result.called or result.paused or isinstance(result.result, (Failure, Deferred)):
        return _LATER
    return result.result


def _waiting(session: Session) -> deque[tuple[dict[str, Any], int]] | None:
    """``session.waiting`` as it is now: read through a call, since after ``session.waiting = None`` mypy takes it
    for None until the next assignment, whatever a call in between did, and compiled (mypyc) code checks that."""
    return session.waiting
