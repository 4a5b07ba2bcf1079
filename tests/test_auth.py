"""Tests of token verification: keys, algorithms, time claims, JWKS discovery and caching."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from tests.support.daemon import StartGateway
from tests.support.wsclient import connect
from wsgw.access import AuthError
from wsgw.auth.http import BodyTooLarge, TreqClient
from wsgw.auth.tokens import TokenVerifier, validate_algorithms
from wsgw.interfaces import ITokenVerifier

fired = SynchronousTestCase().successResultOf
failed = SynchronousTestCase().failureResultOf

SECRET = b"0123456789abcdef" * 4 + b"-test-secret"
NOW = 1_700_000_000.0
ISSUER = "https://idp.example.com/oidc"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
JWKS_URI = "https://idp.example.com/oidc/jwks"

_rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_rsa_key2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_ec_key = ec.generate_private_key(ec.SECP256R1())
_ed_key = ed25519.Ed25519PrivateKey.generate()


def pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**over: Any) -> dict:
    base: dict[str, Any] = {"name": "alice", "sub": "u-1", "exp": int(NOW) + 3600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict, key: bytes = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, payload: dict, sign: Any = None) -> str:
    """A token built by hand (to forge what pyjwt refuses to produce)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = sign(signing_input.encode()) if sign else b""
    return signing_input + "." + b64(sig)


def clock_at(t: float = NOW) -> Clock:
    c = Clock()
    c.advance(t)
    return c




def refused(d: Deferred) -> str:
    """The AuthError message a fired Deferred failed with."""
    return failed(d, AuthError).getErrorMessage()


def hs_verifier(clock: Clock | None = None, **kw: Any) -> TokenVerifier:
    kw.setdefault("algorithms", ["HS256"])
    return TokenVerifier(clock or clock_at(), hmac_secret=SECRET, **kw)


# --- HMAC and time claims


def test_hs256_valid_token_gives_its_claims() -> None:
    """A valid HS256 token verifies and its claims come back."""
    c = fired(hs_verifier().verify(hs256(claims(profile="admin"))))
    assert c["name"] == "alice" and c["sub"] == "u-1" and c["profile"] == "admin"


def test_verifier_provides_the_interface() -> None:
    """TokenVerifier implements ITokenVerifier."""
    assert verifyObject(ITokenVerifier, hs_verifier())


def test_preferred_username_is_the_login_when_name_is_absent() -> None:
    """Without `name`, `preferred_username` is the login and is returned as `name`."""
    c = fired(hs_verifier().verify(hs256(claims(name=None, preferred_username="bob"))))
    assert c["name"] == "bob"


def test_token_without_login_is_refused() -> None:
    """A token with neither `name` nor `preferred_username` is refused."""
    assert refused(hs_verifier().verify(hs256(claims(name=None)))) == "token has no login (name)"


def test_wrong_secret_is_refused() -> None:
    """A token signed with another secret fails with an invalid-signature error."""
    token = hs256(claims(), key=b"another-secret-another-secret-another-secret")
    assert refused(hs_verifier().verify(token)) == "invalid token signature"


def test_expired_token_is_refused_without_leeway() -> None:
    """A token whose exp has passed is refused when there is no leeway."""
    token = hs256(claims(exp=int(NOW) - 10))
    assert refused(hs_verifier(leeway=0).verify(token)) == "token expired"


def test_recently_expired_token_is_accepted_within_leeway() -> None:
    """A token expired less than the leeway ago is still accepted, and refused once past it."""
    token = hs256(claims(exp=int(NOW) - 10))
    clock = clock_at()
    verifier = hs_verifier(clock, leeway=30)
    assert fired(verifier.verify(token))["name"] == "alice"
    clock.advance(20)
    assert refused(verifier.verify(token)) == "token expired"


def test_expiry_follows_the_injected_clock() -> None:
    """Expiry is judged by the injected clock, not the wall clock."""
    clock = clock_at()
    verifier = hs_verifier(clock, leeway=0)
    token = hs256(claims(exp=int(NOW) + 5))
    assert fired(verifier.verify(token))["exp"] == int(NOW) + 5
    clock.advance(5)
    assert refused(verifier.verify(token)) == "token expired"


