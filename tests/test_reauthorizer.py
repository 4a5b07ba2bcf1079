"""wsgw.reauth.Reauthorizer's bookkeeping with a refreshing resolver it controls: bounded requests, one per token,
an event during a request, sessions that re-subscribe or close meanwhile (PROTOCOL.md §3.1)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from wsgw.access import Access, AccessError, AccessRefused, Identity, Workspace
from wsgw.events.endpoint import EventsEndpoint
from wsgw.events.nodes import InView
from wsgw.gateway import Gateway
from wsgw.reauth import Designated, Reauthorizer, designated
from wsgw.sessions import Session, fan_out
from wsgw.testing import RecordingConnection

ROLE_CHANGE = {"Type": "UPDATE", "Role": {"Uuid": "r1"}}
WS = Workspace("ws-1", "common", ())
WS2 = Workspace("ws-2", "other", ())


class Verifier:
    """Tokens are logins."""

    def verify(self, token: str) -> Deferred[dict[str, Any]]:
        return succeed({"name": token, "sub": f"sub-{token}", "exp": 1000})


class Backend:
    """A refreshing resolver: ``resolve`` answers ``grants`` at once, ``refresh`` waits in ``asked`` for the test."""

    refreshes = True

    def __init__(self) -> None:
        self.grants: dict[str, tuple[Workspace, ...]] = {}
        self.asked: list[tuple[str, Deferred[Access]]] = []
        self.invalidated = 0

    def resolve(self, token: str, claims: dict[str, Any]) -> Deferred[Access]:
        return succeed(self._access(claims["name"]))

    def refresh(self, token: str, who: Identity) -> Deferred[Access]:
        d: Deferred[Access] = Deferred()
        self.asked.append((token, d))
        return d

    def invalidate(self) -> None:
        self.invalidated += 1

    def _access(self, login: str) -> Access:
        return Access(login, f"sub-{login}", "standard", frozenset({"r1"}), self.grants.get(login, (WS, WS2)), 1000)

    def request(self, token: str) -> Deferred[Access]:
        """The one request for ``token`` not answered yet."""
        (d,) = [d for t, d in self.asked if t == token and not d.called]
        return d

    def answer(self, token: str, login: str | None = None) -> None:
        self.request(token).callback(self._access(login or token))


def world(max_requests: int = 32) -> tuple[Gateway, Backend, Reauthorizer, EventsEndpoint]:
    clock = Clock()
    backend = Backend()
    gateway = Gateway(clock, Verifier(), backend)
    return gateway, backend, Reauthorizer(gateway, backend, clock, max_requests=max_requests), EventsEndpoint(
        gateway.table, clock, pacing_rate=0)


def subscribed(gateway: Gateway, endpoint: EventsEndpoint, token: str) -> tuple[Session, RecordingConnection]:
    conn = RecordingConnection()
    session = gateway.open(conn, endpoint)
    gateway.receive(session, {"@type": "subscribe", "jwt": token})
    conn.clear()
    return session, conn


def test_the_parts_of_an_idm_event_designate_sessions() -> None:
    assert designated({"Type": "DELETE", "Acl": {"RoleID": "r1", "Action": {"Name": "read"}},
                       "User": {"Login": "bob", "Uuid": "u-bob"}, "Workspace": {"UUID": "ws-1"}}) == Designated(
        ("bob",), ("u-bob",), ("r1",), ("ws-1",))
    assert designated({"Acl": {"RoleID": "r1", "Action": {"Name": "parameter:core.auth:x"}}}) == Designated()
    assert not designated({"Type": "LOGIN", "User": {"Login": "bob"}})
    assert not designated({"Type": "READ", "Role": {"Uuid": "r1"}})


def test_one_request_per_token_at_most_max_requests_the_rest_queued() -> None:
    gateway, backend, reauth, ws = world(max_requests=2)
    for login in ("a", "b", "c"):
        subscribed(gateway, ws, login)
    subscribed(gateway, ws, "a")  # a second socket of token "a"
    reauth.handle(ROLE_CHANGE)
    first = [t for t, _ in backend.asked]
    assert len(first) == 2 and reauth.in_flight == 2 and reauth.suspended == 4 and backend.invalidated == 1
    backend.answer(first[0])
    assert sorted(t for t, _ in backend.asked) == ["a", "b", "c"] and reauth.in_flight == 2
    (third,) = {"a", "b", "c"} - set(first)
    backend.answer(first[1])
    backend.answer(third)
    assert reauth.in_flight == 0 and reauth.suspended == 0 and reauth.sessions["applied"] == 4


def test_frames_wait_for_the_answer_and_only_the_new_access_gets_through() -> None:
    gateway, backend, reauth, ws = world()
    session, conn = subscribed(gateway, ws, "alice")
    reauth.handle(ROLE_CHANGE)
    fan_out([session], b'{"ws":1}', InView(WS), paced=True)
    fan_out([session], b'{"ws":2}', InView(WS2), paced=True)
    assert conn.sent == []
    backend.grants["alice"] = (WS2,)
    backend.answer("alice")
    assert conn.sent == [b'{"ws":2}']
    assert [ws.uuid for ws in session.access.workspaces] == ["ws-2"]  # type: ignore[union-attr]


def test_an_event_during_a_request_asks_again_and_applies_only_the_second_answer() -> None:
    gateway, backend, reauth, ws = world()
    session, conn = subscribed(gateway, ws, "alice")
    reauth.handle(ROLE_CHANGE)
    reauth.handle(ROLE_CHANGE)
    backend.answer("alice")  # may predate the second event: not applied
    assert len(backend.asked) == 2 and reauth.suspended == 1
    backend.grants["alice"] = ()
    backend.answer("alice")
    assert session.access is not None and session.access.workspaces == () and reauth.suspended == 0


def test_a_session_that_re_subscribed_or_closed_meanwhile_keeps_what_it_has() -> None:
    gateway, backend, reauth, ws = world()
    moved, moved_conn = subscribed(gateway, ws, "alice")
    gone, _ = subscribed(gateway, ws, "bob")
    reauth.handle(ROLE_CHANGE)
    gateway.receive(moved, {"@type": "subscribe", "jwt": "carol"})  # another token now
    gateway.receive(gone, {"@type": "unsubscribe"})
    backend.answer("alice")
    backend.answer("bob")
    assert moved.access is not None and moved.access.login == "carol" and gone.access is None
    assert reauth.sessions["gone"] == 2
    fan_out([moved], b'{"ws":1}', InView(WS), paced=True)
    assert moved_conn.sent[-1] == b'{"ws":1}'  # no longer suspended


def test_a_refusal_closes_4003_and_a_failure_1013_with_nothing_of_the_old_access() -> None:
    gateway, backend, reauth, ws = world()
    refused, refused_conn = subscribed(gateway, ws, "alice")
    failed, failed_conn = subscribed(gateway, ws, "bob")
    reauth.handle(ROLE_CHANGE)
    fan_out([refused, failed], b'{"ws":1}', InView(WS), paced=True)
    backend.request("alice").errback(AccessRefused("access refused by the backend: HTTP 403"))
    backend.request("bob").errback(AccessError("access backend unavailable: timeout"))
    assert refused_conn.frames == [{"@type": "error", "error": "access revoked: the access backend refused the token"}]
    assert refused_conn.closed is not None and refused_conn.closed[0] == 4003
    assert [f["@type"] for f in failed_conn.frames] == ["error"] and failed_conn.closed is not None
    assert failed_conn.closed[0] == 1013
    assert gateway.revoked == {"backend_refused": 1, "backend_unavailable": 1}


def test_answers_that_come_at_once_do_not_recurse_however_many_tokens() -> None:
    """A resolver failing at once (a request that cannot even start) for 3,000 distinct tokens: every session is
    closed 1013, one after the other, without a recursion per token."""
    gateway, backend, reauth, ws = world(max_requests=1)
    backend.refresh = lambda token, who: fail(AccessError("access backend unavailable: bad URL"))  # type: ignore
    conns = [subscribed(gateway, ws, f"user-{i}")[1] for i in range(3000)]
    reauth.handle(ROLE_CHANGE)
    assert all(conn.closed is not None and conn.closed[0] == 1013 for conn in conns)
    assert reauth.sessions["unavailable"] == 3000 and reauth.in_flight == 0


def test_events_faster_than_the_backend_do_not_hold_a_session_past_the_timeout() -> None:
    """An IDM event designating alice every 0.4 s, each answer 0.8 s late: every answer may predate the latest
    event, so it is asked again; but after ``timeout`` (5 s) of suspension without an answer it may apply, alice is
    closed 1013 (PROTOCOL.md §3.1, "no answer within the resolver's timeout"), not held forever."""
    clock, backend = Clock(), Backend()
    gateway = Gateway(clock, Verifier(), backend)
    reauth = Reauthorizer(gateway, backend, clock, timeout=5)
    session, conn = subscribed(gateway, EventsEndpoint(gateway.table, clock, pacing_rate=0), "alice")
    reauth.handle(ROLE_CHANGE)
    for step in range(1, 60):
        clock.advance(0.4)
        if step % 2 == 0:
            backend.answer("alice")
        reauth.handle(ROLE_CHANGE)
        if conn.closed is not None:
            break
    assert conn.closed is not None and conn.closed[0] == 1013 and clock.seconds() <= 5.6
    assert reauth.suspended == 0 and reauth.sessions["unavailable"] == 1


def test_time_queued_behind_max_requests_does_not_count_toward_the_timeout() -> None:
    """max_requests 1 and a backend answering each request in 1 s: the eighth token waits 7 s in the queue, yet its
    session gets its answer applied (the timeout runs from a token's first request), not 1013."""
    clock, backend = Clock(), Backend()
    gateway = Gateway(clock, Verifier(), backend)
    reauth = Reauthorizer(gateway, backend, clock, max_requests=1, timeout=5)
    endpoint = EventsEndpoint(gateway.table, clock, pacing_rate=0)
    conns = [subscribed(gateway, endpoint, f"user-{i}")[1] for i in range(8)]
    reauth.handle(ROLE_CHANGE)
    for _ in range(8):
        clock.advance(1)
        (token,) = [t for t, d in backend.asked if not d.called]
        backend.answer(token)
    assert all(conn.closed is None for conn in conns) and reauth.sessions["applied"] == 8
