"""The gateway core: subscribe/unsubscribe, auth timeout, token expiry, refusals and close codes, with the
/ws endpoint (``EventsEndpoint``, its pacing) and a recording stand-in for the /chat one."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from wsgw import frames
from wsgw.access import Access, AccessBusy, AccessError, AuthError, Workspace
from wsgw.events.endpoint import EventsEndpoint
from wsgw.events.nodes import InView
from wsgw.gateway import Gateway
from wsgw.interfaces import IEndpoint
from wsgw.revocations import Revocations
from wsgw.sessions import ForLogin, Session, fan_out
from wsgw.testing import RecordingConnection

WS = Workspace("ws-1", "common", ())
WS2 = Workspace("ws-2", "other", ())


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
    """Every user has ``grants[login]``, by default WS only."""

    refreshes = False

    def __init__(self) -> None:
        self.grants: dict[str, tuple[Workspace, ...]] = {}

    def resolve(self, token: str, claims: dict[str, Any]) -> Deferred[Access]:
        if claims["name"] == "down":
            return fail(AccessError("access backend unavailable: connection refused"))
        if claims["name"] == "busy":
            return fail(AccessBusy("access backend busy, try again later"))
        if claims["name"] == "refused":
            return fail(AccessError("access refused by the backend: HTTP 403"))
        workspaces = self.grants.get(claims["name"], (WS,))
        return succeed(Access(claims["name"], claims["sub"], "standard", frozenset(), workspaces, claims["exp"]))


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

    def receive(self, session: Session, frame: dict[str, Any], size: int = 0) -> None:
        self.calls.append(("frame", frame))

    def closed(self, session: Session) -> None:
        self.calls.append(("closed", session))


class World:
    """A gateway on a clock with the /ws endpoint (``ws``) and a recording /chat stand-in (``chat``)."""

    def __init__(self, *, pacing_rate: float = 0.0, pacing_burst: float = 20.0, pacing_max_delay: float = 2.0,
                 **gateway: Any) -> None:
        self.clock = Clock()
        self.verifier = FakeVerifier()
        self.resolver = FakeResolver()
        gateway.setdefault("revocations", Revocations(self.clock, 10**6))  # the tokens here live up to 10^5 s
        self.gateway = Gateway(self.clock, self.verifier, self.resolver, **gateway)
        self.ws = EventsEndpoint(self.gateway.table, self.clock, pacing_rate=pacing_rate, pacing_burst=pacing_burst,
                                 pacing_max_delay=pacing_max_delay)
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


@pytest.mark.parametrize("login", ["alice", "zoë \u2603 \U0001f600", 'quote" back\\slash \x01'])
def test_the_subscribed_frame_is_compact_utf8_json_byte_for_byte(login: str) -> None:
    """The ``subscribed`` answer's bytes are what ``frames.encode`` writes (compact, UTF-8, key order kept): the
    login unescaped beyond JSON's own escapes, ``exp`` an integer."""
    gw, clock, _, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": f"{login}@1000"})
    assert conn.sent == [frames.encode({"@type": "subscribed", "user": login, "exp": 1000})]


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


def test_backend_busy_closes_with_try_again_and_a_refusal_with_4001() -> None:
    """A busy access backend (AccessBusy) closes 1013 counted as access_busy; a backend refusal closes 4001
    counted as access_denied."""
    gw, _, _, world = make()
    busy, refused = RecordingConnection(), RecordingConnection()
    gw.receive(gw.open(busy, world.ws), {"@type": "subscribe", "jwt": "busy"})
    gw.receive(gw.open(refused, world.chat), {"@type": "subscribe", "jwt": "refused"})
    assert busy.frames == [{"@type": "error", "error": "subscribe: access backend busy, try again later"}]
    assert busy.closed is not None and busy.closed[0] == 1013
    assert refused.closed == (4001, "subscribe: access refused by the backend: HTTP 403")
    assert gw.refusals == {"access_busy": 1, "access_denied": 1}


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


def test_a_later_subscribe_waits_for_the_one_in_flight_and_wins() -> None:
    """Frames are handled in order: a second subscribe waits for the first, then replaces its access."""
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
    assert gw.table.with_login("alice") == set() and session.timer is None
    clock.advance(30)  # the auth deadlines' timer (one for every socket), left to fire: nothing else was pending
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
        fan_out([session], b'{"n":%d}' % i, None, paced=True)
    assert [f["n"] for f in conn.frames] == [0, 1]
    clock.advance(0.1)
    assert [f["n"] for f in conn.frames] == [0, 1, 2]
    clock.advance(0.2)
    assert [f["n"] for f in conn.frames] == [0, 1, 2, 3, 4]