def test_token_without_exp_is_refused() -> None:
    """A token that never expires (no exp) is refused."""
    assert refused(hs_verifier().verify(hs256(claims(exp=None)))) == "token has no expiry (exp)"


@pytest.mark.parametrize("exp", ["tomorrow", float("inf"), True])
def test_non_numeric_exp_is_refused(exp: Any) -> None:
    """An exp that is not a finite number (a string, Infinity, a boolean) is refused."""
    token = raw_token(
        {"alg": "HS256", "typ": "JWT"},
        claims(exp=exp),
        lambda m: hmac.new(SECRET, m, hashlib.sha256).digest(),
    )
    assert refused(hs_verifier().verify(token)) == "token exp must be a number"


@pytest.mark.parametrize("iat", ["yesterday", float("nan"), float("inf"), float("-inf"), True, 10**400])
def test_an_iat_that_is_not_a_number_is_refused(iat: Any) -> None:
    """An iat that is not a finite number is refused, as exp and nbf are: NaN (which json.loads reads) compares
    false with every time, so such a token escaped a revocation by login or sub (``iat < before``) and
    ``max_token_lifetime`` (``exp - iat``) (PROTOCOL.md §3.1); RFC 7519 §4.1.6: a NumericDate."""
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(iat=iat),
                      lambda m: hmac.new(SECRET, m, hashlib.sha256).digest())
    assert refused(hs_verifier().verify(token)) == "token iat must be a number"
    assert fired(hs_verifier().verify(hs256(claims(iat=NOW - 0.5))))["iat"] == NOW - 0.5


def test_nbf_in_the_future_is_refused() -> None:
    """A token not valid before a time beyond the leeway is refused; within the leeway it passes."""
    verifier = hs_verifier(leeway=30)
    assert refused(verifier.verify(hs256(claims(nbf=int(NOW) + 60)))) == "token not yet valid"
    assert fired(verifier.verify(hs256(claims(nbf=int(NOW) + 20))))["name"] == "alice"


def test_wrong_issuer_is_refused() -> None:
    """When an issuer is configured, a token from another issuer (or none) is refused."""
    verifier = hs_verifier(issuer="https://good")
    assert refused(verifier.verify(hs256(claims(iss="https://evil")))) == "token issuer is not accepted"
    assert refused(verifier.verify(hs256(claims()))) == "token issuer is not accepted"
    assert fired(verifier.verify(hs256(claims(iss="https://good"))))["iss"] == "https://good"


def test_wrong_audience_is_refused() -> None:
    """When an audience is configured, the token's aud (string or list) must name it."""
    verifier = hs_verifier(audience="cells")
    assert refused(verifier.verify(hs256(claims(aud="other")))) == "token audience is not accepted"
    assert refused(verifier.verify(hs256(claims()))) == "token audience is not accepted"
    assert fired(verifier.verify(hs256(claims(aud="cells"))))["aud"] == "cells"
    assert fired(verifier.verify(hs256(claims(aud=["x", "cells"]))))["name"] == "alice"


def test_audience_is_not_checked_when_not_configured() -> None:
    """Without a configured audience, a token carrying one is accepted."""
    assert fired(hs_verifier().verify(hs256(claims(aud="anything"))))["aud"] == "anything"


# --- algorithms


