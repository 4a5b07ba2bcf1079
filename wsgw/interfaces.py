"""The seams of the gateway: what the core needs from sockets, the bus, stores and resolvers."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IConnection(Interface):
    """One client socket as the core sees it (the Autobahn protocol implements it)."""

    peer = Attribute("A printable description of the remote end, for logs.")

    def send(payload: bytes) -> None:
        """Queue one text frame; ``payload`` is UTF-8 encoded JSON, serialized once by the caller."""

    def close(code: int, reason: str) -> None:
        """Close the socket with a WebSocket close code and reason."""

    def abort() -> None:
        """Drop the TCP connection at once (a peer that did not finish the close handshake in time)."""


class IBus(Interface):
    """The event bus: Redis pub/sub in production, in-process when no Redis is configured."""

    connected = Attribute("True while the bus can deliver and publish.")
    state = Attribute("A short human readable state, for /healthz (e.g. 'connected', 'connecting').")

    def listen(callback) -> None:
        """Deliver every message received on a subscribed topic as ``callback(topic, payload: bytes)``.

        ``topic`` is the logical topic name (a key of the configured topic map), not the channel.
        """

    def publish(topic: str, payload: bytes):
        """Publish ``payload`` on ``topic``; returns a Deferred that fires when it has been handed to the bus."""


class IAccessResolver(Interface):
    """Turns verified token claims into the session's Access."""

    def resolve(token: str, claims: dict):
        """Return a Deferred firing with an ``wsgw.access.Access``, or failing with ``AccessError``."""


class ITokenVerifier(Interface):
    """Verifies a JWT."""

    def verify(token: str):
        """Return a Deferred firing with the verified claims dict, or failing with ``AuthError``."""


class IChatStore(Interface):
    """Chat rooms and messages (Redis or in memory)."""
