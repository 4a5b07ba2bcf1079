"""The gateway core: subscribe/unsubscribe, auth timeout, token expiry, refusals and close codes."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from wsgw.access import Access, AccessError, Workspace
from wsgw.auth import AuthError
from wsgw.gateway import Gateway
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


class RecordingChat:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def attach(self, session: Any) -> None:
        self.calls.append(("attach", session))

    def detach(self, session: Any) -> None:
        self.calls.append(("detach", session))

    def handle_frame(self, session: Any, frame: dict[str, Any]) -> None:
        self.calls.append(("frame", frame))

    def access_changed(self, session: Any) -> None:
        self.calls.append(("access", session.access.login if session.access else None))


def make(**kwargs: Any) -> tuple[Gateway, Clock, FakeVerifier, RecordingChat]:
    clock = Clock()
    verifier = FakeVerifier()
    chat = RecordingChat()
    return Gateway(clock, verifier, FakeResolver(), chat, **kwargs), clock, verifier, chat


def test_subscribe_indexes_the_session_and_answers_subscribed() -> None:
    """A valid subscribe stores the access, indexes the session and answers {"@type":"subscribed"}."""
    gw, clock, _, _ = make()
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@1000"})
    assert conn.frames == [{"@type": "subscribed", "user": "alice", "exp": 1000}]
    assert session.access is not None and session.access.login == "alice"
    assert gw.table.with_login("alice") == {session}
    assert gw.table.with_workspace("ws-1") == {session}


def test_register_is_an_alias() -> None:
    """"register" (the seed document's name) subscribes like "subscribe"."""
    gw, _, _, _ = make()
    session = gw.open(RecordingConnection(), "ws")
    gw.receive(session, {"@type": "register", "jwt": "alice"})
    assert gw.table.with_login("alice") == {session}


def test_invalid_token_gets_error_then_4001() -> None:
    """An invalid token is answered with an error frame naming the reason, then a 4001 close."""
    gw, _, _, _ = make()
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "bad"})
    assert conn.frames == [{"@type": "error", "error": "subscribe: invalid signature"}]
    assert conn.closed is not None and conn.closed[0] == 4001
    assert session.access is None


def test_empty_or_missing_token_gets_4001() -> None:
    """subscribe without a token, or with a non-string one, is refused with 4001."""
    for frame in ({"@type": "subscribe"}, {"@type": "subscribe", "jwt": ""}, {"@type": "subscribe", "jwt": 5}):
        gw, _, _, _ = make()
        conn = RecordingConnection()
        gw.receive(gw.open(conn, "ws"), frame)
        assert conn.closed is not None and conn.closed[0] == 4001
        assert conn.frames[0]["@type"] == "error"


def test_backend_down_closes_with_try_again() -> None:
    """An access backend failure fails the subscribe with a clear error and a 1013 (try again) close."""
    gw, _, _, _ = make()
    conn = RecordingConnection()
    gw.receive(gw.open(conn, "ws"), {"@type": "subscribe", "jwt": "down"})
    assert "access backend unavailable" in conn.frames[0]["error"]
    assert conn.closed is not None and conn.closed[0] == 1013


def test_resubscribe_replaces_access() -> None:
    """A second subscribe replaces the session's access (and its indexes)."""
    gw, _, _, _ = make()
    session = gw.open(RecordingConnection(), "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(session, {"@type": "subscribe", "jwt": "bob"})
    assert gw.table.with_login("alice") == set()
    assert gw.table.with_login("bob") == {session}


def test_unsubscribe_keeps_socket_open_and_unindexed() -> None:
    """unsubscribe (and unregister) clears access; the socket stays open and is in no index."""
    for kind in ("unsubscribe", "unregister"):
        gw, clock, _, _ = make()
        conn = RecordingConnection()
        session = gw.open(conn, "ws")
        gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
        gw.receive(session, {"@type": kind})
        assert session.access is None
        assert gw.table.with_login("alice") == set()
        clock.advance(10_000)
        assert conn.closed is None


def test_auth_timeout_closes_4001() -> None:
    """A socket that has not subscribed within the auth timeout is closed with 4001."""
    gw, clock, _, _ = make(auth_timeout=30)
    conn = RecordingConnection()
    gw.open(conn, "ws")
    clock.advance(29.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "authentication timeout")


def test_subscribed_socket_is_not_timed_out() -> None:
    """Subscribing in time cancels the auth timeout."""
    gw, clock, _, _ = make(auth_timeout=30, leeway=0)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, "ws"), {"@type": "subscribe", "jwt": "alice@1000"})
    clock.advance(100)
    assert conn.closed is None