def test_a_reader_that_stopped_reading_is_closed_4008_past_max_queued_bytes() -> None:
    """Paced and blocked frames count against one byte bound: a connection that stays paused past it is
    closed 4008 and what waited is dropped (PROTOCOL.md §4.1)."""
    gw, clock, _, world = make(pacing_rate=1, pacing_burst=1, max_queued_bytes=1000)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    session.flow.pause()  # the kernel's and Twisted's buffers are full
    for _ in range(5):
        fan_out([session], b"x" * 100, None, paced=True)
        fan_out([session], b"y" * 100, None)
    assert conn.closed == (4008, "client too slow") and gw.closes == {4008: 1}
    assert session.flow.waiting == (0, 0)


def test_a_prompt_reader_gets_a_burst_past_max_queued_bytes_whole_and_stays_open() -> None:
    """Pacing never turns a burst into loss: past the bound, a connection that is not paused gets every held
    frame at once, in order (PROTOCOL.md §4.1)."""
    gw, clock, _, world = make(pacing_rate=1, pacing_burst=1, max_queued_bytes=10_000)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    burst = [b'{"n":%d}' % i for i in range(2000)]
    for frame in burst:
        fan_out([session], frame, None, paced=True)
    assert conn.closed is None
    clock.advance(2)
    assert conn.sent == burst


def test_optimistic_frames_keep_order_behind_paced_ones() -> None:
    """An Optimistic (bypassing) frame goes out at once but after the frames the pacer still holds."""
    gw, clock, _, world = make(pacing_rate=10, pacing_burst=1)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    fan_out([session], b'{"n":0}', None, paced=True)
    fan_out([session], b'{"n":1}', None, paced=True)
    fan_out([session], b'{"n":2}', None, paced=True, optimistic=True)
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


# -- an access change applies to what waits (PROTOCOL.md §3.1, §4.1) --------------------------------


def subscribed_with_backlog(**kwargs: Any) -> tuple[Gateway, Clock, World, RecordingConnection, Session]:
    """alice subscribed with WS and WS2; one node frame of each sent, four of each held by pacing; the
    connection then paused, with a task frame of hers and an error reply blocked behind them."""
    gw, clock, _, world = make(pacing_rate=1, pacing_burst=2, **kwargs)
    world.resolver.grants["alice"] = (WS, WS2)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100000"})
    for i in range(5):
        fan_out([session], b'{"ws":1,"n":%d}' % i, InView(WS), paced=True)
        fan_out([session], b'{"ws":2,"n":%d}' % i, InView(WS2), paced=True)
    session.flow.pause()
    fan_out([session], b'{"task":1}', ForLogin("alice"))
    session.send(b'{"@type":"error","error":"a reply"}')
    conn.clear()
    return gw, clock, world, conn, session


def test_after_unsubscribe_nothing_that_waited_arrives_but_replies() -> None:
    """§4.1: 200 DELETEs, 20 sent and 180 paced, then unsubscribe: none of the 180 may arrive."""
    gw, clock, world, conn, session = subscribed_with_backlog()
    gw.receive(session, {"@type": "unsubscribe"})
    session.flow.resume()
    clock.advance(60)
    assert conn.frames == [{"@type": "error", "error": "a reply"}]
    assert gw.withdrawn == 9


def test_a_resubscribe_that_lost_a_workspace_drops_its_waiting_frames_and_keeps_the_rest() -> None:
    gw, clock, world, conn, session = subscribed_with_backlog()
    world.resolver.grants["alice"] = (WS2,)
    gw.receive(session, {"@type": "subscribe", "jwt": "alice@100000"})
    session.flow.resume()
    clock.advance(60)
    frames = conn.frames
    assert frames[0] == {"task": 1} and frames[1]["@type"] == "error" and frames[2]["@type"] == "subscribed"
    assert frames[3:] == [{"ws": 2, "n": n} for n in range(1, 5)]
    assert gw.withdrawn == 4


def test_a_resubscribe_as_another_user_drops_everything_that_waited_for_the_first() -> None:
    gw, clock, world, conn, session = subscribed_with_backlog()
    world.resolver.grants["bob"] = (WS, WS2)  # the same workspaces: still not bob's frames
    gw.receive(session, {"@type": "subscribe", "jwt": "bob@100000"})
    session.flow.resume()
    clock.advance(60)
    assert [f.get("@type") for f in conn.frames] == ["error", "subscribed"]
    assert gw.withdrawn == 9


def test_shutdown_sends_what_pacing_holds_before_the_close() -> None:
    gw, clock, _, world = make(pacing_rate=1, pacing_burst=1)
    conn = RecordingConnection()
    session = gw.open(conn, world.ws)
    for i in range(5):
        fan_out([session], b'{"n":%d}' % i, None, paced=True)
    gw.close_all(1000, "server shutting down")
    assert [f["n"] for f in conn.frames] == [0, 1, 2, 3, 4] and conn.closed == (1000, "server shutting down")


# -- a socket's frames are handled in order (PROTOCOL.md §2) --------------------------------------------------


