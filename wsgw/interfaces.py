"""The seams of the gateway: what the core needs from sockets, endpoints, the bus, stores and resolvers.

Adapters (Autobahn protocols, the Redis bus, pyjwt, the HTTP resolver, the
Redis chat store) provide these; the core only ever sees these interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from wsgw.access import Access, Identity
    from wsgw.revocations import Revocation
    from wsgw.sessions import Session


class IConnection(Interface):
    """One client socket as the core sees it (``wsgw.web.protocols.GatewayProtocol`` implements it)."""

    peer = Attribute("A printable description of the remote end, for logs.")

    def write(payload: bytes) -> None:
        """Write one text frame now; ``payload`` is UTF-8 encoded JSON, serialized once by the caller.

        Only the session's ``wsgw.flow.Flow`` calls it, and only while the connection is not paused: the
        connection calls ``flow.pause()`` when its buffers are full (possibly during this call) and
        ``flow.resume()`` when they drained. After the close frame it writes nothing.
        """

    def close(code: int, reason: str) -> bool:
        """Start the closing handshake with a close code (PROTOCOL.md §6) and a reason (cut to 123 bytes of UTF-8
        on a character boundary).

        Returns whether this call started it (False when the socket was closing or closed already).
        """

    def abort() -> None:
        """Drop the TCP connection at once (a peer that did not finish the close handshake in time)."""


class IEndpoint(Interface):
    """What one WebSocket path (``/ws`` events, ``/chat``) does with its sessions; the gateway talks to it.

    The gateway owns the session's life (open, subscribe and unsubscribe, timers, close) and calls
    these in that order; the endpoint owns what its sessions receive.
    """

    name = Attribute("The endpoint's name in logs and metrics labels: 'ws' or 'chat'.")

    def opened(session: Session) -> None:
        """A socket finished its opening handshake on this endpoint."""

    def subscribe(session: Session, access: Access) -> None:
        """The session's token was verified and its access resolved: set ``session.access``, replacing any."""

    def unsubscribe(session: Session) -> None:
        """The client unsubscribed: clear ``session.access``; the socket stays open and receives nothing."""

    def receive(session: Session, frame: dict[str, Any], size: int = 0) -> Deferred[None] | None:
        """A client frame other than subscribe and unsubscribe (``size``: its length on the wire, in bytes);
        a Deferred when it is handled later."""

    def closed(session: Session) -> None:
        """The socket is gone: forget everything about the session."""


class IBus(Interface):
    """The event bus: Redis pub/sub in production, in-process when no Redis is configured."""

    connected = Attribute("True while the bus can deliver and publish.")
    state = Attribute("A short human readable state, for /healthz (e.g. 'connected', 'connecting').")
    topics = Attribute("Mapping[str, str]: logical topic -> channel (a copy).")

    def listen(callback: Callable[[str, bytes], object]) -> None:
        """Deliver every message received on a subscribed topic as ``callback(topic, payload: bytes)``.

        ``topic`` is the logical topic name (a key of the configured topic map), not the channel.
        """

    def publish(topic: str, payload: bytes) -> Deferred[Any]:
        """Publish ``payload`` on ``topic``; fires once the bus took it (ValueError for an unknown topic)."""

    def whenConnected() -> Deferred[Any]:
        """Fires once the bus can deliver and publish (now, or after the next (re)connect)."""

    def whenSubscribed() -> Deferred[Any]:
        """Fires once every topic is subscribed (now, or after the next (re)connect)."""


class IAccessResolver(Interface):
    """Turns verified token claims into the session's Access (PROTOCOL.md §3)."""

    refreshes = Attribute("Whether ``refresh`` can ask a source beyond the token (the http resolver): the gateway "
                          "then keeps each session's token to re-derive its access (PROTOCOL.md §3.1).")

    def resolve(token: str, claims: Mapping[str, Any]) -> Deferred[Access]:
        """Fires with an ``wsgw.access.Access``, or fails with ``AccessError``."""

    def refresh(token: str, who: Identity) -> Deferred[Access]:
        """The access of ``token`` now, past any cache (only called when ``refreshes``); fails as ``resolve``."""

    def invalidate() -> None:
        """Access may have changed for anyone: forget cached answers (an IDM event, PROTOCOL.md §3.1)."""


class INodeMetaSource(Interface):
    """Per-user metadata of a node (PROTOCOL.md §4.1, per-user Target): what Cells re-reads in each user's
    context, e.g. a bookmark or user meta, which the tree service's events never carry."""

    def lookup(node: Mapping[str, str], logins: Sequence[str]) -> Deferred[dict[str, dict[str, str]]]:
        """``node`` is ``{"Uuid","Path"}`` (the internal path); fires with, per login, MetaStore entries (values
        JSON-encoded strings) to merge into that login's copy of the node (a login left out: none); fails
        when the source cannot answer. Cancelling it abandons the request."""


