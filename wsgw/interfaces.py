"""The seams of the gateway: what the core needs from sockets, the bus, stores and resolvers."""

from __future__ import annotations

from twisted.internet.defer import Deferred
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
    """Chat rooms and messages (Redis or in memory). Every method returns a Deferred."""

    def find_room(type: str, type_object: str) -> Deferred:
        """The room identified by ``(type, type_object)``, or None."""

    def get_room(room_uuid: str) -> Deferred:
        """The room with that Uuid, or None."""

    def find_or_create_room(type: str, type_object: str, label: str, now: float) -> Deferred:
        """The room identified by ``(type, type_object)``, created if needed; fires ``(room, created)``.

        Two concurrent calls, from any instances, end with one room.
        """

    def touch_user(room_uuid: str, login: str, now: float, stale_before: float) -> Deferred:
        """Mark ``login`` present (last seen ``now``), prune presences older than ``stale_before``.

        Fires ``(room, changed)`` where ``changed`` says ``Users`` changed; ``(None, False)``
        when the room does not exist.
        """

    def remove_user(room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred:
        """Remove ``login`` from ``Users``; with ``idle_since``, only if not seen after it.

        Fires ``(room, changed)``; ``(None, False)`` when the room does not exist.
        """

    def post_message(message: dict, cap: int) -> Deferred:
        """Append ``message`` to its room's history, dropping the oldest beyond ``cap``.

        Fails with NoSuchRoom when ``message["RoomUuid"]`` does not exist.
        """

    def edit_message(room_uuid: str, message_uuid: str, author: str, text: str, updated: str) -> Deferred:
        """Replace the text of a message written by ``author``; the old text is appended to
        ``Activity.items`` as ``{"markdown": old, "updated": updated}``. Fires the new message;
        fails with NoSuchMessage or NotAuthor (and changes nothing)."""

    def delete_message(room_uuid: str, message_uuid: str, author: str) -> Deferred:
        """Delete a message written by ``author``; fires the deleted message; fails with
        NoSuchMessage or NotAuthor (and changes nothing)."""

    def page(room_uuid: str, offset: int, limit: int) -> Deferred:
        """Messages oldest first: walking back from the newest, skip ``offset``, take ``limit``
        (``limit`` 0: all the rest). An unknown room has no messages."""
