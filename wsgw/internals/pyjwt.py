"""What wsgw relies on inside PyJWT, beyond its public API (pinned by tests/test_internals_connect.py).

- ``PyJWT._jws``, the ``PyJWS`` a ``PyJWT`` verifies signatures with (its
  ``unregister_algorithm`` and ``register_algorithm`` are public);
- ``HMACAlgorithm.prepare_key(key)`` is a pure function of the secret, and
  PyJWT calls it for every token it verifies: it checks that the secret is not
  a PEM, SSH or DER key (the DER check has ``cryptography`` parse it twice, each
  parse failing with an exception) nor a JWK, which was about half the CPU of
  verifying an HS256 token (bench/RESULTS.md "Connect path").
  ``prepare_keys_once(decoder)`` gives ``decoder`` HMAC algorithms that
  remember the last secret they prepared (by identity: the verifier holds one
  ``bytes`` object per secret, and a rekey hands a new one) and its prepared
  form; a secret refused (``InvalidKeyError``) is refused again every time.
- ``PyJWS._decode_base64url_segment(segment, name)``, a static method PyJWS
  calls through ``self`` for each of a token's three segments: it checks the
  base64url alphabet one character at a time in Python and re-encodes the
  result to check it is canonical (4 % of a connect storm's CPU, bench/RESULTS.md
  "Connect path", Part 2). ``decode_segments_fast(decoder)`` gives ``decoder``'s
  PyJWS ``decode_segment``, which accepts and refuses exactly the same segments
  (the alphabet deleted: nothing may be left, the last character's unused bits for
  canonical form) with the same ``DecodeError``, pinned against PyJWT's own.
- ``json.loads``, which ``PyJWS._load`` (the header) and ``PyJWT._decode_payload`` (the claims) call through their
  modules' ``json``: ``json_loads_fast()`` gives both modules a ``json`` whose ``loads`` of bytes is
  ``wsgw.frames.decode`` (the same value or exception, from orjson when it can; bench/RESULTS.md "Connect path",
  part 4), everything else the standard module's.
"""

from __future__ import annotations

import binascii
import json
import types
from typing import Any

import jwt
import jwt.api_jws
import jwt.api_jwt
from jwt.algorithms import HMACAlgorithm

from wsgw.frames import decode

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # (checked by deleting it: C per byte)
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # base64url to base64, as base64.urlsafe_b64decode does
# the last character of a segment of 4k+2 (4k+3) characters holds 4 (2) unused bits, zero in canonical form
_CANONICAL_LAST = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}


class PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, preparing each secret once (see the module docstring)."""

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._raw: object = None
        self._prepared: bytes = b""

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._raw:
            return self._prepared
        prepared = super().prepare_key(key)  # raises InvalidKeyError for a secret that is not one
        self._raw, self._prepared = key, prepared
        return prepared


def prepare_keys_once(decoder: jwt.PyJWT) -> None:
    """Replace the HMAC algorithms ``decoder`` verifies with by ``PreparedHMAC``s (those it has: HS256, HS384,
    HS512 by default)."""
    jws: jwt.PyJWS = decoder._jws  # (pinned by tests/test_internals_connect.py)
    for alg in jws.get_algorithms():
        current = jws.get_algorithm_by_name(alg)
        if type(current) is HMACAlgorithm:
            jws.unregister_algorithm(alg)
            jws.register_algorithm(alg, PreparedHMAC(current.hash_alg))


def decode_segment(segment: bytes, name: str) -> bytes:
    """PyJWS's ``_decode_base64url_segment`` (PyJWT 2.x): the bytes of a base64url ``segment`` of a token, up to
    two ``=`` of padding accepted; raises ``jwt.DecodeError("Invalid <name> padding")`` for anything else."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    rem = len(stripped) % 4
    if (padding > 2 or (padding and len(segment) % 4 != 0) or rem == 1 or stripped.translate(None, _ALPHABET)
            or (rem and stripped[-1] not in _CANONICAL_LAST[rem])):
        raise jwt.DecodeError(f"Invalid {name} padding")
    # base64.urlsafe_b64decode without its Python layers (every byte is of the alphabet: nothing for it to drop)
    return binascii.a2b_base64((stripped + b"=" * (-rem % 4)).translate(_TO_STANDARD))


def decode_segments_fast(decoder: jwt.PyJWT) -> None:
    """Give ``decoder``'s PyJWS ``decode_segment`` in place of its ``_decode_base64url_segment`` (module docstring)."""
    decoder._jws._decode_base64url_segment = decode_segment  # type: ignore[method-assign]


def _loads(text: Any, **kwargs: Any) -> Any:
    return decode(text) if not kwargs and isinstance(text, bytes) else json.loads(text, **kwargs)


FAST_JSON = types.SimpleNamespace(**{name: value for name, value in vars(json).items() if not name.startswith("__")})
"""The ``json`` PyJWT's two modules see after ``json_loads_fast``: the standard module's names, ``loads`` faster."""
FAST_JSON.loads = _loads


def json_loads_fast() -> None:
    """Make PyJWT read a token's header and claims with ``FAST_JSON.loads`` (module docstring); idempotent."""
    jwt.api_jws.json = FAST_JSON  # type: ignore[assignment]
    jwt.api_jwt.json = FAST_JSON  # type: ignore[assignment]