def test_expiry_closes_4001_at_exp_plus_leeway() -> None:
    """When exp (+ leeway) passes without a fresher subscribe, the socket is closed with 4001 token expired."""
    gw, clock, _, _ = make(leeway=5)
    conn = RecordingConnection()
    gw.receive(gw.open(conn, "ws"), {"@type": "subscribe", "jwt": "alice@100"})
    clock.advance(104.9)
    assert conn.closed is None
    clock.advance(0.2)
    assert conn.closed == (4001, "token expired")


def test_fresher_token_keeps_the_socket() -> None:
    """Re-subscribing with a fresher token before exp moves the expiry."""
    gw, clock, _, _ = make(leeway=0)
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    clock.advance(90)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@500"})
    clock.advance(100)
    assert conn.closed is None
    clock.advance(400)
    assert conn.closed == (4001, "token expired")


def test_slow_subscribe_overtaken_by_a_later_one_is_ignored() -> None:
    """When a later subscribe completes first, the earlier one's late answer does not replace it."""
    gw, _, verifier, _ = make()
    session = gw.open(RecordingConnection(), "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.receive(session, {"@type": "subscribe", "jwt": "bob"})
    verifier.pending["later"].callback({"name": "mallory", "sub": "m", "exp": 1000})
    assert session.access is not None and session.access.login == "bob"


def test_subscribe_completing_after_close_is_dropped() -> None:
    """A subscribe that completes after the socket closed indexes nothing."""
    gw, _, verifier, _ = make()
    session = gw.open(RecordingConnection(), "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.closed(session)
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert gw.table.with_login("alice") == set()
    assert len(gw.table) == 0


def test_close_forgets_the_session_and_timers() -> None:
    """Closing a socket removes it from every index and cancels its timers."""
    gw, clock, _, _ = make()
    session = gw.open(RecordingConnection(), "ws")
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100"})
    gw.closed(session)
    assert gw.table.with_login("alice") == set()
    assert clock.getDelayedCalls() == []
    assert gw.when_empty().called


def test_other_frames_on_ws_are_ignored() -> None:
    """Anything but subscribe/unsubscribe on /ws is ignored: no answer, no close."""
    gw, _, _, _ = make()
    conn = RecordingConnection()
    gw.receive(gw.open(conn, "ws"), {"@type": "JOIN"})
    assert conn.sent == [] and conn.closed is None


def test_chat_frames_before_subscribe_get_an_error() -> None:
    """On /chat, a chat frame before subscribe is answered with an error frame and not passed on."""
    gw, _, _, chat = make()
    conn = RecordingConnection()
    session = gw.open(conn, "chat")
    gw.receive(session, {"@type": "JOIN", "Room": {}})
    assert conn.frames[0]["@type"] == "error" and "not subscribed" in conn.frames[0]["error"]
    assert conn.closed is None
    assert chat.calls == [("attach", session)]


def test_chat_sessions_go_to_the_chat_service_not_the_event_table() -> None:
    """A subscribed /chat session is handed chat frames and receives no bus events."""
    gw, _, _, chat = make()
    session = gw.open(RecordingConnection(), "chat")
    gw.receive(session, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(session, {"@type": "JOIN", "Room": {}})
    gw.closed(session)
    assert gw.table.with_login("alice") == set()
    assert chat.calls[1:] == [("access", "alice"), ("frame", {"@type": "JOIN", "Room": {}}), ("detach", session)]


def test_pacing_delays_node_frames_beyond_the_rate() -> None:
    """Per-session pacing delays frames past the burst and never drops them."""
    gw, clock, _, _ = make(pacing_rate=10, pacing_burst=2)
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    for i in range(5):
        session.send_paced(b'{"n":%d}' % i)
    assert [f["n"] for f in conn.frames] == [0, 1]
    clock.advance(0.1)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
    clock.advance(0.2)
    assert [f["n"] for f in conn.frames] == [0, 1, 2, 3, 4]


def test_pacing_queue_overflow_closes_4008() -> None:
    """A session whose paced queue passes the limit is closed with 4008 instead of growing memory."""
    gw, clock, _, _ = make(pacing_rate=1, pacing_burst=1, max_queued_frames=3)
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    for _ in range(5):
        session.send_paced(b"{}")
    assert conn.closed is not None and conn.closed[0] == 4008


def test_optimistic_frames_keep_order_behind_paced_ones() -> None:
    """An Optimistic (bypassing) frame goes out at once but after the frames the pacer still holds."""
    gw, clock, _, _ = make(pacing_rate=10, pacing_burst=1)
    conn = RecordingConnection()
    session = gw.open(conn, "ws")
    session.send_paced(b'{"n":0}')
    session.send_paced(b'{"n":1}')
    session.send_now(b'{"n":2}')
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
    clock.advance(10)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
