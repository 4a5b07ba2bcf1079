"""An OIDC issuer's signing keys (PROTOCOL.md §2): discovered from ``<issuer>/.well-known/openid-configuration``,
fetched without blocking the reactor, cached, refetched on an unknown ``kid`` at a bounded rate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jwt
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw.access import AuthError
from wsgw.auth.http import TreqClient, bytes_getter, short_reason

_log = Logger()
_KTY_FOR_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class JwksKeys:
    """An OIDC issuer's signing keys: discovered, cached, refetched on an unknown kid at a bounded rate.

    One fetch at a time; verifies that need keys while it runs wait for it. After an attempt, the next one
    waits ``refetch_interval`` (``retry_interval`` while no key set was ever loaded). Keys older than
    ``max_age`` are refreshed on use; if that refresh fails the old keys stay in use.
    """

    def __init__(
        self,
        clock: IReactorTime,
        issuer: str,
        http_get: Callable[[str], Deferred[bytes]] | None,
        *,
        fetch_timeout: float,
        refetch_interval: float,
        retry_interval: float,
        max_age: float,
    ) -> None:
        self._clock = clock
        self._discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._http_get = http_get
        self._fetch_timeout = fetch_timeout
        self._refetch_interval = refetch_interval
        self._retry_interval = retry_interval
        self._max_age = max_age
        self._jwks_uri: str | None = None
        self._keys: dict[str | None, dict] | None = None  # kid -> JWK; key None when the set has one key
        self._prepared: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        self._waiters: list[Deferred[None]] | None = None

    def key_for(self, kid: str | None, alg: str) -> Deferred[jwt.PyJWK]:
        """The key for ``kid`` (fetching the key set if needed and allowed), or an AuthError."""
        now = self._clock.seconds()
        known = self._keys is not None and kid in self._keys
        fresh = self._keys is not None and now - self._loaded_at < self._max_age
        if known and fresh:
            return self._lookup(kid, alg)
        if not self._may_fetch(now):
            if known:
                return self._lookup(kid, alg)
            if self._keys is None:
                return fail(AuthError("the issuer's signing keys are unavailable"))
            return fail(AuthError("token signed with an unknown key"))
        return self._fetch_shared().addCallback(lambda _: self._lookup(kid, alg))

    def _may_fetch(self, now: float) -> bool:
        if self._waiters is not None or self._attempted_at is None:
            return True
        interval = self._refetch_interval if self._keys is not None else self._retry_interval
        return now - self._attempted_at >= interval

    def _lookup(self, kid: str | None, alg: str) -> Deferred[jwt.PyJWK]:
        jwk = None if self._keys is None else self._keys.get(kid)
        if jwk is None:
            if self._keys is None:
                return fail(AuthError("the issuer's signing keys are unavailable"))
            if kid is None:
                return fail(AuthError("token has no key id (kid)"))
            return fail(AuthError("token signed with an unknown key"))
        key = self._prepared.get((kid, alg))
        if key is None:
            if jwk.get("alg") not in (None, alg) or jwk.get("kty") != _KTY_FOR_FAMILY.get(alg[:2]):
                return fail(AuthError(f"the token's key does not fit algorithm {alg}"))
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                return fail(AuthError(f"the token's key does not fit algorithm {alg}"))
            self._prepared[(kid, alg)] = key
        return succeed(key)

    def _fetch_shared(self) -> Deferred[None]:
        """Join the running fetch, or start one; the Deferred fires when it ends (it never fails)."""
        waiter: Deferred[None] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        self._attempted_at = self._clock.seconds()
        maybeDeferred(self._fetch).addCallbacks(self._loaded, self._fetch_failed).addBoth(self._wake)
        return waiter

    def _fetch(self) -> Deferred[dict[str | None, dict]]:
        if self._jwks_uri is not None:
            return self._get_json(self._jwks_uri).addCallback(_parse_jwks)
        d = self._get_json(self._discovery_url)
        d.addCallback(self._discovered)
        d.addCallback(self._get_json)
        d.addCallback(_parse_jwks)
        return d

    def _discovered(self, doc: Any) -> str:
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        self._jwks_uri = uri
        return uri

    def _get_json(self, url: str) -> Deferred[Any]:
        if self._http_get is None:
            getter = TreqClient(self._clock, timeout=self._fetch_timeout, follow_redirects=True)
            self._http_get = bytes_getter(getter)
        d = maybeDeferred(self._http_get, url)
        d.addTimeout(self._fetch_timeout, self._clock)
        d.addCallback(json.loads)
        return d

    def _loaded(self, keys: dict[str | None, dict]) -> None:
        self._keys = keys
        self._prepared.clear()
        self._loaded_at = self._clock.seconds()
        _log.info("loaded {count} signing keys from {url}", count=len(keys), url=self._jwks_uri)

    def _fetch_failed(self, failure: Failure) -> None:
        self._jwks_uri = None  # rediscover next time
        _log.warn(
            "cannot fetch the issuer's signing keys from {url}: {reason}",
            url=self._discovery_url,
            reason=short_reason(failure),
        )

    def _wake(self, _: object) -> None:
        waiters, self._waiters = self._waiters or [], None
        for w in waiters:
            w.callback(None)


def _parse_jwks(doc: Any) -> dict[str | None, dict]:
    """The usable signature keys of a JWKS by kid (also under None when there is exactly one)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("the JWKS document has no keys list")  # noqa: TRY004
    keys: dict[str | None, dict] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP") or jwk.get("use") == "enc":
            continue
        kid = jwk.get("kid")
        keys[kid if isinstance(kid, str) else None] = jwk
    if len(keys) == 1:
        keys[None] = next(iter(keys.values()))
    return keys
