"""The WebSocket upgrade leaves no garbage cycle behind: reference counting frees the HTTP channel it took over."""

from __future__ import annotations

import gc

import pytest_twisted
from twisted.web.http import HTTPChannel

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect


def _orphan_channels() -> int:
    """HTTP channels whose transport was taken over by a WebSocket protocol, still in memory."""
    return sum(1 for o in gc.get_objects() if isinstance(o, HTTPChannel) and o.transport is None)


@pytest_twisted.ensureDeferred
async def test_upgraded_connections_leave_no_channel_for_the_cycle_collector(gateway: StartGateway) -> None:
    """With the cycle collector off, three upgraded and subscribed sockets leave no taken-over HTTP channel alive."""
    daemon = await gateway()
    clients = []
    gc.collect()
    before = _orphan_channels()
    gc.disable()
    try:
        for i in range(3):
            client = await connect(daemon.port, "/ws")
            await client.subscribe(token(f"u{i}", [workspace("ws-a", "a", "pydiods1/a")]))
            clients.append(client)
        assert _orphan_channels() == before
    finally:
        gc.enable()
        for client in clients:
            client.sendClose()
            await client.wait_closed()