class ITokenVerifier(Interface):
    """Verifies a JWT (PROTOCOL.md §2)."""

    def verify(token: str) -> Deferred[dict[str, Any]]:
        """Fires with the verified claims (``name`` set to the login), or fails with ``AuthError``."""


class IRevocationStore(Interface):
    """Where revocations outlive an instance (PROTOCOL.md §3.1): Redis under ``[auth] revocation_prefix``, or
    nowhere on the embedded bus (the in-memory ``wsgw.revocations.Revocations`` is then the only copy)."""

    def load() -> Deferred[list[Revocation]]:
        """Every revocation stored and not expired yet; fails when the store cannot answer."""

    def save(revocation: Revocation, expires: float) -> Deferred[None]:
        """Keep ``revocation`` until ``expires`` (unix seconds), unless a later ``before`` is kept for its kind and
        key already (the later one stays); fails when the store cannot answer (then it may or may not be kept)."""


class IChatStore(Interface):
    """Chat rooms and messages (PROTOCOL.md §5.1), in Redis or in memory. Every method returns a Deferred.

    Rooms and messages are the JSON-ready dicts of ``wsgw.chat.model``; times come from the caller's clock.
    Failures: ``wsgw.chat.model.StoreUnavailable`` when the store cannot be reached (nothing changed),
    and the ones each method names. A change (every method but the reads ``find_room``, ``get_room`` and
    ``page``) may also fail with ``wsgw.chat.model.OutcomeUnknown`` when it was sent and no answer came: its
    ``outcome`` fires once the store answered (the store sends it again, idempotently, until then); the
    ``changed`` of a presence change's outcome is True (a run not heard may have changed it).
    """

    def find_room(type: str, type_object: str) -> Deferred[Any]:
        """The room identified by ``(type, type_object)``, or None."""

    def get_room(room_uuid: str) -> Deferred[Any]:
        """The room with that Uuid, or None."""

    def find_or_create_room(type: str, type_object: str, label: str, now: float, creator: str = "",
                            max_created: int = 0) -> Deferred[Any]:
        """The room identified by ``(type, type_object)``, created if needed; fires ``(room, created)``.

        Two concurrent calls, from any instances, end with one room. A room this call creates counts for
        ``creator`` (none when empty); when ``creator`` has created ``max_created`` (> 0) rooms already, the call
        fails with TooManyRooms instead and creates nothing (finding an existing room never does).
        """

    def touch_user(room_uuid: str, login: str, now: float, until: float) -> Deferred[Any]:
        """Mark ``login`` present (last seen ``now``) until ``until`` at least (its presence deadline);
        neither ever moves back when calls from several instances arrive out of order.

        Fires ``(room, changed)`` where ``changed`` says ``Users`` changed; ``(None, False)``
        when the room does not exist.
        """

    def remove_user(room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred[Any]:
        """Remove ``login`` from ``Users``; with ``idle_since``, only if not seen after it.

        Fires ``(room, changed)``; ``(None, False)`` when the room does not exist.
        """

    def expire_users(now: float, limit: int) -> Deferred[Any]:
        """Remove the presences whose deadline (``touch_user``'s ``until``) is ``now`` or earlier: at most
        ``limit`` of them, earliest deadline first, whichever instance set them (PROTOCOL.md §5.2: the
        presence a dead instance left behind ends here). Each presence is removed by one call only, also
        when several instances sweep at once.

        Fires ``(rooms, count)``: the rooms whose ``Users`` changed, each once and as stored after the
        call, and how many presences were due (``count == limit``: more may be due).
        """

    def post_message(message: dict[str, Any], cap: int) -> Deferred[None]:
        """Append ``message`` to its room's history, dropping the oldest beyond ``cap``; a message whose
        ``Uuid`` is in the history already changes nothing (idempotent on the Uuid).

        Fails with NoSuchRoom when ``message["RoomUuid"]`` does not exist.
        """

    def get_message(room_uuid: str, message_uuid: str) -> Deferred[Any]:
        """The stored message, or None (no such message in that room)."""

    def edit_message(room_uuid: str, message_uuid: str, author: str, text: str, updated: str,
                     max_edits: int = 0) -> Deferred[Any]:
        """Replace the text of a message written by ``author``; the old text is appended to
        ``Activity.items`` as ``{"markdown": old, "updated": updated}`` (the same text: nothing changes, so a
        repeated edit adds no item). Fires the new message; fails with NoSuchMessage, NotAuthor, or TooManyEdits
        when ``Activity.items`` holds ``max_edits`` (> 0) entries already (and changes nothing)."""

    def delete_message(room_uuid: str, message_uuid: str, author: str) -> Deferred[Any]:
        """Delete a message written by ``author``; fires the deleted message; fails with
        NoSuchMessage or NotAuthor (and changes nothing)."""

    def page(room_uuid: str, offset: int, limit: int) -> Deferred[Any]:
        """Messages oldest first: walking back from the newest, skip ``offset``, take ``limit``
        (``limit`` 0: all the rest). An unknown room has no messages."""
