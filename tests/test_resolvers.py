"""Tests of the access resolvers: claims to Access, and the cached, shared, bounded, failure-safe http resolver
(unit tests, then the real daemon with a real backend)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from unittest.mock import ANY

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from tests.support.daemon import StartGateway, scrape, token, value
from tests.support.waiting import wait_until
from tests.support.wsclient import connect
from wsgw.access import Access, AccessBusy, AccessError, AccessRefused, Identity, Root, Workspace
from wsgw.auth.resolvers import ClaimsResolver, HttpResolver
from wsgw.interfaces import IAccessResolver

fired = SynchronousTestCase().successResultOf
failed = SynchronousTestCase().failureResultOf

URL = "http://access.internal/v1/access"
WORKSPACES = [
    {
        "uuid": "ws-1",
        "slug": "personal-files",
        "roots": [{"uuid": "r1", "path": "pydiods1/users/alice", "key": "home"}],
    }
]
DOC = {"profile": "standard", "roles": ["ROOT_GROUP", "r-team"], "workspaces": WORKSPACES}
CLAIMS = {"name": "alice", "sub": "u-1", "exp": 1_700_003_600}


def access_error(d: Deferred) -> str:
    return failed(d, AccessError).getErrorMessage()


# --- claims resolver


def test_claims_resolver_builds_access_from_claims() -> None:
    """The claims resolver takes login, sub, exp, profile, roles and workspaces from the claims."""
    claims = {**CLAIMS, "profile": "admin", "roles": "a, b,,c", "workspaces": WORKSPACES}
    access = fired(ClaimsResolver().resolve("tok", claims))
    assert access == Access(
        "alice",
        "u-1",
        "admin",
        frozenset({"a", "b", "c"}),
        (Workspace("ws-1", "personal-files", (Root("r1", "pydiods1/users/alice", "home"),)),),
        1_700_003_600,
    )
    assert verifyObject(IAccessResolver, ClaimsResolver())


def test_claims_resolver_accepts_roles_as_a_list_and_defaults() -> None:
    """Roles may be a list; a token without profile or workspaces gives a standard user with none."""
    access = fired(ClaimsResolver().resolve("tok", {**CLAIMS, "roles": ["x", "y"]}))
    assert access.roles == frozenset({"x", "y"})
    assert access.profile == "standard" and access.workspaces == ()


def test_sessions_with_equal_workspaces_and_roles_share_one_copy_of_each() -> None:
    """Two users' tokens naming the same workspace and roles give accesses holding the same objects (one copy in
    memory, however many sessions hold it: bench/RESULTS.md, "Memory and GC"); different ones stay apart."""
    resolver = ClaimsResolver()
    first = fired(resolver.resolve("t1", {**CLAIMS, "roles": "a,b", "workspaces": WORKSPACES}))
    second = fired(resolver.resolve("t2", {**CLAIMS, "name": "bob", "roles": ["b", "a"],
                                           "workspaces": json.loads(json.dumps(WORKSPACES))}))
    assert first.workspaces[0] is second.workspaces[0]
    assert first.roles is second.roles
    other = fired(resolver.resolve("t3", {**CLAIMS, "roles": "c", "workspaces": [{**WORKSPACES[0], "slug": "x"}]}))
    assert other.workspaces[0] is not first.workspaces[0] and other.workspaces[0].slug == "x"
    assert other.roles == frozenset({"c"})


def test_claims_resolver_falls_back_to_preferred_username() -> None:
    """Without a `name` claim the login is `preferred_username`; without `sub` the sub is empty."""
    access = fired(ClaimsResolver().resolve("tok", {"preferred_username": "bob", "exp": 5}))
    assert (access.login, access.sub, access.exp) == ("bob", "", 5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"workspaces": "ws-1"}, "workspaces must be a list"),
        ({"workspaces": [{"uuid": "ws-1"}]}, "a workspace needs a uuid and a slug"),
        ({"workspaces": [{"uuid": "w", "slug": "s", "roots": [{"uuid": "r"}]}]}, "a root needs a path"),
        ({"roles": 7}, "roles must be a string or a list of strings"),
        ({"name": None}, "token has no login (name)"),
        ({"sub": 12}, "token sub must be a string"),
    ],
)
def test_claims_resolver_refuses_bad_claims(extra: dict, message: str) -> None:
    """Malformed workspaces, roles, login or sub make the resolve fail with AccessError."""
    claims = {k: v for k, v in {**CLAIMS, **extra}.items() if v is not None}
    assert message in access_error(ClaimsResolver().resolve("tok", claims))


# --- http resolver


class FakeBackend:
    """A fake (url, headers) -> (status, body) getter recording requests; can hold or fail them."""

    def __init__(self, status: int = 200, body: bytes = json.dumps(DOC).encode()) -> None:
        self.status = status
        self.body = body
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.held: list[Deferred[tuple[int, bytes]]] = []
        self.hold = False
        self.error: Exception | None = None

    def __call__(self, url: str, headers: Mapping[str, str]) -> Deferred[tuple[int, bytes]]:
        self.requests.append((url, dict(headers)))
        if self.hold:
            d: Deferred[tuple[int, bytes]] = Deferred()
            self.held.append(d)
            return d
        if self.error is not None:
            return fail(self.error)
        return succeed((self.status, self.body))


def make(backend: FakeBackend, clock: Clock | None = None, **kw: Any) -> HttpResolver:
    return HttpResolver(clock or Clock(), URL, http_get=backend, **kw)


def test_http_resolver_builds_access_from_the_backend_document() -> None:
    """The http resolver GETs the URL with the token as bearer and builds the Access from the answer."""
    backend = FakeBackend()
    resolver = make(backend)
    access = fired(resolver.resolve("tok-1", CLAIMS))
    assert backend.requests == [(URL, {"Authorization": "Bearer tok-1"})]
    assert (access.login, access.sub, access.exp) == ("alice", "u-1", 1_700_003_600)
    assert access.roles == frozenset({"ROOT_GROUP", "r-team"})
    assert access.workspaces[0].roots[0].path == "pydiods1/users/alice"
    assert verifyObject(IAccessResolver, resolver)


def test_http_resolver_caches_within_ttl_and_refetches_after() -> None:
    """A second resolve of one token within the TTL is served from cache; after the TTL it asks again."""
    clock = Clock()
    backend = FakeBackend()
    resolver = make(backend, clock, cache_ttl=10)
    first = fired(resolver.resolve("tok-1", CLAIMS))
    clock.advance(9.9)
    assert fired(resolver.resolve("tok-1", CLAIMS)) is first
    assert len(backend.requests) == 1
    clock.advance(0.1)
    fired(resolver.resolve("tok-1", CLAIMS))
    assert len(backend.requests) == 2
    fired(resolver.resolve("tok-2", CLAIMS))
    assert len(backend.requests) == 3


def test_http_resolver_shares_one_request_per_token() -> None:
    """Concurrent resolves of one token wait on a single backend request."""
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend)
    pending = [resolver.resolve("tok-1", CLAIMS) for _ in range(5)]
    other = resolver.resolve("tok-2", CLAIMS)
    assert len(backend.requests) == 2 and not any(d.called for d in pending)
    backend.held[0].callback((200, json.dumps(DOC).encode()))
    assert {fired(d).login for d in pending} == {"alice"}
    assert not other.called


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (503, b"down", None, "access backend unavailable: HTTP 503"),
        (200, b"<html>", None, "access backend unavailable: bad JSON"),
        (200, b"[1, 2]", None, "access backend unavailable: bad JSON (not an object)"),
        (200, json.dumps({"workspaces": 3}).encode(), None,
         "access backend unavailable: bad document (workspaces must be a list)"),
        (200, b"", ConnectionRefusedError("nope"), "access backend unavailable: connection refused"),
        (200, b"", RuntimeError("boom"), "access backend unavailable: RuntimeError"),
    ],
)
def test_http_resolver_failure_is_access_error_and_not_cached(
    status: int, body: bytes, error: Exception | None, message: str
) -> None:
    """Backend failures fail the resolve with a clear AccessError and are not cached."""
    backend = FakeBackend(status, body)
    backend.error = error
    resolver = make(backend)
    assert access_error(resolver.resolve("tok-1", CLAIMS)) == message
    backend.status, backend.body, backend.error = 200, json.dumps(DOC).encode(), None
    assert fired(resolver.resolve("tok-1", CLAIMS)).login == "alice"
    assert len(backend.requests) == 2


def test_http_resolver_times_out_without_blocking() -> None:
    """A backend that never answers fails every waiter after the timeout, and the next resolve asks again."""
    clock = Clock()
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend, clock, timeout=5)
    pending = [resolver.resolve("tok-1", CLAIMS) for _ in range(3)]
    clock.advance(4.9)
    assert not any(d.called for d in pending)
    clock.advance(0.1)
    assert [access_error(d) for d in pending] == ["access backend unavailable: timeout"] * 3
    resolver.resolve("tok-1", CLAIMS)
    assert len(backend.requests) == 2


def test_http_resolver_cache_is_bounded_and_evicts_oldest() -> None:
    """The cache holds at most max_entries answers, dropping the oldest first."""
    clock = Clock()
    backend = FakeBackend()
    resolver = make(backend, clock, max_entries=3)
    for i in range(5):
        fired(resolver.resolve(f"tok-{i}", CLAIMS))
        clock.advance(1)
    for kept in ("tok-4", "tok-3", "tok-2"):
        fired(resolver.resolve(kept, CLAIMS))
    assert len(backend.requests) == 5
    fired(resolver.resolve("tok-0", CLAIMS))
    assert len(backend.requests) == 6


def test_http_resolver_drops_expired_entries_when_storing() -> None:
    """Expired cache entries are dropped as new ones are stored, so the cache does not keep dead answers."""
    clock = Clock()
    resolver = make(FakeBackend(), clock, cache_ttl=10)
    for i in range(4):
        fired(resolver.resolve(f"tok-{i}", CLAIMS))
    clock.advance(11)
    fired(resolver.resolve("tok-new", CLAIMS))
    assert len(resolver._answers) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
def test_http_resolver_caches_a_refusal_for_refusal_ttl(status: int) -> None:
    """A 401, 403 or 404 refuses the token ("access refused by the backend", not "unavailable": close 4001) and
    is remembered for refusal_ttl: a flood of resolves of that token costs one request per refusal_ttl."""
    clock = Clock()
    backend = FakeBackend(status, b"{}")
    resolver = make(backend, clock, refusal_ttl=5)
    for _ in range(100):
        assert access_error(resolver.resolve("tok-1", CLAIMS)) == f"access refused by the backend: HTTP {status}"
        clock.advance(0.04)
    assert len(backend.requests) == 1
    clock.advance(1)
    backend.status, backend.body = 200, json.dumps(DOC).encode()
    assert fired(resolver.resolve("tok-1", CLAIMS)).login == "alice"
    assert len(backend.requests) == 2
    assert resolver.lookups == {"refused": 1, "cached": 99, "ok": 1}


def test_http_resolver_caps_requests_in_flight_and_refuses_past_it_as_busy() -> None:
    """At most max_requests requests are in flight: one more distinct token fails at once with AccessBusy, and
    asks nothing; a token already in flight still shares its request; a settled request frees its place."""
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend, max_requests=2)
    first, second = resolver.resolve("tok-1", CLAIMS), resolver.resolve("tok-2", CLAIMS)
    assert resolver.in_flight == 2
    busy = resolver.resolve("tok-3", CLAIMS)
    assert failed(busy, AccessBusy).getErrorMessage() == "access backend busy, try again later"
    shared = resolver.resolve("tok-1", CLAIMS)
    assert len(backend.requests) == 2
    backend.held[0].callback((200, json.dumps(DOC).encode()))
    assert fired(first) == fired(shared) and resolver.in_flight == 1
    third = resolver.resolve("tok-3", CLAIMS)
    assert len(backend.requests) == 3 and not third.called and not second.called
    assert resolver.lookups == {"ok": 1, "busy": 1, "shared": 1}


def test_http_resolver_reports_each_request_duration_and_outcome() -> None:
    """``observe`` gets each request's duration (answered or timed out); ``lookups`` counts its outcome."""
    clock = Clock()
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend, clock, timeout=5)
    durations: list[float] = []
    resolver.observe = durations.append
    answered = resolver.resolve("tok-1", CLAIMS)
    clock.advance(0.25)
    backend.held[0].callback((200, json.dumps(DOC).encode()))
    fired(answered)
    late = resolver.resolve("tok-2", CLAIMS)
    clock.advance(5)
    assert access_error(late) == "access backend unavailable: timeout"
    assert durations == [0.25, 5.0]
    assert resolver.lookups == {"ok": 1, "timeout": 1} and resolver.in_flight == 0


