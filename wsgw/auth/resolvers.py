"""Access resolvers (PROTOCOL.md §3): turn verified claims into the session's Access.

``ClaimsResolver`` reads ``profile``, ``roles`` and ``workspaces`` from the token itself; ``HttpResolver``
asks an HTTP backend with the token as bearer, within bounds (its docstring). Both take the login from
``name`` (else ``preferred_username``), the user id from ``sub`` (empty when absent) and the expiry from ``exp``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgw.access import (
    Access,
    AccessBusy,
    AccessError,
    AccessRefused,
    Identity,
    access_from_document,
    identity_from_claims,
)
from wsgw.auth.http import HttpGet, TreqClient, short_reason
from wsgw.interfaces import IAccessResolver
from wsgw.logs import LineBudget

_log = Logger()


@implementer(IAccessResolver)
class ClaimsResolver:
    """The default resolver: everything comes from the (already verified) token claims, which cannot change."""

    refreshes = False

    def refresh(self, token: str, who: Identity) -> Deferred[Access]:
        return fail(AccessError("the claims resolver cannot refresh an access"))

    def invalidate(self) -> None:
        pass

    def resolve(self, token: str, claims: Mapping[str, Any]) -> Deferred[Access]:
        try:
            return succeed(access_from_document(identity_from_claims(claims), claims))
        except AccessError as e:
            return fail(e)


REFUSING = frozenset({401, 403, 404})
"""Backend statuses that refuse the token (PROTOCOL.md §3.1, "Backend answers"): the user may not connect."""

OUTCOMES = ("ok", "refused", "failed", "timeout", "cached", "shared", "busy")
"""What ``HttpResolver.lookups`` counts: requests answered 200 with a document, refused (401, 403, 404), failed
(any other answer, a bad document, no connection), timed out; resolves answered from the cache (an answer or
a refusal), sharing a request in flight, refused at once for lack of a free request (``busy``)."""

_V = TypeVar("_V")


class _Expiring(Generic[_V]):
    """At most ``max_entries`` values by key, each kept ``ttl`` seconds (one TTL for all, so insertion order is
    expiry order: the oldest goes first, whether expired or evicted)."""

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, _V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> _V | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] > self._clock.seconds():
            return hit[1]
        del self._entries[key]
        return None

    def put(self, key: bytes, value: _V) -> None:
        if self._ttl <= 0 or self._max_entries <= 0:
            return
        now = self._clock.seconds()
        entries = self._entries
        entries.pop(key, None)
        while entries and next(iter(entries.values()))[0] <= now:
            entries.popitem(last=False)
        while len(entries) >= self._max_entries:
            entries.popitem(last=False)
        entries[key] = (now + self._ttl, value)

    def discard(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


@implementer(IAccessResolver)
class HttpResolver:
    """GETs ``url`` with the token as bearer and reads ``{"profile","roles","workspaces"}``, within bounds:

    - one request per token at a time: concurrent resolves of a token share it;
    - at most ``max_requests`` requests in flight (0 = no cap); past it a resolve fails at once with
      ``AccessBusy`` (the client is closed 1013, try again);
    - each request at most ``timeout`` seconds, its answer at most 4 MiB;
    - an answer is cached per token for ``cache_ttl`` seconds, a refusal (401, 403, 404: ``AccessError``
      "access refused by the backend", close 4001) for ``refusal_ttl``; each cache holds at most
      ``max_entries`` tokens (as SHA-256 digests, never the token), the oldest evicted first. Any other
      failure is not cached.

    ``lookups`` counts resolves by ``OUTCOMES``, ``in_flight`` the requests now; ``observe`` (None: nothing),
    called with each request's duration in seconds, feeds /metrics. A failed request is logged within
    ``log_budget`` (kind ``access_backend``; by default a budget of its own).
    """

    refreshes = True

    def __init__(
        self,
        clock: IReactorTime,
        url: str,
        cache_ttl: float = 10.0,
        http_get: HttpGet | None = None,
        timeout: float = 5.0,
        max_entries: int = 10000,
        *,
        refusal_ttl: float = 5.0,
        max_requests: int = 32,
        log_budget: LineBudget | None = None,
    ) -> None:
        self._clock = clock
        self._url = url
        self._http_get = http_get
        self._timeout = timeout
        self._max_requests = max_requests
        self._budget = log_budget if log_budget is not None else LineBudget(clock)
        self._answers: _Expiring[Access] = _Expiring(clock, cache_ttl, max_entries)
        self._refusals: _Expiring[str] = _Expiring(clock, refusal_ttl, max_entries)
        self._inflight: dict[bytes, list[Deferred[Access]]] = {}  # sha256(token) -> its resolves waiting
        self._generations: dict[bytes, int] = {}  # sha256(token) -> the generation its request in flight started in
        self._generation = 0  # bumped by invalidate()
        self.lookups: Counter[str] = Counter()
        self.observe: Callable[[float], object] | None = None

    @property
    def in_flight(self) -> int:
        """Requests to the backend now."""
        return len(self._inflight)

    def resolve(self, token: str, claims: Mapping[str, Any]) -> Deferred[Access]:
        try:
            who = identity_from_claims(claims)
        except AccessError as e:
            return fail(e)
        key = hashlib.sha256(token.encode("utf-8")).digest()  # never keep raw tokens in memory
        access = self._answers.get(key)
        refusal = self._refusals.get(key) if access is None else None
        if access is not None or refusal is not None:
            self.lookups["cached"] += 1
            return succeed(access) if access is not None else fail(AccessRefused(refusal))
        waiters = self._inflight.get(key)
        if waiters is not None:
            self.lookups["shared"] += 1
            waiter: Deferred[Access] = Deferred()
            waiters.append(waiter)
            return waiter
        if self._max_requests and len(self._inflight) >= self._max_requests:
            self.lookups["busy"] += 1
            return fail(AccessBusy("access backend busy, try again later"))
        return self._request(key, token, who)

    def refresh(self, token: str, who: Identity) -> Deferred[Access]:
        """Ask the backend again for ``token`` past the cache (PROTOCOL.md §3.1): a request in flight that started
        before the latest ``invalidate`` is not shared, the answer replaces the cache entry. Not capped by
        ``max_requests`` (the caller bounds its own requests); fails as ``resolve`` does."""
        key = hashlib.sha256(token.encode("utf-8")).digest()
        waiters = self._inflight.get(key)
        if waiters is not None and self._generations.get(key) == self._generation:
            self.lookups["shared"] += 1
            waiter: Deferred[Access] = Deferred()
            waiters.append(waiter)
            return waiter
        return self._request(key, token, who)

    def invalidate(self) -> None:
        """Access may have changed for anyone (an IDM event): forget every cached answer, and let no request in
        flight now settle a resolve with its answer; its resolves are asked again."""
        self._generation += 1
        self._answers.clear()

    def _request(self, key: bytes, token: str, who: Identity) -> Deferred[Access]:
        waiter: Deferred[Access] = Deferred()
        stale = self._inflight.get(key)
        self._inflight[key] = [waiter, *(stale or ())]  # a stale request's resolves wait for this one
        if stale is not None:
            stale.clear()
        self._generations[key] = self._generation
        started = self._clock.seconds()
        d: Deferred[Any] = maybeDeferred(self._get, self._url, {"Authorization": "Bearer " + token})
        d.addTimeout(self._timeout, self._clock)
        d.addBoth(self._answered, key, started, who, token, self._inflight[key], started)
        return waiter

    def _get(self, url: str, headers: Mapping[str, str]) -> Deferred[tuple[int, bytes]]:
        if self._http_get is None:
            self._http_get = TreqClient(self._clock, timeout=self._timeout, max_bytes=4 << 20)
        return self._http_get(url, headers)

    def _answered(self, result: tuple[int, bytes] | Failure, key: bytes, started: float, who: Identity,
                  token: str, waiters: list[Deferred[Access]], first: float) -> None:
        """A request ended: count it, cache an answer or a refusal, and settle every resolve waiting for it (a
        request that started before the latest ``invalidate`` asks again for them instead, until ``timeout``
        seconds passed since the ``first`` request for them: then they fail "access backend unavailable", as
        with no answer, PROTOCOL.md §3.1; IDM events more frequent than the backend's answers never hold a
        resolve, or a session's frames, forever)."""
        if self.observe is not None:
            self.observe(self._clock.seconds() - started)
        try:
            outcome, answer = self._outcome(result, who)
        except Exception:  # noqa: BLE001 - a bug here must still settle the waiters
            _log.failure("access resolver error")
            outcome, answer = "failed", AccessError("access backend unavailable: internal error")
        self.lookups[outcome] += 1
        if self._inflight.get(key) is waiters:
            del self._inflight[key]
            stale = self._generations.pop(key) != self._generation
        else:  # a refresh took over this request's resolves (``_request``): they wait for it
            return
        if stale and waiters and self._clock.seconds() - first >= self._timeout:
            outcome, answer = "timeout", AccessError(
                f"access backend unavailable: access changed during every answer for {self._timeout:g} s")
        elif stale and waiters:
            self._inflight[key] = waiters
            self._generations[key] = self._generation
            d: Deferred[Any] = maybeDeferred(self._get, self._url, {"Authorization": "Bearer " + token})
            d.addTimeout(self._timeout, self._clock)
            d.addBoth(self._answered, key, self._clock.seconds(), who, token, waiters, first)
            return
        if isinstance(answer, Access):
            self._refusals.discard(key)
            self._answers.put(key, answer)
            for w in waiters:
                w.callback(answer)
            return
        if outcome == "refused":
            self._answers.discard(key)
            self._refusals.put(key, str(answer))
        for w in waiters:
            w.errback(answer)

    def _outcome(self, result: tuple[int, bytes] | Failure, who: Identity) -> tuple[str, Access | AccessError]:
        if isinstance(result, Failure):
            reason = short_reason(result)
            self._budget.warn(_log, "access_backend", "access backend {url} failed: {reason}", url=self._url,
                              reason=reason)
            unavailable = AccessError(f"access backend unavailable: {reason}")
            return ("timeout" if reason == "timeout" else "failed"), unavailable
        status, body = result
        if status in REFUSING:
            return "refused", AccessRefused(f"access refused by the backend: HTTP {status}")
        try:
            return "ok", _parse(status, body, who)
        except AccessError as e:
            return "failed", e


def _parse(status: int, body: bytes, who: Identity) -> Access:
    if status != 200:
        raise AccessError(f"access backend unavailable: HTTP {status}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise AccessError("access backend unavailable: bad JSON") from None
    if not isinstance(doc, dict):
        raise AccessError("access backend unavailable: bad JSON (not an object)")
    try:
        return access_from_document(who, doc)
    except AccessError as e:
        raise AccessError(f"access backend unavailable: bad document ({e})") from None
