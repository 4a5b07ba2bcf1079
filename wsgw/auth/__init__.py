"""Who a client is and what it may see (PROTOCOL.md §2, §3, §4.1), on pyjwt and treq.

``tokens`` verifies JWTs, ``oidc`` keeps an OIDC issuer's signing keys, ``resolvers``
turns claims into an ``Access`` (from the token, or from an HTTP backend),
``nodemeta`` asks a backend for each user's metadata of a node, ``http`` is the
non-blocking HTTP client they share. The core sees only ``ITokenVerifier``,
``IAccessResolver``, ``INodeMetaSource`` and the errors of ``wsgw.access``.
"""
