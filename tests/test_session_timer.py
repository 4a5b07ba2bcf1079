"""The session's timers: its auth deadline held among all of them (``wsgw.sessions.Deadlines``: one reactor timer for
every socket awaiting its subscribe, PROTOCOL.md §2), its token's expiry its own timer from the subscribe on, moved
on (``DelayedCall.reset``) by a fresher token (bench/RESULTS.md "Auth deadlines")."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from wsgw.access import Access
from wsgw.gateway import Gateway
from wsgw.interfaces import IEndpoint
from wsgw.revocations import Revocations
from wsgw.sessions import Deadlines, Session
from wsgw.testing import RecordingConnection


class _Tokens:
    """Verifier and resolver: ``login@exp`` is that login's token expiring at ``exp``; ``later`` never answers."""

    refreshes = False

    def verify(self, token: str) -> Deferred[dict[str, Any]]:
        if token == "later":
            return Deferred()
        login, _, exp = token.partition("@")
        return succeed({"name": login, "sub": login, "exp": int(exp)})

    def resolve(self, token: str, claims: dict[str, Any]) -> Deferred[Access]:
        return succeed(Access(claims["name"], claims["sub"], "standard", frozenset(), (), claims["exp"]))


@implementer(IEndpoint)
class _Endpoint:
    name = "ws"

    def opened(self, session: Session) -> None: ...

    def subscribe(self, session: Session, access: Access) -> None:
        session.access = access

    def unsubscribe(self, session: Session) -> None:
        session.access = None

    def receive(self, session: Session, frame: dict[str, Any], size: int = 0) -> None: ...

    def closed(self, session: Session) -> None: ...


class _World:
    def __init__(self) -> None:
        self.ws = _Endpoint()


def make(**kwargs: Any) -> tuple[Gateway, Clock, None, _World]:
    clock = Clock()
    tokens = _Tokens()
    return Gateway(clock, tokens, tokens, revocations=Revocations(clock, 10**6), **kwargs), clock, None, _World()


def _times(clock: Clock) -> list[float]:
    return sorted(call.getTime() for call in clock.getDelayedCalls())


@pytest.mark.parametrize("leeway", [0, 5])
def test_the_expiry_timer_is_set_at_subscribe(leeway: float) -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=leeway)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    assert session.timer is None and _times(clock) == [30]  # the auth deadlines' one timer
    clock.advance(10)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    timer = session.timer
    assert timer is not None and timer.getTime() == 100 + leeway
    clock.advance(20)  # the auth deadline passes: nothing to close, nothing rescheduled
    assert conn.closed is None and _times(clock) == [100 + leeway]
    clock.advance(69.9 + leeway)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired") and session.timer is None


def test_an_expiry_sooner_than_the_auth_deadline_closes_at_the_expiry() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@20"})
    assert session.timer is not None and _times(clock) == [20, 30]
    clock.advance(20.1)
    assert conn.closed == (4001, "token expired")


def test_a_fresher_token_moves_the_same_timer_a_staler_one_replaces_it() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    timer = session.timer
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@500"})
    assert session.timer is timer and timer is not None and timer.getTime() == 500
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@200"})
    assert session.timer is not timer and not timer.active()
    assert _times(clock) == [30, 200]
    clock.advance(199.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired")


def test_unsubscribe_and_close_cancel_the_expiry() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    gw.receive(session, {"@type": "unsubscribe"})
    assert session.timer is None and _times(clock) == [30]
    clock.advance(1000)
    assert conn.closed is None and clock.getDelayedCalls() == []
    other = gw.open(RecordingConnection(), world.ws)
    gw.receive(other, {"@type": "subscribe", "jwt": "bob@2000"})
    gw.closed(other)
    assert other.timer is None and _times(clock) == [1030]  # (the auth deadlines' timer, left to fire)
    clock.advance(30)
    assert clock.getDelayedCalls() == []


def test_the_auth_timeout_still_fires_without_a_subscribe() -> None:
    gw, clock, _, world = make(auth_timeout=30)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "subscribe", "jwt": "later"})  # in flight, never answered
    clock.advance(30.1)
    assert conn.closed == (4001, "authentication timeout")


def test_an_unsubscribe_before_any_subscribe_does_not_lift_the_auth_timeout() -> None:
    """PROTOCOL.md §2: a socket that has not subscribed within the auth timeout is closed; an ``unsubscribe`` (or
    ``unregister``) sent first cancelled the socket's one timer, and the socket stayed open unauthenticated."""
    gw, clock, _, world = make(auth_timeout=30)
    first, second = RecordingConnection(), RecordingConnection()
    gw.receive(gw.open(first, world.ws), {"@type": "unsubscribe"})
    gw.receive(gw.open(second, world.ws), {"@type": "unregister"})
    clock.advance(30.1)
    assert first.closed == second.closed == (4001, "authentication timeout")


def test_each_socket_is_closed_at_its_own_deadline_with_one_timer_pending() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conns = [RecordingConnection() for _ in range(4)]
    sessions = []
    for conn in conns:  # opened at 0, 1, 2 and 3
        sessions.append(gw.open(conn, world.ws))
        clock.advance(1)
    gw.receive(sessions[1], {"@type": "subscribe", "jwt": "alice@1000"})  # no deadline from now on
    assert _times(clock) == [30, 1000]
    closed_at: dict[int, float] = {}
    while clock.seconds() < 35:
        clock.advance(0.25)
        for i, conn in enumerate(conns):
            if conn.closed and i not in closed_at:
                closed_at[i] = clock.seconds()
        assert len([t for t in _times(clock) if t != 1000]) <= 1  # the deadlines' one timer, at most
    assert closed_at == {0: 30.0, 2: 32.0, 3: 33.0}
    assert all(conns[i].closed == (4001, "authentication timeout") for i in (0, 2, 3)) and conns[1].closed is None


def test_a_deadline_that_fails_does_not_keep_the_others_open() -> None:
    clock = Clock()
    expired: list[int] = []

    def expire(session: Session) -> None:
        expired.append(session.sid)
        if len(expired) == 1:
            raise RuntimeError("boom")

    deadlines = Deadlines(clock, 5, expire)
    sessions = [Session(RecordingConnection(), None) for _ in range(3)]
    for session in sessions:
        deadlines.add(session)
    clock.advance(5)
    assert expired == [s.sid for s in sessions] and len(deadlines) == 0
