"""Token verification (PROTOCOL.md §2): pyjwt with an HMAC secret, a PEM public key or an OIDC issuer's JWKS.

Owns ``TokenVerifier`` (signature, ``exp``/``nbf``/``iss``/``aud`` against the injected clock, login claim),
``validate_algorithms`` (the startup check of the key configuration) and ``TreqGetter``, the non-blocking HTTP
GET used for the JWKS and by the http access resolver.

Policy decisions:
- only the configured algorithms are accepted; ``none`` can never be configured; the key is chosen by the
  token's algorithm family, so a public key is never used as an HMAC secret (no algorithm confusion);
- ``exp`` is required: a token that never expires is refused;
- time claims are checked against ``clock.seconds()`` ± leeway (pyjwt's own wall-clock checks are off);
- ``iss`` is checked when ``issuer`` is set, or else against ``oidc_issuer``; ``aud`` only when configured;
- the login is ``name``, else ``preferred_username``; the verified claims come back with ``name`` set to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, cast

import jwt
from jwt.algorithms import get_default_algorithms
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from wsgw.interfaces import ITokenVerifier

_log = Logger()

HttpGet = Callable[[str, Mapping[str, str]], Deferred[tuple[int, bytes]]]
"""The getter the http resolver takes (and TreqGetter is): ``(url, headers) -> Deferred((status, body))``."""

_KNOWN_ALGORITHMS = frozenset(a for a in get_default_algorithms() if a != "none")
_KTY_FOR_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

# pyjwt checks the signature (and the types of sub/jti); time, iss and aud are checked here.
_DECODER = jwt.PyJWT(
    options={
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_iss": False,
        "verify_aud": False,
        "require": [],
    }
)


class AuthError(Exception):
    """The token was refused; the message is a reason fit for the client and never contains the token."""


def _is_hmac(alg: str) -> bool:
    return alg.startswith("HS")


def validate_algorithms(
    algorithms: Sequence[str], has_secret: bool, has_public_key: bool, has_issuer: bool
) -> None:
    """Raise ValueError with a clear message when the algorithms do not fit the configured key sources."""
    if isinstance(algorithms, str):
        raise ValueError("jwt algorithms must be a list of names, not one string")  # noqa: TRY004
    if not algorithms:
        raise ValueError("no jwt algorithm configured")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ValueError("jwt algorithm 'none' is never allowed")
        if alg not in _KNOWN_ALGORITHMS:
            raise ValueError(f"unsupported jwt algorithm {alg!r} (known: {', '.join(sorted(_KNOWN_ALGORITHMS))})")
    hmac = [a for a in algorithms if _is_hmac(a)]
    asym = [a for a in algorithms if not _is_hmac(a)]
    if hmac and not has_secret:
        raise ValueError(f"jwt algorithm {hmac[0]} needs an hmac secret")
    if asym and not (has_public_key or has_issuer):
        raise ValueError(f"jwt algorithm {asym[0]} needs a public key or an oidc issuer")
    if has_public_key and has_issuer:
        raise ValueError("configure either a jwt public key or an oidc issuer, not both")
    if has_secret and not hmac:
        raise ValueError("an hmac secret is configured but no HS* algorithm")
    if (has_public_key or has_issuer) and not asym:
        raise ValueError(
            "a public key or oidc issuer is configured but no asymmetric algorithm (RS*, PS*, ES*, EdDSA)"
        )


@implementer(ITokenVerifier)
class TokenVerifier:
    """Verifies access tokens; ``verify`` fires with the claims or fails with AuthError."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        algorithms: Sequence[str],
        hmac_secret: bytes | None = None,
        public_key_pem: bytes | None = None,
        oidc_issuer: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        http_get: Callable[[str], Deferred[bytes]] | None = None,
        max_token_bytes: int = 8192,
        fetch_timeout: float = 10.0,
        jwks_refetch_interval: float = 60.0,
        jwks_retry_interval: float = 5.0,
        jwks_max_age: float = 3600.0,
    ) -> None:
        validate_algorithms(algorithms, bool(hmac_secret), bool(public_key_pem), bool(oidc_issuer))
        self._clock = clock
        self._algorithms = frozenset(algorithms)
        self._secret = hmac_secret
        self._audience = audience
        self._issuer = issuer if issuer is not None else oidc_issuer
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._pem_keys: dict[str, Any] = {}
        if public_key_pem:
            self._pem_keys = _prepare_pem(public_key_pem, [a for a in algorithms if not _is_hmac(a)])
        self._jwks: _JwksKeys | None = None
        if oidc_issuer:
            self._jwks = _JwksKeys(
                clock,
                oidc_issuer,
                http_get,
                fetch_timeout=fetch_timeout,
                refetch_interval=jwks_refetch_interval,
                retry_interval=jwks_retry_interval,
                max_age=jwks_max_age,
            )

    def verify(self, token: str) -> Deferred[dict]:
        """Verify ``token``: fires with its claims (``name`` set to the login) or fails with AuthError."""
        try:
            alg, kid = self._read_header(token)
            if _is_hmac(alg):
                assert self._secret is not None  # validate_algorithms guarantees it
                return succeed(self._decode(token, alg, self._secret))
            if self._jwks is None:
                key = self._pem_keys.get(alg)
                if key is None:
                    raise AuthError(f"the configured public key cannot verify {alg} tokens")
                return succeed(self._decode(token, alg, key))
        except AuthError as e:
            return fail(e)
        assert self._jwks is not None
        return self._jwks.key_for(kid, alg).addCallback(lambda key: self._decode(token, alg, key))

    def _read_header(self, token: object) -> tuple[str, str | None]:
        if not isinstance(token, str):
            raise AuthError("token must be a string")
        if not token:
            raise AuthError("empty token")
        if len(token) > self._max_token_bytes:
            raise AuthError(f"token too large (limit {self._max_token_bytes} bytes)")
        if not token.isascii():
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("malformed token: no algorithm")
        if alg not in self._algorithms:
            if alg in _KNOWN_ALGORITHMS or alg.lower() == "none":
                raise AuthError(f"token algorithm {alg} is not allowed")
            raise AuthError("token algorithm is not allowed")
        kid = header.get("kid")
        return alg, kid if isinstance(kid, str) else None

    def _decode(self, token: str, alg: str, key: Any) -> dict:
        try:
            claims = _DECODER.decode(token, key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"token algorithm {alg} is not allowed") from None
        except jwt.InvalidKeyError:
            raise AuthError(f"no usable key for {alg} tokens") from None
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        except Exception:  # noqa: BLE001 - a decoder bug must refuse the token, not crash the session
            _log.failure("unexpected error decoding a {alg} token", alg=alg)
            raise AuthError("invalid token") from None
        return self._check_claims(claims)

    def _check_claims(self, claims: dict) -> dict:
        now = self._clock.seconds()
        exp = claims.get("exp")
        if exp is None:
            raise AuthError("token has no expiry (exp)")
        if not _is_time(exp):
            raise AuthError("token exp must be a number")
        if now >= exp + self._leeway:
            raise AuthError("token expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_time(nbf):
                raise AuthError("token nbf must be a number")
            if now + self._leeway < nbf:
                raise AuthError("token not yet valid")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise AuthError("token issuer is not accepted")
        if self._audience is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if self._audience not in auds:
                raise AuthError("token audience is not accepted")
        login = claims.get("name")
        if login is None:
            login = claims.get("preferred_username")
        if not isinstance(login, str) or not login:
            raise AuthError("token has no login (name)")
        return {**claims, "name": login}


def _is_time(value: object) -> bool:
    """A NumericDate: an int or a finite float (JSON allows ``Infinity``; bool is not a number here),
    within a float's range (``10**400`` is a valid JSON integer that no clock comparison can use)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _prepare_pem(pem: bytes, algorithms: Sequence[str]) -> dict[str, Any]:
    """The PEM key prepared once per asymmetric algorithm it can verify; ValueError if it fits none."""
    keys: dict[str, Any] = {}
    for alg in algorithms:
        try:
            keys[alg] = jwt.get_algorithm_by_name(alg).prepare_key(pem)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            continue
    if not keys:
        raise ValueError(f"the jwt public key is not a PEM key usable with {', '.join(algorithms)}")
    return keys


class _JwksKeys:
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
            getter = TreqGetter(self._clock, timeout=self._fetch_timeout, follow_redirects=True)
            self._http_get = _bytes_getter(getter)
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


def short_reason(failure: Failure) -> str:
    """A short, token-free description of a fetch failure, for error frames and logs."""
    if failure.check(defer.TimeoutError, defer.CancelledError, error.TimeoutError):
        return "timeout"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "DNS lookup failed"
    if failure.check(BodyTooLarge):
        return "response too large"
    if failure.check(HttpStatusError):
        return str(failure.value)
    if failure.check(ValueError):  # includes json.JSONDecodeError
        return "bad JSON" if failure.check(json.JSONDecodeError) else str(failure.value)
    return failure.type.__name__ if failure.type else "error"


class BodyTooLarge(Exception):
    """An HTTP response body exceeded the getter's limit."""


class HttpStatusError(Exception):
    """An HTTP response had a status other than 200."""


def _bytes_getter(get: HttpGet) -> Callable[[str], Deferred[bytes]]:
    """Adapt a (status, body) getter to the verifier's body getter: anything but 200 is an error."""

    def body(status_body: tuple[int, bytes]) -> bytes:
        status, payload = status_body
        if status != 200:
            raise HttpStatusError(f"HTTP {status}")
        return payload

    return lambda url: get(url, {}).addCallback(body)


class _CappedBody(Protocol):
    """Collects a response body up to ``limit`` bytes; cancelling the Deferred closes the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._close())

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._close()
            self.done.errback(BodyTooLarge(f"response body over {self._limit} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class TreqGetter:
    """A non-blocking HTTP GET with an overall timeout and a body size cap: ``(url, headers) -> (status, body)``.

    No cookies are kept (the access backend must not see one user's cookies on another's request) and
    redirects are not followed unless asked. ``reactor`` must provide IReactorTime and IReactorTCP (the
    real reactor in production). ``close()`` drops idle keep-alive connections.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        timeout: float = 10.0,
        max_bytes: int = 1 << 20,
        follow_redirects: bool = False,
    ) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self._reactor = reactor
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._follow_redirects = follow_redirects
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        agent = Agent(cast(Any, reactor), connectTimeout=timeout, pool=self._pool)
        no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self._client = HTTPClient(agent, cookiejar=cast(Any, no_cookies))

    def __call__(self, url: str, headers: Mapping[str, str] | None = None) -> Deferred[tuple[int, bytes]]:
        request_headers: dict[bytes | str, bytes | str] = {k: v for k, v in (headers or {}).items()}
        d: Deferred[Any] = self._client.get(
            url,
            headers=request_headers,
            allow_redirects=self._follow_redirects,
            unbuffered=True,
            reactor=cast(Any, self._reactor),
        )
        d.addCallback(self._read)
        d.addTimeout(self._timeout, self._reactor)
        return d

    def _read(self, response: IResponse) -> Deferred[tuple[int, bytes]]:
        body = _CappedBody(self._max_bytes)
        response.deliverBody(body)
        return body.done.addCallback(lambda payload: (response.code, payload))

    def close(self) -> Deferred[None]:
        """Close idle keep-alive connections."""
        return self._pool.closeCachedConnections()
