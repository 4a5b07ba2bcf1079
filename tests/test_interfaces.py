"""The seams: the shipped fakes and the real classes provide the interfaces the core relies on."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from wsgw.bus.memory import MemoryBus
from wsgw.bus.redis import RedisBus
from wsgw.chat.memory_store import MemoryChatStore
from wsgw.chat.redis_store import RedisChatStore
from wsgw.chat.service import ChatService
from wsgw.control import MemoryRevocationStore
from wsgw.events.endpoint import EventsEndpoint
from wsgw.interfaces import IBus, IChatStore, IConnection, IEndpoint, IRevocationStore
from wsgw.redis.revocations import RedisRevocationStore
from wsgw.sessions import SessionTable
from wsgw.testing import RecordingConnection
from wsgw.web.protocols import GatewayProtocol


def test_recording_connection_is_a_connection() -> None:
    """The test fake offers exactly what the core may call on a socket."""
    assert verifyObject(IConnection, RecordingConnection())


def test_gateway_protocol_is_a_connection() -> None:
    """The Autobahn protocol implements IConnection (send, close, abort)."""
    assert verifyClass(IConnection, GatewayProtocol)


def test_both_endpoints_are_endpoints() -> None:
    """/ws (EventsEndpoint) and /chat (ChatService) are what the gateway talks to, through IEndpoint."""
    clock = Clock()
    assert verifyObject(IEndpoint, EventsEndpoint(SessionTable(), clock))
    assert verifyObject(IEndpoint, ChatService(clock, MemoryChatStore(), lambda payload: None))  # type: ignore[arg-type,return-value]


def test_both_buses_and_both_stores_provide_their_seams() -> None:
    """The embedded and the Redis bus are IBus (topics, whenConnected, whenSubscribed included); both chat stores
    are IChatStore."""
    assert verifyObject(IBus, MemoryBus({"tree": "t"}))
    assert verifyClass(IBus, RedisBus)
    assert verifyObject(IChatStore, MemoryChatStore())
    assert verifyClass(IChatStore, RedisChatStore)


def test_both_revocation_stores_are_revocation_stores() -> None:
    """The embedded mode's store and the Redis one are IRevocationStore (load, save)."""
    assert verifyObject(IRevocationStore, MemoryRevocationStore())
    assert verifyClass(IRevocationStore, RedisRevocationStore)
