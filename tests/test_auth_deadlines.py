"""The auth deadlines (``wsgw.sessions.Deadlines``, PROTOCOL.md §2: a socket that has not subscribed within the auth
timeout is closed 4001 ``authentication timeout``) and what a server-initiated close leaves behind: on a clock,
exactly, and on the real reactor over loopback (each socket closed at its own deadline, /ws and /chat alike)."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tests.support.daemon import StartGateway, token
from tests.support.wsclient import connect
from wsgw.access import Access, Workspace
from wsgw.events.endpoint import EventsEndpoint
from wsgw.gateway import Gateway
from wsgw.revocations import Revocations
from wsgw.sessions import Deadlines, Session
from wsgw.testing import RecordingConnection

SLACK = 1.0  # s: a loaded 2-core VM's reactor turn and close handshake


class _Tokens:
    """Verifier and resolver: ``login@exp`` is that login's token expiring at ``exp`` (1000 without one); ``later``
    waits in ``pending`` until the test answers it."""

    refreshes = False

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[dict[str, Any]]] = {}

    def verify(self, token: str) -> Deferred[dict[str, Any]]:
        if token == "later":
            self.pending[token] = Deferred()
            return self.pending[token]
        login, _, exp = token.partition("@")
        return succeed({"name": login, "sub": login, "exp": int(exp or 1000)})

    def resolve(self, token: str, claims: dict[str, Any]) -> Deferred[Access]:
        workspaces = (Workspace("ws-1", "common", ()),)
        return succeed(Access(claims["name"], claims["sub"], "standard", frozenset(), workspaces, claims["exp"]))


class _World:
    def __init__(self, gateway: Gateway, clock: Clock) -> None:
        self.ws = EventsEndpoint(gateway.table, clock)


def make(**kwargs: Any) -> tuple[Gateway, Clock, _Tokens, _World]:
    clock, tokens = Clock(), _Tokens()
    gateway = Gateway(clock, tokens, tokens, revocations=Revocations(clock, 10**6), **kwargs)
    return gateway, clock, tokens, _World(gateway, clock)


def test_a_subscribe_answered_after_the_auth_timeout_closed_the_socket_is_dropped() -> None:
    """The socket was closed 4001 ``authentication timeout`` while its subscribe was in flight: the answer that
    comes before the close handshake ends may not subscribe it (counted as accepted, indexed for events, counted
    against ``max_sockets_per_user``, given an expiry timer) as if it were still open."""
    gw, clock, verifier, world = make(auth_timeout=30, max_sockets_per_user=1)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    clock.advance(30)
    assert conn.closed == (4001, "authentication timeout")
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert gw.subscribes_accepted == 0 and session.access is None and session.timer is None
    assert gw.table.with_login("alice") == set() and gw.census().subscribed["ws"] == 0
    other = RecordingConnection()
    gw.receive(gw.open(other, world.ws), {"@type": "subscribe", "jwt": "alice"})  # alice's one socket
    assert other.closed is None and other.frames[-1]["@type"] == "subscribed"


def test_a_subscribe_refused_after_the_socket_was_closed_is_not_counted_as_a_refusal() -> None:
    """Likewise for a refusal: the socket was already closed (4001), nothing more is sent nor counted."""
    gw, clock, verifier, world = make(auth_timeout=30)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    clock.advance(30)
    sent = len(conn.frames)
    verifier.pending["later"].errback(Exception("backend crashed"))
    assert sum(gw.refusals.values()) == 0 and len(conn.frames) == sent
    assert conn.closed == (4001, "authentication timeout")


def test_deadlines_of_sockets_opened_at_uneven_times_are_each_exact() -> None:
    """Sockets opened at fractional, uneven times (some in one instant, some after earlier ones were closed) are
    each closed 4001 in the clock step its open + auth_timeout falls in, not a step early nor late; those that
    subscribed (or were closed by the client) are not."""
    gw, clock, _, world = make(auth_timeout=2.5, leeway=0)
    opened: list[tuple[float, RecordingConnection]] = []
    closed_at: dict[int, tuple[float, float]] = {}  # socket -> the clock before and after the step it was closed in
    gaps = [0, 30, 0, 70, 110, 0, 5, 240, 1, 0, 333]  # in steps of 0.01 s
    keep = {3, 9}
    step = 0
    while step < 1200:
        if gaps and step == sum(gaps[: len(opened) + 1]):
            gaps_done = len(opened)
            conn = RecordingConnection()
            session = gw.open(conn, world.ws)
            opened.append((clock.seconds(), conn))
            if gaps_done in keep:
                gw.receive(session, {"@type": "subscribe", "jwt": "alice@1000"})
            if gaps_done == 5:
                gw.closed(session)
            if len(opened) < len(gaps) and gaps[len(opened)] == 0:
                continue
        before = clock.seconds()
        clock.advance(0.01)
        step += 1
        for i, (_, conn) in enumerate(opened):
            if conn.closed is not None and i not in closed_at:
                closed_at[i] = (before, clock.seconds())
    assert len(opened) == len(gaps)
    for i, (at, conn) in enumerate(opened):
        if i in keep or i == 5:
            assert conn.closed is None, i
        else:
            assert conn.closed == (4001, "authentication timeout")
            before, after = closed_at[i]
            assert before < at + 2.5 <= after, (i, at, closed_at[i])


def test_auth_timeout_0_holds_nothing_and_schedules_nothing() -> None:
    gw, clock, _, world = make(auth_timeout=0)
    conns = [RecordingConnection() for _ in range(3)]
    for conn in conns:
        gw.open(conn, world.ws)
    assert clock.getDelayedCalls() == [] and len(gw._deadlines) == 0
    clock.advance(10**6)
    assert all(conn.closed is None for conn in conns)


def test_a_session_closed_before_its_deadline_is_freed() -> None:
    """Nothing keeps a closed session (the deadlines' dict, the timer left to fire): once closed, the test's own
    reference is its only one, so reference counting frees it (no reference cycle to wait for a collection), before
    and after the shared timer fires. (sys.getrefcount: a compiled Session takes no weak reference.)"""
    gw, clock, tokens, world = make(auth_timeout=30)
    keep = gw.open(RecordingConnection(), world.ws)  # keeps the shared timer needed
    for frame in ({"@type": "unsubscribe"}, {"@type": "subscribe", "jwt": "later"}, {"@type": "ping"}):
        session = gw.open(RecordingConnection(), world.ws)
        gw.receive(session, frame)
        assert sys.getrefcount(session) > 2  # (held by the gateway: the check can fail)
        gw.closed(session)
        tokens.pending.clear()  # (a subscribe in flight holds it until answered: the verifier's, not the gateway's)
        assert sys.getrefcount(session) == 2, frame  # the name ``session`` and the call's argument
    clock.advance(30)
    assert keep.connection.closed == (4001, "authentication timeout")  # type: ignore[attr-defined]
    assert len(gw._deadlines) == 0 and clock.getDelayedCalls() == []


def test_a_session_added_after_the_held_ones_went_is_expired_at_its_own_deadline() -> None:
    """The shared timer left to fire for sessions since discarded is not the new one's: it is rescheduled."""
    clock = Clock()
    expired: list[tuple[int, float]] = []
    deadlines = Deadlines(clock, 10, lambda s: expired.append((s.sid, clock.seconds())))
    first = Session(RecordingConnection(), None)
    deadlines.add(first)
    deadlines.discard(first)
    clock.advance(7)
    second = Session(RecordingConnection(), None)
    deadlines.add(second)
    clock.advance(3)  # the stale timer fires: nothing due
    assert expired == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(6.999)
    assert expired == []
    clock.advance(0.001)
    assert expired == [(second.sid, 17.0)]


@pytest.mark.parametrize("path", ["/ws", "/chat"])
@pytest_twisted.ensureDeferred
async def test_sockets_opened_at_different_times_are_closed_at_their_own_deadlines(gateway: StartGateway,
                                                                                   path: str) -> None:
    """On the reactor: three sockets opened 0.7 s apart, one of which sends ``unsubscribe`` first and one of which
    subscribes and then unsubscribes: the two that never subscribed are closed each at its own deadline."""
    daemon = await gateway(redis=None, overrides={"websocket.auth_timeout": "2"})
    clients, opened = [], []
    for i in range(3):
        clients.append(await connect(daemon.port, path))
        opened.append(time.time())
        if i == 0:
            clients[0].send_json({"@type": "unsubscribe"})
        await _pause(0.7)
    assert (await clients[1].subscribe(token("alice", exp=int(time.time()) + 60)))["@type"] == "subscribed"
    clients[1].send_json({"@type": "unregister"})
    for i in (0, 2):
        closed = await clients[i].wait_closed(timeout=6)
        at = time.time()
        assert closed == (4001, "authentication timeout")
        assert opened[i] + 2 <= at + 0.05 and at < opened[i] + 2 + SLACK, (i, at - opened[i])
    await _pause(0.5)
    assert not clients[1].closed.called


async def _pause(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


def test_a_socket_opened_after_the_wall_clock_stepped_back_is_closed_at_its_own_deadline() -> None:
    """The reactor's clock is the wall clock (``time.time``): stepped back 50 s (NTP, a restored VM), a socket
    opened since then has a deadline earlier than those held before it. It is closed at its own deadline, as its
    own timer closed it, not behind theirs (50 s late); theirs come no later than its own (never early: they have
    waited at least as long), and a socket opened later still is closed at its own deadline."""
    clock = Clock()
    clock.advance(100)
    expired: list[tuple[int, float]] = []
    deadlines = Deadlines(clock, 30, lambda s: expired.append((s.sid, clock.seconds())))
    before = Session(RecordingConnection(), None)
    deadlines.add(before)  # due at 130
    clock.rightNow = 50.0  # stepped back
    after = Session(RecordingConnection(), None)
    deadlines.add(after)  # due at 80
    clock.advance(5)
    last = Session(RecordingConnection(), None)
    deadlines.add(last)  # due at 85
    while clock.seconds() < 140:
        clock.advance(1)
    assert expired == [(before.sid, 80.0), (after.sid, 80.0), (last.sid, 85.0)]
    assert clock.getDelayedCalls() == []
