"""A closed socket leaves no reference cycle behind: reference counting frees its protocol, session, flow and
outbound at once, so the daemon may freeze long-lived objects (``gc.freeze``) without leaking the sockets that
close after (bench/RESULTS.md, "Memory and GC"; issue 13, goal 4)."""

from __future__ import annotations

import gc

import pytest_twisted

from tests.support.daemon import Daemon, StartGateway, token, workspace
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect
from wsgw.flow import Flow
from wsgw.sessions import Session
from wsgw.web.outbound import Outbound
from wsgw.web.protocols import GatewayProtocol

_KINDS = (GatewayProtocol, Session, Flow, Outbound)


def _alive() -> dict[str, int]:
    """Server-side objects of sockets in memory, reachable or not (the collector is off: cycles stay)."""
    counts = dict.fromkeys((k.__name__ for k in _KINDS), 0)
    for o in gc.get_objects():
        if isinstance(o, _KINDS):
            counts[type(o).__name__ if not isinstance(o, GatewayProtocol) else "GatewayProtocol"] += 1
    return counts


async def _subscribed(daemon: Daemon, path: str, login: str) -> Client:
    client = await connect(daemon.port, path)
    await client.subscribe(token(login, [workspace("ws-a", "a", "pydiods1/a")]))
    return client


@pytest_twisted.ensureDeferred
async def test_closed_sockets_are_freed_by_reference_counting_alone(gateway: StartGateway) -> None:
    """With the collector off, /ws and /chat sockets closed by the client, closed by the server (a bad
    frame: 1003) and dropped (a client that aborts its TCP connection) leave none of their protocol, session,
    flow or outbound objects in memory."""
    daemon = await gateway()
    table = daemon.service.gateway.table
    gc.unfreeze()  # (whatever an earlier test froze is counted too)
    gc.collect()
    before = _alive()
    gc.disable()
    try:
        clients = [await _subscribed(daemon, "/ws" if i % 2 else "/chat", f"u{i}") for i in range(12)]
        assert len(table) == 12
        for i, client in enumerate(clients):
            if i % 3 == 0:
                client.sendClose()
            elif i % 3 == 1:
                client.sendMessage(b"not json")  # the server closes it 1003
            else:
                client.transport.abortConnection()
        await wait_until(lambda: len(table) == 0, "every session closed")
        await wait_until(lambda: all(c.transport is None or not c.transport.connected for c in clients),
                         "every client socket gone")
        try:
            await wait_until(lambda: _alive() == before, "nothing of the closed sockets left", timeout=3)
        except AssertionError:
            assert _alive() == before  # (says what is left)
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_sockets_frozen_while_open_are_freed_when_they_close(gateway: StartGateway) -> None:
    """The daemon's policy (``wsgw.gcpolicy``): sockets frozen (``gc.freeze``) while open leave the permanent
    generation when they close, and nothing of them is left once it is thawed."""
    daemon = await gateway()
    table = daemon.service.gateway.table
    gc.unfreeze()  # (whatever an earlier test froze is counted too)
    gc.collect()
    before = _alive()
    gc.freeze()
    try:
        frozen_idle = gc.get_freeze_count()
        clients = [await _subscribed(daemon, "/ws" if i % 2 else "/chat", f"u{i}") for i in range(40)]
        gc.collect()
        gc.freeze()
        added = gc.get_freeze_count() - frozen_idle
        assert added > 40 * 20  # (each socket is dozens of tracked objects)
        for client in clients:
            client.sendClose()
        await wait_until(lambda: len(table) == 0, "every session closed")
        await wait_until(lambda: all(c.transport is None or not c.transport.connected for c in clients),
                         "every client socket gone")
        clients.clear()
        # each server socket is ~50 tracked objects (the in-process clients' objects, frozen too, partly stay)
        await wait_until(lambda: gc.get_freeze_count() <= frozen_idle + added - 40 * 30, "the frozen sockets freed")
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        assert _alive() == before  # thawed and not collected: nothing of a closed socket was left frozen
    finally:
        gc.enable()
