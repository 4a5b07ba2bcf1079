"""Who a client is and what it may see (PROTOCOL.md §2, §3), on pyjwt and treq.

``tokens`` verifies JWTs, ``oidc`` keeps an OIDC issuer's signing keys, ``resolvers``
turns claims into an ``Access`` (from the token, or from an HTTP backend), ``http``
is the non-blocking HTTP GET they share. The core sees only ``ITokenVerifier``,
``IAccessResolver`` and the errors of ``wsgw.access``.
"""
