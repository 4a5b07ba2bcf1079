"""One timer per session from open to expiry (bench/RESULTS.md "Connect path", part 5): the auth timer is moved on
to the token's expiry at subscribe (``DelayedCall.reset``) when that is later, and each deadline fires as before."""

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
from wsgw.sessions import Session
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


@pytest.mark.parametrize("leeway", [0, 5])
def test_the_auth_timer_becomes_the_expiry_timer(leeway: float) -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=leeway)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    timer = session.timer
    clock.advance(10)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    assert session.timer is timer and timer is not None and timer.getTime() == 100 + leeway
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(89.9 + leeway)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired") and session.timer is None


def test_an_expiry_sooner_than_the_auth_deadline_gets_a_timer_of_its_own() -> None:
    """(Moving a reactor's timer sooner searches its whole heap: a new one is made instead.)"""
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    first = session.timer
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@20"})
    assert session.timer is not first and first is not None and not first.active()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [20]
    clock.advance(20.1)
    assert conn.closed == (4001, "token expired")


def test_a_fresher_token_moves_the_same_timer_a_staler_one_replaces_it() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    timer = session.timer
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@500"})
    assert session.timer is timer and timer is not None and timer.getTime() == 500
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@200"})
    assert session.timer is not timer and not timer.active()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [200]
    clock.advance(199.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired")


def test_unsubscribe_and_close_still_cancel_the_one_timer() -> None:
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    gw.receive(session, {"@type": "unsubscribe"})
    assert session.timer is None and clock.getDelayedCalls() == []
    clock.advance(1000)
    assert conn.closed is None
    other = gw.open(RecordingConnection(), world.ws)
    gw.receive(other, {"@type": "subscribe", "jwt": "bob@100"})
    gw.closed(other)
    assert other.timer is None and clock.getDelayedCalls() == []


def test_the_auth_timeout_still_fires_without_a_subscribe() -> None:
    gw, clock, _, world = make(auth_timeout=30)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "subscribe", "jwt": "later"})  # in flight, never answered
    clock.advance(30.1)
    assert conn.closed == (4001, "authentication timeout")
