"""Access resolvers (PROTOCOL.md §3): turn verified claims into the session's Access.

``ClaimsResolver`` reads ``profile``, ``roles`` and ``workspaces`` from the token itself; ``HttpResolver``
asks an HTTP backend with the token as bearer, caches the answer per token for a short TTL (bounded,
oldest evicted first), shares one request between concurrent resolves of a token and never caches a failure.
Both take the login from ``name`` (else ``preferred_username``), the user id from ``sub`` (empty when absent)
and the expiry from ``exp``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgw.access import Access, AccessError, access_from_document, login_claim
from wsgw.auth.http import HttpGet, TreqClient, short_reason
from wsgw.interfaces import IAccessResolver

_log = Logger()


def identity_from_claims(claims: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """``(login, sub, exp)`` of verified claims; AccessError when the login is missing."""
    login = login_claim(claims)
    if login is None:
        raise AccessError("token has no login (name)")
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise AccessError("token sub must be a string")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        exp = None
    return login, sub, None if exp is None else int(exp)


@implementer(IAccessResolver)
class ClaimsResolver:
    """The default resolver: everything comes from the (already verified) token claims."""

    def resolve(self, token: str, claims: Mapping[str, Any]) -> Deferred[Access]:
        try:
            login, sub, exp = identity_from_claims(claims)
            return succeed(access_from_document(login, sub, claims, exp))
        except AccessError as e:
            return fail(e)


@implementer(IAccessResolver)
class HttpResolver:
    """GETs ``url`` with the token as bearer and reads ``{"profile","roles","workspaces"}``."""

    def __init__(
        self,
        clock: IReactorTime,
        url: str,
        cache_ttl: float = 10.0,
        http_get: HttpGet | None = None,
        timeout: float = 5.0,
        max_entries: int = 10000,
    ) -> None:
        self._clock = clock
        self._url = url
        self._ttl = cache_ttl
        self._http_get = http_get
        self._timeout = timeout
        self._max_entries = max_entries
        # sha256(token) -> (expires_at, access); insertion order is expiry order (one TTL for all)
        self._cache: OrderedDict[bytes, tuple[float, Access]] = OrderedDict()
        self._inflight: dict[bytes, list[Deferred[Access]]] = {}

    def resolve(self, token: str, claims: Mapping[str, Any]) -> Deferred[Access]:
        try:
            login, sub, exp = identity_from_claims(claims)
        except AccessError as e:
            return fail(e)
        key = hashlib.sha256(token.encode("utf-8")).digest()  # never keep raw tokens in memory
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self._clock.seconds():
                return succeed(hit[1])
            del self._cache[key]
        waiter: Deferred[Access] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._inflight[key] = [waiter]
        d: Deferred[Any] = maybeDeferred(self._get, self._url, {"Authorization": "Bearer " + token})
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._parse, self._unavailable, callbackArgs=(login, sub, exp))
        d.addBoth(self._settle, key)
        return waiter

    def _get(self, url: str, headers: Mapping[str, str]) -> Deferred[tuple[int, bytes]]:
        if self._http_get is None:
            self._http_get = TreqClient(self._clock, timeout=self._timeout, max_bytes=4 << 20)
        return self._http_get(url, headers)

    def _parse(self, status_body: tuple[int, bytes], login: str, sub: str, exp: int | None) -> Access:
        status, body = status_body
        if status != 200:
            raise AccessError(f"access backend unavailable: HTTP {status}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise AccessError("access backend unavailable: bad JSON") from None
        if not isinstance(doc, dict):
            raise AccessError("access backend unavailable: bad JSON (not an object)")
        try:
            return access_from_document(login, sub, doc, exp)
        except AccessError as e:
            raise AccessError(f"access backend unavailable: bad document ({e})") from None

    def _unavailable(self, failure: Failure) -> None:
        reason = short_reason(failure)
        _log.warn("access backend {url} failed: {reason}", url=self._url, reason=reason)
        raise AccessError(f"access backend unavailable: {reason}")

    def _settle(self, result: Access | Failure, key: bytes) -> None:
        waiters = self._inflight.pop(key, [])
        if isinstance(result, Access):
            self._store(key, result)
            for w in waiters:
                w.callback(result)
        else:
            if not result.check(AccessError):
                _log.failure("access resolver error", failure=result)
                result = Failure(AccessError("access backend unavailable: internal error"))
            for w in waiters:
                w.errback(result.value)

    def _store(self, key: bytes, access: Access) -> None:
        if self._ttl <= 0 or self._max_entries <= 0:
            return
        now = self._clock.seconds()
        cache = self._cache
        cache.pop(key, None)
        while cache and next(iter(cache.values()))[0] <= now:
            cache.popitem(last=False)
        while len(cache) >= self._max_entries:
            cache.popitem(last=False)
        cache[key] = (now + self._ttl, access)
