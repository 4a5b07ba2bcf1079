"""The token verifier's shortcuts (bench/RESULTS.md "Connect path") refuse exactly what it refused without them.

An HMAC secret is prepared once per secret (``wsgw.internals.pyjwt``), and a header segment read before is not
read again: a rekey, an expiry, a malformed rest of the token and a secret PyJWT refuses still decide as they did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsgw.access import AuthError
from wsgw.auth.tokens import HEADER_CACHE, TokenVerifier

fired = SynchronousTestCase().successResultOf
failed = SynchronousTestCase().failureResultOf

SECRET = b"0123456789abcdef" * 4 + b"-cost-secret"
OTHER = b"fedcba9876543210" * 4 + b"-next-secret"
NOW = 1_700_000_000.0


def clock_at(t: float = NOW) -> Clock:
    c = Clock()
    c.advance(t)
    return c


def verifier(clock: Clock | None = None, secret: bytes = SECRET) -> TokenVerifier:
    return TokenVerifier(clock or clock_at(), algorithms=["HS256", "HS512"], hmac_secret=secret)


def token(key: bytes = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **over: Any) -> str:
    claims: dict[str, Any] = {"name": "alice", "sub": "u-1", "exp": int(NOW) + 3600, **over}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def refused(d: Deferred[Any]) -> str:
    return failed(d, AuthError).getErrorMessage()


def outcome(v: TokenVerifier, tok: str) -> str:
    """``ok <login>`` or the refusal."""
    result: list[str] = []
    v.verify(tok).addCallbacks(lambda c: result.append(f"ok {c['name']}"),
                               lambda f: result.append(f.trap(AuthError) and f.getErrorMessage()))
    return result[0]


def test_a_secret_is_prepared_once_and_the_new_one_once_after_a_rekey(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = {login: token(name=login) for login in "abc"}
    hs512, old, d, e, other = token(alg="HS512"), token(), token(OTHER, name="d"), token(OTHER, name="e"), token(OTHER)
    prepared: list[bytes] = []
    real = HMACAlgorithm.prepare_key
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", lambda self, key: prepared.append(key) or real(self, key))
    v = verifier()
    for login, tok in tokens.items():
        assert fired(v.verify(tok))["name"] == login
    assert fired(v.verify(hs512))["name"] == "alice"
    assert prepared == [SECRET, SECRET]  # once per algorithm
    v.rekey(OTHER, None)
    assert refused(v.verify(old)) == "invalid token signature"  # the old secret: refused at once
    assert fired(v.verify(d))["name"] == "d"
    assert fired(v.verify(e))["name"] == "e"
    assert prepared == [SECRET, SECRET, OTHER]
    v.rekey(SECRET, None)
    assert refused(v.verify(other)) == "invalid token signature"
    assert fired(v.verify(old))["name"] == "alice"


def test_a_secret_pyjwt_refuses_is_refused_every_time() -> None:
    """A secret that is a PEM key is not an HMAC secret (PyJWT's InvalidKeyError): nothing of it is remembered."""
    pem = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    v = verifier(secret=pem)
    forged = _raw({"alg": "HS256", "typ": "JWT"}, pem)
    assert refused(v.verify(forged)) == "no usable key for HS256 tokens"
    assert refused(v.verify(forged)) == "no usable key for HS256 tokens"


def test_no_claim_is_remembered_a_token_expires_on_time() -> None:
    clock = clock_at()
    v = verifier(clock)
    tok = token(exp=int(NOW) + 60)
    assert fired(v.verify(tok))["name"] == "alice"
    clock.advance(60 + 30)  # past exp + leeway
    assert refused(v.verify(tok)) == "token expired"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw(header: dict[str, Any], key: bytes = SECRET) -> str:
    """A token built by hand, with a header PyJWT would not write."""
    claims = {"name": "alice", "sub": "u-1", "exp": int(NOW) + 3600}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def _mangled(good: str) -> list[str]:
    head, payload, sig = good.split(".")
    return [
        f"{head}.{payload}",  # two segments
        f"{head}.{payload}.{sig}.x",  # four
        f"{head}.{payload}=.{sig}",  # bad padding
        f"{head}.{payload[:-1]}*.{sig}",  # not base64url
        f"{head}.{_b64(b'not json')}.{sig}",
        f"{head}.{_b64(b'[1, 2]')}.{sig}",
        f"{head}.{payload}.{sig[:-2]}",  # another signature
        f"{head}.{_b64(json.dumps({'name': 'mallory', 'exp': int(NOW) + 3600}).encode())}.{sig}",
        f"{head}..{sig}",
        f"{head}.",
        head,
    ]


@pytest.mark.parametrize("index", range(11))
def test_a_header_read_before_lets_nothing_through_that_a_fresh_verifier_refuses(index: int) -> None:
    """Each mangling of a valid token after its header: the verifier that read that header before (from a valid
    token) says what a fresh one says."""
    warm = verifier()
    good = token()
    assert outcome(warm, good) == "ok alice"
    bad = _mangled(good)[index]
    expected = outcome(verifier(), bad)
    assert expected != "ok alice"
    assert outcome(warm, bad) == expected


def test_headers_remembered_are_bounded_and_refused_ones_are_not_remembered() -> None:
    v = verifier()
    for i in range(3 * HEADER_CACHE):
        assert outcome(v, token(headers={"n": i})) == "ok alice"
        assert len(v._hmac_headers) <= HEADER_CACHE
    for bad in (token(alg="HS384"), _raw({"alg": "HS256", "kid": 7}), _raw({"alg": "HS256", "crit": ["exp"]})):
        assert outcome(v, bad) == outcome(verifier(), bad) != "ok alice"
        assert outcome(v, bad) == outcome(verifier(), bad)
    assert all(alg in ("HS256", "HS512") for alg in v._hmac_headers.values())
