"""The gateway core: subscribe/unsubscribe, auth timeout, token expiry, refusals and close codes, with the
/ws endpoint (``EventsEndpoint``, its pacing) and a recording stand-in for the /chat one."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from wsgw.access import Access, AccessError, AuthError, Workspace
from wsgw.events.endpoint import EventsEndpoint
from wsgw.gateway import Gateway
from wsgw.interfaces import IEndpoint
from wsgw.sessions import Session, fan_out
from wsgw.testing import RecordingConnection

WS = Workspace("ws-1", "common", ())


class FakeVerifier:
    """Tokens are names: 'alice' -> claims of alice expiring at exp; 'bad' -> AuthError; 'later' -> pending."""

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[dict[str, Any]]] = {}

    def verify(self, token: str) -> Deferred[dict[str, Any]]:
        if token == "bad":
            return fail(AuthError("invalid signature"))
        if token.startswith("later"):
            self.pending[token] = Deferred()
            return self.pending[token]
        login, _, exp = token.partition("@")
        return succeed({"name": login, "sub": f"sub-{login}", "exp": int(exp or 1000)})


class FakeResolver:
    def resolve(self, token: str, claims: dict[str, Any]) -> Deferred[Access]:
        if claims["name"] == "down":
            return fail(AccessError("access backend unavailable: connection refused"))
        return succeed(Access(claims["name"], claims["sub"], "standard", frozenset(), (WS,), claims["exp"]))


@implementer(IEndpoint)
class RecordingEndpoint:
    """An endpoint that records what the gateway tells it (the /chat endpoint's place)."""

    name = "chat"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def opened(self, session: Session) -> None:
        self.calls.append(("opened", session))

    def subscribe(self, session: Session, access: Access) -> None:
        session.access = access
        self.calls.append(("subscribe", access.login))

    def unsubscribe(self, session: Session) -> None:
        session.access = None
        self.calls.append(("unsubscribe", None))

    def receive(self, session: Session, frame: dict[str, Any]) -> None:
        self.calls.append(("frame", frame))

    def closed(self, session: Session) -> None:
        self.calls.append(("closed", session))


class World:
    """A gateway on a clock with the /ws endpoint (``ws``) and a recording /chat stand-in (``chat``)."""

    def __init__(self, *, pacing_rate: float = 0.0, pacing_burst: float = 20.0, max_paced_frames: int = 10_000,
                 **gateway: Any) -> None:
        self.clock = Clock()
        self.verifier = FakeVerifier()
        self.gateway = Gateway(self.clock, self.verifier, FakeResolver(), **gateway)
        self.ws = EventsEndpoint(self.gateway.table, self.clock, self.gateway.too_slow, pacing_rate=pacing_rate,
                                 pacing_burst=pacing_burst, max_paced_frames=max_paced_frames)
        self.chat = RecordingEndpoint()


def make(**kwargs: Any) -> tuple[Gateway, Clock, FakeVerifier, World]:
    world = World(**kwargs)
    return world.gateway, world.clock, world.verifier, world


def test_subscribe_indexes_the_session_and_answers_subscribed() -> None:
    """A valid subscribe stores the access, indexes the session and answers {"@type":"subscribed"}."""
    gw, clock, _, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@1000"})
    assert conn.frames == [{"@type": "subscribed", "user": "alice", "exp": 1000}]
    assert session.access is not None and session.access.login == "alice"
    assert gw.table.with_login("alice") == {session}
    assert gw.table.with_workspace("ws-1") == {session}


def test_register_is_an_alias() -> None:
    """"register" (the seed document's name) subscribes like "subscribe"."""
    gw, _, _, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "register", "jwt": "alice"})
    assert gw.table.with_login("alice") == {session}


def test_invalid_token_gets_error_then_4001() -> None:
    """An invalid token is answered with an error frame naming the reason, then a 4001 close."""
    gw, _, _, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "bad"})
    assert conn.frames == [{"@type": "error", "error": "subscribe: invalid signature"}]
    assert conn.closed is not None and conn.closed[0] == 4001
    assert session.access is None


def test_empty_or_missing_token_gets_4001() -> None:
    """subscribe without a token, or with a non-string one, is refused with 4001."""
    for frame in ({"@type": "subscribe"}, {"@type": "subscribe", "jwt": ""}, {"@type": "subscribe", "jwt": 5}):
        gw, _, _, world = make()
        conn = RecordingConnection()
        gw.receive(gw.open(conn, world.ws), frame)
        assert conn.closed is not None and conn.closed[0] == 4001
        assert conn.frames[0]["@type"] == "error"


def test_backend_down_closes_with_try_again() -> None:
    """An access backend failure fails the subscribe with a clear error and a 1013 (try again) close."""
    gw, _, _, world = make()
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "subscribe", "jwt": "down"})
    assert "access backend unavailable" in conn.frames[0]["error"]
    assert conn.closed is not None and conn.closed[0] == 1013


def test_resubscribe_replaces_access() -> None:
    """A second subscribe replaces the session's access (and its indexes)."""
    gw, _, _, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(session, {"@type": "subscribe", "jwt": "bob"})
    assert gw.table.with_login("alice") == set()
    assert gw.table.with_login("bob") == {session}


def test_unsubscribe_keeps_socket_open_and_unindexed() -> None:
    """unsubscribe (and unregister) clears access; the socket stays open and is in no index."""
    for kind in ("unsubscribe", "unregister"):
        gw, clock, _, world = make()
        conn = RecordingConnection()
        session = gw.open(conn, world.ws)
        gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
        gw.receive(session, {"@type": kind})
        assert session.access is None
        assert gw.table.with_login("alice") == set()
        clock.advance(10_000)
        assert conn.closed is None