def test_http_resolver_needs_a_login() -> None:
    """Claims without a login fail without contacting the backend."""
    backend = FakeBackend()
    assert access_error(make(backend).resolve("tok", {"sub": "x"})) == "token has no login (name)"
    assert backend.requests == []


# --- integration: the real treq-based getter against a real site


class _AccessResource(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"connection", b"close")
        request.setHeader(b"set-cookie", b"session=leak; Path=/")
        if request.getHeader(b"authorization") != b"Bearer good-token" or request.getHeader(b"cookie"):
            request.setResponseCode(401)
            return b"{}"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(DOC).encode()


@pytest_twisted.inlineCallbacks
def test_default_getter_reads_the_access_document_over_http() -> Any:
    """The default getter reads the document over real HTTP, sends no cookies, and reports a refused connection."""
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Site(_AccessResource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/access"
    try:
        resolver = HttpResolver(reactor, url, cache_ttl=0)
        access = yield resolver.resolve("good-token", CLAIMS).addTimeout(10, reactor)
        assert access.workspaces[0].slug == "personal-files"
        again = yield resolver.resolve("good-token", CLAIMS).addTimeout(10, reactor)
        assert again == access
        denied = resolver.resolve("bad-token", CLAIMS)
        with pytest.raises(AccessError, match="HTTP 401"):
            yield denied.addTimeout(10, reactor)
    finally:
        yield port.stopListening()
    with pytest.raises(AccessError, match="access backend unavailable: connection refused"):
        yield HttpResolver(reactor, url).resolve("good-token", CLAIMS).addTimeout(10, reactor)


class AccessBackend(Resource):
    """An access backend for the daemon: answers DOC, or 403 to the tokens in ``refused``; while ``hold`` is set
    it answers nothing until ``release()``. ``requests`` counts what it was asked."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.refused: set[str] = set()
        self.hold = False
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.requests += 1
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request: Request) -> bytes:
        bearer = (request.getHeader(b"authorization") or b"").decode().removeprefix("Bearer ")
        if bearer in self.refused:
            request.setResponseCode(403)
            return b"{}"
        return json.dumps(DOC).encode()

    def release(self) -> None:
        held, self.held, self.hold = self.held, [], False
        for request in held:
            request.write(self._answer(request))
            request.finish()


@pytest_twisted.async_yield_fixture
async def backend() -> Any:
    """A real access backend on loopback: (its resource, its URL)."""
    from twisted.internet import reactor

    resource = AccessBackend()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, f"http://127.0.0.1:{port.getHost().port}/access"
    resource.release()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_past_32_backend_requests_in_flight_a_subscribe_is_refused_1013_busy(
        gateway: StartGateway, backend: tuple[AccessBackend, str]) -> None:
    """By default at most 32 requests to the access backend are in flight: while it holds 32 distinct tokens'
    requests, a 33rd user's subscribe gets "access backend busy, try again later" and 1013 at once, counted in
    /metrics (refusal reason, lookup outcome, requests in flight); once it answers, the 32 subscribe and the
    request durations show in the histogram."""
    resource, url = backend
    resource.hold = True
    daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                           overrides={"access.resolver": "http", "access.url": url})
    assert daemon.service.config.access_max_requests == 32
    waiting = [await connect(daemon.port) for _ in range(32)]
    for i, client in enumerate(waiting):
        client.send_json({"@type": "subscribe", "jwt": token(f"user{i}")})
    await wait_until(lambda: resource.requests == 32, "32 requests at the backend")
    late = await connect(daemon.port, "/chat")
    assert (await late.subscribe(token("late"))) == {"@type": "error",
                                                      "error": "subscribe: access backend busy, try again later"}
    assert (await late.wait_closed())[0] == 1013
    samples = await scrape(daemon)
    assert value(samples, "wsgw_subscribes_refused_total", reason="access_busy") == 1
    assert value(samples, "wsgw_access_lookups_total", outcome="busy") == 1
    assert value(samples, "wsgw_access_requests_in_flight") == 32
    assert resource.requests == 32
    resource.release()
    for i, client in enumerate(waiting):
        assert (await client.next()) == {"@type": "subscribed", "user": f"user{i}", "exp": ANY}
    samples = await scrape(daemon)
    assert value(samples, "wsgw_access_requests_in_flight") == 0
    assert value(samples, "wsgw_access_lookups_total", outcome="ok") == 32
    assert value(samples, "wsgw_access_request_seconds_count") == 32


@pytest_twisted.ensureDeferred
async def test_a_refused_token_costs_one_backend_request_per_refusal_ttl(
        gateway: StartGateway, backend: tuple[AccessBackend, str]) -> None:
    """The backend answers 403 to mallory's token: 20 subscribes with it in a row each get "access refused by the
    backend: HTTP 403" and 4001, and the backend is asked once (the refusal is cached for refusal_ttl, 5 s by
    default); another user's token is still asked."""
    resource, url = backend
    daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                           overrides={"access.resolver": "http", "access.url": url})
    assert daemon.service.config.access_refusal_ttl == 5
    mallory = token("mallory")
    resource.refused.add(mallory)
    for _ in range(20):
        client = await connect(daemon.port)
        answer = await client.subscribe(mallory)
        assert answer == {"@type": "error", "error": "subscribe: access refused by the backend: HTTP 403"}
        assert (await client.wait_closed())[0] == 4001
    assert resource.requests == 1
    alice = await connect(daemon.port)
    assert (await alice.subscribe(token("alice")))["@type"] == "subscribed"
    samples = await scrape(daemon)
    assert value(samples, "wsgw_access_lookups_total", outcome="refused") == 1
    assert value(samples, "wsgw_access_lookups_total", outcome="cached") == 19
    assert value(samples, "wsgw_subscribes_refused_total", reason="access_denied") == 20
    assert resource.requests == 2


