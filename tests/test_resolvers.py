"""Tests of the access resolvers: claims to Access, and the cached, shared, failure-safe http resolver."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from wsgw.access import Access, AccessError, Root, Workspace
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
    assert len(resolver._cache) == 1


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