def test_frames_sent_during_a_subscribe_in_flight_wait_for_it_in_order() -> None:
    """The Cells chat client sends JOIN without waiting for "subscribed": the JOIN is handled after it."""
    gw, _, verifier, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.receive(session, {"@type": "JOIN", "n": 1})
    gw.receive(session, {"@type": "HISTORY", "n": 2})
    assert world.chat.calls == [("opened", session)]
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert world.chat.calls[1:] == [("subscribe", "alice"), ("frame", {"@type": "JOIN", "n": 1}),
                                    ("frame", {"@type": "HISTORY", "n": 2})]
    assert conn.frames[0]["@type"] == "subscribed"


def test_frames_after_a_second_subscribe_in_flight_wait_for_it_too() -> None:
    gw, _, verifier, world = make()
    session = gw.open(RecordingConnection(), world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "later1"})
    gw.receive(session, {"@type": "JOIN", "n": 1})
    gw.receive(session, {"@type": "subscribe", "jwt": "later2"})
    gw.receive(session, {"@type": "JOIN", "n": 2})
    verifier.pending["later1"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert world.chat.calls[1:] == [("subscribe", "alice"), ("frame", {"@type": "JOIN", "n": 1})]
    verifier.pending["later2"].callback({"name": "bob", "sub": "b", "exp": 1000})
    assert world.chat.calls[3:] == [("subscribe", "bob"), ("frame", {"@type": "JOIN", "n": 2})]


def test_an_unsubscribe_sent_during_a_subscribe_in_flight_applies_after_it() -> None:
    gw, _, verifier, world = make()
    session = gw.open(RecordingConnection(), world.ws)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.receive(session, {"@type": "unsubscribe"})
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert session.access is None and gw.table.with_login("alice") == set()


def test_frames_waiting_for_a_refused_subscribe_are_dropped_with_the_socket() -> None:
    gw, _, verifier, world = make()
    conn = RecordingConnection()
    session = gw.open(conn, world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    gw.receive(session, {"@type": "JOIN"})
    verifier.pending["later"].errback(AuthError("token expired"))
    assert conn.closed == (4001, "subscribe: token expired")
    assert world.chat.calls == [("opened", session)]


def test_waiting_frames_are_bounded_past_it_the_socket_is_closed_4029() -> None:
    gw, _, verifier, world = make(max_waiting_frames=3)
    conn = RecordingConnection()
    session = gw.open(conn, world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"})
    for n in range(4):
        gw.receive(session, {"@type": "JOIN", "n": n})
    assert conn.closed == (4029, "too many frames while subscribing (at most 3, 65536 bytes)")
    assert gw.refusals == {"too_many_waiting": 1}
    verifier.pending["later"].callback({"name": "alice", "sub": "a", "exp": 1000})
    assert [c for c in world.chat.calls if c[0] == "frame"] == []


def test_waiting_frames_are_bounded_in_bytes_too() -> None:
    gw, _, verifier, world = make(max_waiting_bytes=1000)
    conn = RecordingConnection()
    session = gw.open(conn, world.chat)
    gw.receive(session, {"@type": "subscribe", "jwt": "later"}, 50)
    gw.receive(session, {"@type": "JOIN", "n": 0}, 600)
    gw.receive(session, {"@type": "JOIN", "n": 1}, 400)
    assert conn.closed is None
    gw.receive(session, {"@type": "JOIN", "n": 2}, 1)
    assert conn.closed == (4029, "too many frames while subscribing (at most 64, 1000 bytes)")


def test_sockets_per_login_are_counted_across_endpoints_and_follow_every_access_change() -> None:
    """max_sockets_per_user counts a login's subscribed sockets on both endpoints; a re-subscribe as another
    login moves the socket's place, an unsubscribe or a close frees it, a refresh takes none."""
    gw, _, _, world = make(max_sockets_per_user=2)
    conns = [RecordingConnection() for _ in range(4)]
    endpoints = (world.ws, world.chat, world.ws, world.chat)
    ws, chat, other, late = (gw.open(c, e) for c, e in zip(conns, endpoints, strict=True))
    gw.receive(ws, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(chat, {"@type": "subscribe", "jwt": "alice"})
    gw.receive(ws, {"@type": "subscribe", "jwt": "alice"})  # a refresh at the cap
    gw.receive(other, {"@type": "subscribe", "jwt": "bob"})
    assert conns[0].closed is None and conns[1].closed is None and conns[2].closed is None
    gw.receive(other, {"@type": "subscribe", "jwt": "alice"})  # bob's socket becomes alice's third: refused
    assert conns[2].closed == (4029, "subscribe: too many sockets for this user (at most 2)")
    gw.closed(other)
    gw.receive(ws, {"@type": "subscribe", "jwt": "bob"})  # alice's /ws socket becomes bob's
    gw.receive(late, {"@type": "subscribe", "jwt": "alice"})
    assert conns[3].closed is None
    gw.receive(ws, {"@type": "unsubscribe"})
    gw.closed(chat)
    assert gw._per_login == {"alice": 1} and set(gw._logins) == {late}
    assert gw.refusals == {"too_many_sockets": 1}