# --- re-derivation (PROTOCOL.md §3.1): refresh and invalidate


def test_http_resolver_refresh_asks_past_the_cache_and_replaces_it() -> None:
    backend = FakeBackend()
    resolver = make(backend, cache_ttl=60)
    fired(resolver.resolve("tok-1", CLAIMS))
    backend.body = json.dumps({**DOC, "workspaces": []}).encode()
    fresh = fired(resolver.refresh("tok-1", fired(resolver.resolve("tok-1", CLAIMS)).identity))
    assert len(backend.requests) == 2 and fresh.workspaces == ()
    assert fired(resolver.resolve("tok-1", CLAIMS)) is fresh  # the cache holds the fresh answer
    assert len(backend.requests) == 2


def test_http_resolver_a_request_older_than_invalidate_asks_again_before_answering() -> None:
    """A subscribe whose backend request started before an IDM event must not get the answer from before it:
    the resolver asks again, and both the subscribe and the cache get the new answer."""
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend, cache_ttl=60)
    waiting = resolver.resolve("tok-1", CLAIMS)
    resolver.invalidate()
    backend.held[0].callback((200, json.dumps(DOC).encode()))  # the answer from before the event
    assert not waiting.called and len(backend.requests) == 2
    backend.held[1].callback((200, json.dumps({**DOC, "workspaces": []}).encode()))
    assert fired(waiting).workspaces == ()