def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is refused."""
    token = raw_token({"alg": "none", "typ": "JWT"}, claims())
    assert refused(hs_verifier().verify(token)) == "token algorithm none is not allowed"


def test_algorithm_not_configured_is_refused() -> None:
    """A token signed with a valid key but an algorithm not configured is refused."""
    token = hs256(claims(), alg="HS512")
    assert refused(hs_verifier().verify(token)) == "token algorithm HS512 is not allowed"


def test_algorithm_confusion_with_public_key_as_hmac_secret_is_refused() -> None:
    """A token HS256-signed with the RS256 public PEM as secret is refused, even when HS256 is also configured."""
    public = pem(_rsa_key)
    forged = raw_token(
        {"alg": "HS256", "typ": "JWT"}, claims(), lambda m: hmac.new(public, m, hashlib.sha256).digest()
    )
    rs_only = TokenVerifier(clock_at(), algorithms=["RS256"], public_key_pem=public)
    assert refused(rs_only.verify(forged)) == "token algorithm HS256 is not allowed"
    mixed = TokenVerifier(clock_at(), algorithms=["RS256", "HS256"], public_key_pem=public, hmac_secret=SECRET)
    assert refused(mixed.verify(forged)) == "invalid token signature"
    assert fired(mixed.verify(jwt.encode(claims(), _rsa_key, algorithm="RS256")))["name"] == "alice"


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "...", "é.é.é", b64(b"[" * 3000 + b"]" * 3000) + ".e30."]
)
def test_garbage_is_refused_as_malformed(token: str) -> None:
    """Strings that are not JWTs are refused as malformed."""
    assert refused(hs_verifier().verify(token)).startswith("malformed token")


@pytest.mark.parametrize("token", [None, b"abc", 42, {"jwt": "x"}])
def test_non_string_token_is_refused(token: Any) -> None:
    """A token that is not a string is refused before decoding."""
    assert refused(hs_verifier().verify(token)) == "token must be a string"


def test_empty_token_is_refused() -> None:
    """An empty token is refused."""
    assert refused(hs_verifier().verify("")) == "empty token"


def test_megabyte_token_is_refused_without_echoing_it() -> None:
    """A 1 MB token is refused as too large, and the message does not contain it."""
    token = hs256(claims(pad="x" * (1 << 20)))
    message = refused(hs_verifier().verify(token))
    assert message == "token too large (limit 8192 bytes)"
    assert "xxxx" not in message


def test_unknown_algorithm_name_is_not_echoed() -> None:
    """An unknown alg string from the token header is not echoed in the error."""
    token = raw_token({"alg": "X" * 500}, claims())
    assert refused(hs_verifier().verify(token)) == "token algorithm is not allowed"


# --- public keys


@pytest.mark.parametrize(
    ("alg", "key"), [("RS256", _rsa_key), ("PS256", _rsa_key), ("ES256", _ec_key), ("EdDSA", _ed_key)]
)
def test_pem_public_key_verifies_its_algorithm(alg: str, key: Any) -> None:
    """RS256, PS256, ES256 and EdDSA tokens verify against the matching PEM public key."""
    verifier = TokenVerifier(clock_at(), algorithms=[alg], public_key_pem=pem(key))
    assert fired(verifier.verify(jwt.encode(claims(), key, algorithm=alg)))["name"] == "alice"


def test_token_signed_by_another_private_key_is_refused() -> None:
    """An RS256 token signed by another key fails the PEM check."""
    verifier = TokenVerifier(clock_at(), algorithms=["RS256"], public_key_pem=pem(_rsa_key))
    token = jwt.encode(claims(), _rsa_key2, algorithm="RS256")
    assert refused(verifier.verify(token)) == "invalid token signature"


def test_configured_algorithm_the_pem_cannot_verify_is_refused() -> None:
    """With RS256 and ES256 configured and an RSA PEM, an ES256 token gets a clear refusal."""
    verifier = TokenVerifier(clock_at(), algorithms=["RS256", "ES256"], public_key_pem=pem(_rsa_key))
    token = jwt.encode(claims(), _ec_key, algorithm="ES256")
    assert refused(verifier.verify(token)) == "the configured public key cannot verify ES256 tokens"


def test_pem_fitting_no_configured_algorithm_is_a_config_error() -> None:
    """An RSA PEM configured only for ES256 is rejected at construction."""
    with pytest.raises(ValueError, match="not a PEM key usable with ES256"):
        TokenVerifier(clock_at(), algorithms=["ES256"], public_key_pem=pem(_rsa_key))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["HS256"], False, False, False), "HS256 needs an hmac secret"),
        ((["RS256"], False, False, False), "RS256 needs a public key or an oidc issuer"),
        ((["none"], False, False, False), "'none' is never allowed"),
        ((["HS256", "None"], True, False, False), "'none' is never allowed"),
        ((["HS257"], True, False, False), "unsupported jwt algorithm 'HS257'"),
        (([], True, False, False), "no jwt algorithm configured"),
        (("HS256", True, False, False), "must be a list"),
        ((["HS256"], True, True, False), "no asymmetric algorithm"),
        ((["RS256"], True, True, False), "no HS\\* algorithm"),
        ((["RS256"], False, True, True), "either a jwt public key or an oidc issuer"),
    ],
)
def test_validate_algorithms_rejects_bad_configurations(args: tuple, message: str) -> None:
    """validate_algorithms names what is wrong with a bad key/algorithm configuration."""
    with pytest.raises(ValueError, match=message):
        validate_algorithms(*args)


def test_validate_algorithms_accepts_good_configurations() -> None:
    """Consistent configurations pass validate_algorithms."""
    validate_algorithms(["HS256"], True, False, False)
    validate_algorithms(["RS256", "ES256"], False, True, False)
    validate_algorithms(["RS256", "HS512"], True, False, True)


# --- OIDC JWKS


def jwk(key: Any, kid: str) -> dict:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    d = algorithm.to_jwk(key.public_key(), as_dict=True)
    d["kid"] = kid
    return d


class FakeIssuer:
    """A fake http_get serving a discovery document and a JWKS, counting requests."""

    def __init__(self, *keys: dict) -> None:
        self.keys = list(keys)
        self.calls: list[str] = []
        self.hold = False
        self.held: list[tuple[str, Deferred[bytes]]] = []
        self.broken = False

    def __call__(self, url: str) -> Deferred[bytes]:
        self.calls.append(url)
        if self.hold:
            d: Deferred[bytes] = Deferred()
            self.held.append((url, d))
            return d
        if self.broken:
            return fail(ConnectionRefusedError("refused"))
        return succeed(self.body(url))

    def body(self, url: str) -> bytes:
        if url == DISCOVERY:
            return json.dumps({"issuer": ISSUER, "jwks_uri": JWKS_URI}).encode()
        assert url == JWKS_URI
        return json.dumps({"keys": self.keys}).encode()

    def release(self) -> None:
        while self.held:
            url, d = self.held.pop(0)
            d.callback(self.body(url))


def oidc_verifier(issuer: FakeIssuer, clock: Clock, **kw: Any) -> TokenVerifier:
    kw.setdefault("algorithms", ["RS256", "ES256"])
    return TokenVerifier(clock, oidc_issuer=ISSUER, http_get=issuer, **kw)


def rs256(kid: str, key: Any = _rsa_key, **over: Any) -> str:
    return jwt.encode(claims(**{"iss": ISSUER, **over}), key, algorithm="RS256", headers={"kid": kid})


def test_jwks_discovery_then_many_verifies_fetch_once() -> None:
    """The JWKS is discovered and fetched once, then cached for many verifies."""
    issuer = FakeIssuer(jwk(_rsa_key, "k1"), jwk(_ec_key, "k2"))
    verifier = oidc_verifier(issuer, clock_at())
    for _ in range(20):
        assert fired(verifier.verify(rs256("k1")))["name"] == "alice"
    es = jwt.encode(claims(iss=ISSUER), _ec_key, algorithm="ES256", headers={"kid": "k2"})
    assert fired(verifier.verify(es))["name"] == "alice"
    assert issuer.calls == [DISCOVERY, JWKS_URI]


def test_jwks_issuer_is_the_expected_iss() -> None:
    """With an OIDC issuer and no explicit issuer, a token from another iss is refused."""
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock_at())
    assert refused(verifier.verify(rs256("k1", iss="https://evil"))) == "token issuer is not accepted"


def test_concurrent_verifies_share_one_fetch() -> None:
    """Verifies arriving while the key set is being fetched wait for that one fetch."""
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    issuer.hold = True
    verifier = oidc_verifier(issuer, clock_at())
    pending = [verifier.verify(rs256("k1")) for _ in range(5)]
    issuer.release()  # discovery answered: the jwks request is now held
    assert issuer.calls == [DISCOVERY, JWKS_URI]
    issuer.release()
    assert [fired(d)["name"] for d in pending] == ["alice"] * 5
    assert issuer.calls == [DISCOVERY, JWKS_URI]


def test_unknown_kid_triggers_a_refetch_of_the_jwks() -> None:
    """A token with a kid not in the cached set refetches the JWKS (not the discovery) and verifies."""
    clock = clock_at()
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock)
    assert fired(verifier.verify(rs256("k1")))["name"] == "alice"
    clock.advance(60)
    issuer.keys.append(jwk(_rsa_key2, "k2"))
    assert fired(verifier.verify(rs256("k2", key=_rsa_key2)))["name"] == "alice"
    assert issuer.calls == [DISCOVERY, JWKS_URI, JWKS_URI]


def test_unknown_kid_refetch_is_rate_limited() -> None:
    """Garbage kids cause at most one JWKS refetch per refetch interval."""
    clock = clock_at()
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock)
    fired(verifier.verify(rs256("k1")))
    clock.advance(60)
    for i in range(50):
        assert refused(verifier.verify(rs256(f"garbage-{i}"))) == "token signed with an unknown key"
        clock.advance(1)
    assert issuer.calls == [DISCOVERY, JWKS_URI, JWKS_URI]
    clock.advance(10)
    refused(verifier.verify(rs256("garbage-again")))
    assert issuer.calls == [DISCOVERY, JWKS_URI, JWKS_URI, JWKS_URI]
    assert fired(verifier.verify(rs256("k1")))["name"] == "alice"


def test_jwks_fetch_failure_is_an_auth_error_and_retried_later() -> None:
    """An unreachable issuer fails the verify with AuthError; a verify after the retry interval fetches again."""
    clock = clock_at()
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    issuer.broken = True
    verifier = oidc_verifier(issuer, clock)
    assert refused(verifier.verify(rs256("k1"))) == "the issuer's signing keys are unavailable"
    assert refused(verifier.verify(rs256("k1"))) == "the issuer's signing keys are unavailable"
    assert issuer.calls == [DISCOVERY]
    issuer.broken = False
    clock.advance(5)
    assert fired(verifier.verify(rs256("k1")))["name"] == "alice"
    assert issuer.calls == [DISCOVERY, DISCOVERY, JWKS_URI]


def test_jwks_fetch_timeout_is_an_auth_error() -> None:
    """A JWKS fetch that never answers fails the verify after the fetch timeout."""
    clock = clock_at()
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    issuer.hold = True
    verifier = oidc_verifier(issuer, clock, fetch_timeout=3)
    d = verifier.verify(rs256("k1"))
    assert not d.called
    clock.advance(3)
    assert refused(d) == "the issuer's signing keys are unavailable"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", json.dumps({"jwks_uri": 42}).encode(), json.dumps({"jwks_uri": "file:///etc/x"}).encode()],
)
def test_bad_discovery_document_is_an_auth_error(body: bytes) -> None:
    """A discovery document that is not JSON or has no usable jwks_uri fails the verify cleanly."""
    verifier = TokenVerifier(clock_at(), algorithms=["RS256"], oidc_issuer=ISSUER, http_get=lambda url: succeed(body))
    assert refused(verifier.verify(rs256("k1"))) == "the issuer's signing keys are unavailable"


def test_stale_keys_are_refreshed_and_kept_if_refresh_fails() -> None:
    """Keys older than the max age are refreshed on use; if the refresh fails the old keys still verify."""
    clock = clock_at()
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock, jwks_max_age=600)
    fired(verifier.verify(rs256("k1")))
    clock.advance(600)
    issuer.broken = True
    assert fired(verifier.verify(rs256("k1")))["name"] == "alice"
    assert issuer.calls == [DISCOVERY, JWKS_URI, JWKS_URI]


def test_kid_of_a_key_of_another_type_is_refused() -> None:
    """An ES256 token naming the kid of an RSA key is refused."""
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock_at())
    token = jwt.encode(claims(iss=ISSUER), _ec_key, algorithm="ES256", headers={"kid": "k1"})
    assert refused(verifier.verify(token)) == "the token's key does not fit algorithm ES256"


def test_token_without_kid_uses_the_only_key() -> None:
    """A token without kid verifies when the JWKS holds exactly one key."""
    issuer = FakeIssuer(jwk(_rsa_key, "k1"))
    verifier = oidc_verifier(issuer, clock_at())
    token = jwt.encode(claims(iss=ISSUER), _rsa_key, algorithm="RS256")
    assert fired(verifier.verify(token))["name"] == "alice"


# --- integration: the real treq-based getter against a real site


class _Json(Resource):
    isLeaf = True

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"connection", b"close")
        return json.dumps(self._body() if callable(self._body) else self._body).encode()


@pytest_twisted.inlineCallbacks
def test_default_getter_discovers_and_fetches_jwks_over_http() -> Any:
    """With no http_get, the verifier discovers and fetches the JWKS over HTTP; the getter caps body sizes."""
    from twisted.internet import reactor

    root = Resource()
    well_known = Resource()
    root.putChild(b".well-known", well_known)
    port_box: list[int] = []
    well_known.putChild(
        b"openid-configuration", _Json(lambda: {"jwks_uri": f"http://127.0.0.1:{port_box[0]}/jwks"})
    )
    root.putChild(b"jwks", _Json({"keys": [jwk(_rsa_key, "k1")]}))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        port_box.append(port.getHost().port)
        issuer = f"http://127.0.0.1:{port_box[0]}"
        verifier = TokenVerifier(reactor, algorithms=["RS256"], oidc_issuer=issuer)
        token = jwt.encode(claims(iss=issuer, exp=int(reactor.seconds()) + 60), _rsa_key, algorithm="RS256",
                           headers={"kid": "k1"})
        verified = yield verifier.verify(token).addTimeout(10, reactor)
        assert verified["name"] == "alice"
        capped = TreqClient(reactor, max_bytes=100)
        with pytest.raises(BodyTooLarge):
            yield capped(f"{issuer}/jwks").addTimeout(10, reactor)
        yield capped.close()
    finally:
        yield port.stopListening()


class _Counted(_Json):
    """A JSON document that counts how often it was fetched."""

    def __init__(self, body: Any) -> None:
        super().__init__(body)
        self.fetches = 0

    def render_GET(self, request: Any) -> bytes:
        self.fetches += 1
        return super().render_GET(request)


@pytest_twisted.ensureDeferred
async def test_a_storm_of_unknown_kids_on_the_daemon_costs_one_key_set_fetch(gateway: StartGateway) -> None:
    """On the real daemon with an OIDC issuer, 40 sockets subscribing at once with tokens of 40 unknown kids, then
    10 more one after the other, are each refused 4001 "token signed with an unknown key", and the issuer is
    asked once (one discovery, one key set: the first fetch is shared, and once keys are loaded an unknown kid
    refetches at most once a minute); a token of a known kid still subscribes, without a fetch."""
    from twisted.internet import reactor

    root, well_known = Resource(), Resource()
    root.putChild(b".well-known", well_known)
    base: list[str] = []
    discovery = _Counted(lambda: {"jwks_uri": f"{base[0]}/jwks"})
    keys = _Counted({"keys": [jwk(_rsa_key, "k1")]})
    well_known.putChild(b"openid-configuration", discovery)
    root.putChild(b"jwks", keys)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        base.append(f"http://127.0.0.1:{port.getHost().port}")
        daemon = await gateway(redis=None, overrides={"auth.algorithms": "RS256 HS256",
                                                          "auth.oidc_issuer": base[0]})
        exp = int(reactor.seconds()) + 600
        clients = [await connect(daemon.port) for _ in range(40)]
        for i, client in enumerate(clients):
            client.send_json({"@type": "subscribe", "jwt": jwt.encode(claims(iss=base[0], exp=exp), _rsa_key2,
                                                                      algorithm="RS256", headers={"kid": f"k{i + 2}"})})
        for client in clients:
            assert (await client.next()) == {"@type": "error", "error": "subscribe: token signed with an unknown key"}
            assert (await client.wait_closed())[0] == 4001
        for i in range(10):  # the keys are loaded now: one after the other
            late = await connect(daemon.port)
            answer = await late.subscribe(jwt.encode(claims(iss=base[0], exp=exp), _rsa_key2, algorithm="RS256",
                                                     headers={"kid": f"late{i}"}))
            assert answer == {"@type": "error", "error": "subscribe: token signed with an unknown key"}
        good = await connect(daemon.port)
        answer = await good.subscribe(jwt.encode(claims(iss=base[0], exp=exp), _rsa_key, algorithm="RS256",
                                                 headers={"kid": "k1"}))
        assert answer["@type"] == "subscribed"
        assert (discovery.fetches, keys.fetches) == (1, 1)
    finally:
        await port.stopListening()
