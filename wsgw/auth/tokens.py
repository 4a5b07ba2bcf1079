"""Token verification (PROTOCOL.md §2): pyjwt with an HMAC secret, a PEM public key or an OIDC issuer's JWKS.

Owns ``TokenVerifier`` and ``validate_algorithms`` (the startup check of the key configuration).

Policy decisions:
- only the configured algorithms are accepted; ``none`` can never be configured; the key is chosen by the
  token's algorithm family, so a public key is never used as an HMAC secret (no algorithm confusion);
- pyjwt checks the signature, that ``exp`` is present, ``iss`` when ``issuer`` (else ``oidc_issuer``) is set,
  ``aud`` only when configured, and the types of ``sub`` and ``jti``;
- time claims (``exp``, ``nbf``) are checked here against ``clock.seconds()`` ± leeway, since pyjwt's own
  checks read the wall clock; ``exp``, ``nbf`` and ``iat`` must be finite numbers (RFC 7519 §2 NumericDate: a NaN
  ``iat``, which json.loads reads, escaped every revocation by time and ``max_token_lifetime``, PROTOCOL.md §3.1);
- the login is ``name``, else ``preferred_username``; the verified claims come back with ``name`` set to it.

Cost (bench/RESULTS.md "Connect path"): an HMAC secret is prepared once, not per token
(``wsgw.internals.pyjwt.prepare_keys_once``), and the header segment of a token whose header was read before
and names an allowed HMAC algorithm is not decoded again before the signature check (``HEADER_CACHE``
segments remembered): the signature check decodes and validates the whole token, so a token malformed past
its header is refused ``malformed token`` there, as it was by the header read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wsgw.access import AuthError, login_claim
from wsgw.auth.oidc import JwksKeys
from wsgw.interfaces import ITokenVerifier
from wsgw.internals.pyjwt import decode_segments_fast, json_loads_fast, prepare_keys_once

_log = Logger()

_KNOWN_ALGORITHMS = frozenset(a for a in get_default_algorithms() if a != "none")
HEADER_CACHE = 32
"""Header segments of HMAC tokens remembered with their algorithm (the issuers' few distinct headers; forgotten all
at once when full, so a peer sending many distinct headers costs the full read, never memory)."""
_CLAIM_REFUSALS = {
    "exp": "token has no expiry (exp)",
    "iss": "token issuer is not accepted",
    "aud": "token audience is not accepted",
}


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
        self._oidc = bool(oidc_issuer)
        self._secret = hmac_secret
        self._audience = audience
        self._issuer = issuer if issuer is not None else oidc_issuer
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._pem_keys: dict[str, Any] = {}
        if public_key_pem:
            self._pem_keys = _prepare_pem(public_key_pem, [a for a in algorithms if not _is_hmac(a)])
        self._decoder = jwt.PyJWT(
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": self._issuer is not None,
                "verify_aud": audience is not None,
                "require": ["exp"],
            }
        )
        prepare_keys_once(self._decoder)
        decode_segments_fast(self._decoder)
        json_loads_fast()
        self._hmac_headers: dict[str, str] = {}  # a header segment read before -> its (allowed, HMAC) algorithm
        self._jwks: JwksKeys | None = None
        if oidc_issuer:
            self._jwks = JwksKeys(
                clock,
                oidc_issuer,
                http_get,
                fetch_timeout=fetch_timeout,
                refetch_interval=jwks_refetch_interval,
                retry_interval=jwks_retry_interval,
                max_age=jwks_max_age,
            )

    def rekey(self, hmac_secret: bytes | None, public_key_pem: bytes | None) -> None:
        """Verify tokens with these keys from now on (secret rotation on SIGHUP, wsgw.reload): a token signed
        with the previous secret or key is refused after this, with no grace period; sessions verified before
        keep their access until their token expires. Raises ValueError, keeping the keys, when the new ones do
        not fit the algorithms (``validate_algorithms``, ``_prepare_pem``)."""
        validate_algorithms(sorted(self._algorithms), bool(hmac_secret), bool(public_key_pem), self._oidc)
        algorithms = sorted(a for a in self._algorithms if not _is_hmac(a))
        pem_keys = _prepare_pem(public_key_pem, algorithms) if public_key_pem else {}
        self._secret, self._pem_keys = hmac_secret, pem_keys

    def verify(self, token: str) -> Deferred[dict[str, Any]]:
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
        segment = token.partition(".")[0]
        known = self._hmac_headers.get(segment)
        if known is not None:
            return known, None
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
        if _is_hmac(alg):
            if len(self._hmac_headers) >= HEADER_CACHE:
                self._hmac_headers.clear()
            self._hmac_headers[segment] = alg
        kid = header.get("kid")
        return alg, kid if isinstance(kid, str) else None

    def _decode(self, token: str, alg: str, key: Any) -> dict[str, Any]:
        try:
            claims = self._decoder.decode(token, key, algorithms=[alg], issuer=self._issuer, audience=self._audience)
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(_CLAIM_REFUSALS.get(e.claim, "invalid token")) from None
        except jwt.InvalidIssuerError:
            raise AuthError(_CLAIM_REFUSALS["iss"]) from None
        except jwt.InvalidAudienceError:
            raise AuthError(_CLAIM_REFUSALS["aud"]) from None
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

    def _check_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        now = self._clock.seconds()
        exp = claims["exp"]  # present: pyjwt requires it
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
        # a NaN iat compares false with every time: it escaped revocations by time and the lifetime bound (§3.1)
        iat = claims.get("iat")
        if iat is not None and not _is_time(iat):
            raise AuthError("token iat must be a number")
        login = login_claim(claims)
        if login is None:
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