def test_http_resolver_invalidate_forgets_cached_answers() -> None:
    backend = FakeBackend()
    resolver = make(backend, cache_ttl=60)
    fired(resolver.resolve("tok-1", CLAIMS))
    resolver.invalidate()
    fired(resolver.resolve("tok-1", CLAIMS))
    assert len(backend.requests) == 2


def test_http_resolver_refresh_during_a_stale_request_takes_its_resolves_along() -> None:
    backend = FakeBackend()
    backend.hold = True
    resolver = make(backend, cache_ttl=60)
    waiting = resolver.resolve("tok-1", CLAIMS)
    resolver.invalidate()
    refreshed = resolver.refresh("tok-1", Identity("alice", "u-1"))
    assert len(backend.requests) == 2
    backend.held[0].callback((200, json.dumps(DOC).encode()))  # the stale answer settles nobody
    assert not waiting.called and not refreshed.called and len(backend.requests) == 2
    backend.held[1].callback((200, json.dumps({**DOC, "workspaces": []}).encode()))
    assert fired(waiting).workspaces == () and fired(refreshed).workspaces == ()


def test_http_resolver_stops_asking_again_once_its_timeout_passed_under_a_stream_of_idm_events() -> None:
    """IDM events (any user's) every 0.4 s and a backend answering in 0.8 s: each answer predates the latest event,
    so the resolver asks again, but not past its ``timeout`` (5 s) from the first request: then the resolve fails
    "access backend unavailable" (close 1013), instead of waiting forever (PROTOCOL.md §3.1, "no answer within the
    resolver's timeout")."""
    clock, backend = Clock(), FakeBackend()
    backend.hold = True
    resolver = make(backend, clock, cache_ttl=60, timeout=5)
    waiting = resolver.resolve("tok-1", CLAIMS)
    answered = 0
    for step in range(1, 50):
        clock.advance(0.4)
        resolver.invalidate()
        if step % 2 == 0 and answered < len(backend.held):
            backend.held[answered].callback((200, json.dumps(DOC).encode()))
            answered += 1
        if waiting.called:
            break
    assert clock.seconds() <= 6.4 and len(backend.requests) <= 8
    assert "access backend unavailable" in str(failed(waiting).value)


def test_http_resolver_a_refusal_is_access_refused() -> None:
    resolver = make(FakeBackend(status=403))
    assert failed(resolver.resolve("tok-1", CLAIMS)).check(AccessRefused)
    assert failed(resolver.resolve("tok-1", CLAIMS)).check(AccessRefused)  # the cached refusal too
