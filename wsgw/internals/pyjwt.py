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
"""

from __future__ import annotations

from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm


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
