"""The seams: the shipped fakes and the real classes provide the interfaces the core relies on."""

from __future__ import annotations

from zope.interface.verify import verifyClass, verifyObject

from wsgw.interfaces import IConnection
from wsgw.testing import RecordingConnection
from wsgw.web.protocols import GatewayProtocol


def test_recording_connection_is_a_connection() -> None:
    """The test fake offers exactly what the core may call on a socket."""
    assert verifyObject(IConnection, RecordingConnection())


def test_gateway_protocol_is_a_connection() -> None:
    """The Autobahn protocol implements IConnection (send, close, abort)."""
    assert verifyClass(IConnection, GatewayProtocol)