def test_auth_timeout_closes_4001() -> None:
    """A socket that has not subscribed within the auth timeout is closed with 4001."""
    gw, clock, _, world = make(auth_timeout=30)
    conn = RecordingConnection()
    gw.open(conn, world.ws)
    clock.advance(29.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "authentication timeout")


def test_subscribed_socket_is_not_timed_out() -> None:
    """Subscribing in time cancels the auth timeout."""
    gw, clock, _, world = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "subscribe", "jwt": "alice@1000"})
    clock.advance(100)
    assert conn.closed is None


def test_expiry_closes_4001_at_exp_plus_leeway() -> None:
    """When exp (+ leeway) passes without a fresher subscribe, the socket is closed with 4001 token expired."""
    gw, clock, _, world = make(leeway=5)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "subscribe", "jwt": "alice@100"})
    clock.advance(104.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired")


def test_fresher_token_keeps_the_socket() -> None:
    """Re-subscribing with a fresher token before exp moves the expiry."""
    gw, clock, _, world = make(leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    clock.advance(90)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@500"})
    clock.advance(100)
    assert conn.closed is None
    clock.advance(400)
    assert conn.closed == (4001, "token expired")


def test_slow_subscribe_overtaken_by_a_later_one_is_ignored() -> None:
    """When a later subscribe completes first, the earlier one's late answer does not replace it."""
    gw, _, verifier, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.receive(session, {"@type": "subscribe", "jwt": "bob"})
    verifier.pending["later"].callback({"name": "mallory", "sub": "m", "exp": 1000})
    assert session.access is not None and session.access.login == "bob"


def test_subscribe_completing_after_close_is_dropped() -> None:
    """A subscribe that completes after the socket closed indexes nothing."""
    gw, _, verifier, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.closed(session)
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert gw.table.with_login("alice") == set()
    assert len(gw.table) == 0


def test_close_forgets_the_session_and_timers() -> None:
    """Closing a socket removes it from every index and cancels its timers."""
    gw, clock, _, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    gw.closed(session)
    assert gw.table.with_login("alice") == set()
    assert clock.getDelayedCalls() == []
    assert gw.when_empty().called


def test_other_frames_on_ws_are_ignored() -> None:
    """Anything but subscribe/unsubscribe on /ws is ignored: no answer, no close."""
    gw, _, _, world = make()
    conn = RecordingConnection()
    gw.receive(gw.open(conn, world.ws), {"@type": "JOIN"})
    assert conn.sent == [] and conn.closed is None


def test_frames_before_subscribe_go_to_the_endpoint() -> None:
    """A frame other than subscribe is the endpoint's to answer, subscribed or not (chat answers an error)."""
    gw, _, _, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.chat)
    gw.receive(session, {"@type": "JOIN", "Room": {}})
    assert conn.sent == [] and conn.closed is None
    assert world.chat.calls == [("opened", session), ("frame", {"@type": "JOIN", "Room": {}})]


def test_chat_sessions_go_to_the_chat_service_not_the_event_table() -> None:
    """A subscribed /chat session is handed chat frames and receives no bus events."""
    gw, _, _, world = make()
    session = gw.open(RecordingConnection(), world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(session, {"@type": "JOIN", "Room": {}})
    gw.closed(session)
    assert gw.table.with_login("alice") == set()
    assert world.chat.calls[1:] == [("subscribe", "alice"), ("frame", {"@type": "JOIN", "Room": {}}),
                                    ("closed", session)]


def test_pacing_delays_node_frames_beyond_the_rate() -> None:
    """Per-session pacing delays frames past the burst and never drops them."""
    gw, clock, _, world = make(pacing_rate=10, pacing_burst=2)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    for i in range(5):
        fan_out([session], b'{"n":%d}' % i, paced=True)
    assert [f["n"] for f in conn.frames] == [0, 1]
    clock.advance(0.1)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
    clock.advance(0.2)
    assert [f["n"] for f in conn.frames] == [0, 1, 2, 3, 4]


def test_pacing_queue_overflow_closes_4008() -> None:
    """A session whose paced queue passes the limit is closed with 4008 instead of growing memory."""
    gw, clock, _, world = make(pacing_rate=1, pacing_burst=1, max_paced_frames=3)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    for _ in range(5):
        fan_out([session], b"{}", paced=True)
    assert conn.closed is not None and conn.closed[0] == 4008


def test_optimistic_frames_keep_order_behind_paced_ones() -> None:
    """An Optimistic (bypassing) frame goes out at once but after the frames the pacer still holds."""
    gw, clock, _, world = make(pacing_rate=10, pacing_burst=1)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    fan_out([session], b'{"n":0}', paced=True)
    fan_out([session], b'{"n":1}', paced=True)
    fan_out([session], b'{"n":2}', paced=True, optimistic=True)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
    clock.advance(10)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]


def test_server_closes_are_counted_once_per_socket_by_code() -> None:
    """Every close the server starts goes through the gateway and is counted once, by code."""
    gw, clock, _, world = make(auth_timeout=30)
    first, second = gw.open(RecordingConnection(), world.ws), gw.open(RecordingConnection(), world.ws)
    gw.too_slow(first)
    gw.too_slow(first)  # already closing: not counted again
    clock.advance(31)  # the auth timeout closes both: only the second is counted (the first is closing already)
    assert gw.closes == {4008: 1, 4001: 1}
    assert second.connection.closed == (4001, "authentication timeout")  # type: ignore[attr-defined]
