"""Inbound defences on the real daemon: Origin allow-list, per-IP connection cap, inbound flood close 4029."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support.daemon import StartGateway, token, workspace
from tests.support.rawtcp import UPGRADE, client_frame, exchange, head, raw_connect
from tests.support.waiting import wait_until
from tests.support.wsclient import connect
from wsgw.web.inbound import InboundPolicy, PeerCounts
from wsgw.web.protocols import GatewayProtocol

HOME = workspace("w-home", "home", "ds/home")


def test_origin_matching() -> None:
    """Origins match the allow-list exactly or by wildcard, case-insensitively; no Origin header is allowed."""
    policy = InboundPolicy(origins=("https://cells.example.org", "https://*.example.net"))
    assert policy.origin_allowed("https://cells.example.org")
    assert policy.origin_allowed("HTTPS://Cells.Example.org/")
    assert policy.origin_allowed("https://a.example.net")
    assert not policy.origin_allowed("https://example.net.evil.com")
    assert not policy.origin_allowed("http://cells.example.org")
    assert not policy.origin_allowed("null")
    assert policy.origin_allowed(None)
    assert InboundPolicy().origin_allowed("https://anything")


def test_peer_counts() -> None:
    """The per-address count refuses past the cap and frees a slot on release."""
    peers = PeerCounts()
    assert peers.acquire("a", 2) and peers.acquire("a", 2)
    assert not peers.acquire("a", 2)
    assert peers.acquire("b", 2)
    peers.release("a")
    assert peers.acquire("a", 2)
    for _ in range(2):
        peers.release("a")
    assert "a" not in peers._counts and peers.acquire("a", 0)


@pytest_twisted.ensureDeferred
async def test_origin_allow_list_on_the_wire(gateway: StartGateway) -> None:
    """A browser from an origin not on the list is refused at the handshake (counted); listed origins and
    non-browsers get in."""
    extra = "[websocket]\nallowed_origins = https://cells.example.org\n"
    daemon = await gateway(redis=None, extra=extra)
    with pytest.raises(ConnectionError):
        await connect(daemon.port, origin="https://evil.example.com")
    assert daemon.service.public_guard.refused["origin"] == 1  # wsgw_connections_refused_total{limit="origin"}
    good = await connect(daemon.port, origin="https://cells.example.org")
    assert (await good.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    plain = await connect(daemon.port, "/chat")
    assert (await plain.subscribe(token("bob")))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_per_ip_cap_across_both_endpoints(gateway: StartGateway) -> None:
    """With a cap of 2 per address, a third socket (on either endpoint) is refused until one closes."""
    daemon = await gateway(redis=None, extra="[websocket]\nmax_connections_per_ip = 2\n")
    first = await connect(daemon.port, "/ws")
    await connect(daemon.port, "/chat")
    with pytest.raises(ConnectionError):
        await connect(daemon.port, "/ws")
    first.sendClose(1000)
    await first.wait_closed()
    again = await connect(daemon.port, "/ws")
    assert (await again.subscribe(token("alice")))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_inbound_flood_closes_4029_and_spares_others(gateway: StartGateway) -> None:
    """A client sending faster than the inbound limit gets an error and close 4029; another client still gets events."""
    extra = "[websocket]\ninbound_rate = 5\ninbound_burst = 5\n"
    daemon = await gateway(redis=None, extra=extra)
    calm = await connect(daemon.port)
    await calm.subscribe(token("alice", [HOME]))
    flood = await connect(daemon.port)
    for _ in range(50):
        flood.send_json({"@type": "ping"})
    error = await flood.next()
    assert error == {"@type": "error", "error": "too many frames: slow down"}
    assert (await flood.wait_closed())[0] == 4029
    assert daemon.service.gateway.closes[4029] == 1
    import json

    await daemon.service.bus.publish("tree", json.dumps({"Target": {"Uuid": "n", "Path": "ds/home/f"}}).encode())
    assert (await calm.next())["Target"]["Path"] == "home/f"


@pytest_twisted.ensureDeferred
async def test_an_oversized_frame_is_refused_not_processed(gateway: StartGateway) -> None:
    """A valid subscribe over the /ws size limit gets error + 1009 and is never acted on."""
    daemon = await gateway(redis=None)
    client = await connect(daemon.port)
    padded = token("alice", [HOME])  # a valid token ...
    client.send_json({"@type": "subscribe", "jwt": padded, "pad": "x" * 3000})  # ... in a 3 KB frame
    assert (await client.next())["@type"] == "error"
    assert (await client.wait_closed())[0] == 1009
    assert daemon.service.gateway.subscribes_accepted == 0


@pytest_twisted.ensureDeferred
async def test_frames_after_a_refusal_are_ignored(gateway: StartGateway) -> None:
    """After a refused subscribe the socket is closing: a valid subscribe sent right behind it is not accepted."""
    daemon = await gateway(redis=None)
    client = await connect(daemon.port)
    client.send_json({"@type": "subscribe", "jwt": "garbage"})
    client.send_json({"@type": "subscribe", "jwt": token("alice", [HOME])})
    assert (await client.next())["@type"] == "error"
    assert (await client.wait_closed())[0] == 4001
    assert daemon.service.gateway.subscribes_accepted == 0


@pytest_twisted.ensureDeferred
async def test_many_unauthenticated_sockets_are_closed_at_the_auth_timeout(gateway: StartGateway) -> None:
    """Sockets that never subscribe are all closed with 4001 at the auth timeout; a subscribed one stays."""
    daemon = await gateway(redis=None, overrides={"websocket.auth_timeout": "0.5"})
    idle = [await connect(daemon.port, "/ws" if i % 2 else "/chat") for i in range(40)]
    member = await connect(daemon.port)
    await member.subscribe(token("alice", [HOME]))
    for client in idle:
        assert await client.wait_closed() == (4001, "authentication timeout")
    (left,) = daemon.service.gateway.table
    assert left.access is not None and left.access.login == "alice"



@pytest_twisted.ensureDeferred
async def test_a_ping_flooder_leaves_no_unread_bytes_behind(gateway: StartGateway,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that sends 64 KB of pings at once and never reads is closed 4029 after inbound_burst of them; the
    rest of what was read goes with the socket, not kept by the closed protocol until a garbage collection (the
    soak's flooders, ~1,500 in 12 s, made the daemon hold 86 MB that way: issue 11, section 4)."""
    protocols: list[GatewayProtocol] = []  # kept alive here: what a closed one still holds is what is asserted
    made = GatewayProtocol.connectionMade
    monkeypatch.setattr(GatewayProtocol, "connectionMade", lambda self: (protocols.append(self), made(self))[1])
    daemon = await gateway(redis=None)
    raw = await raw_connect(daemon.port)
    raw.send(UPGRADE)
    await wait_until(lambda: b"\r\n\r\n" in raw.received, "the upgrade answer")
    assert raw.received.startswith(b"HTTP/1.1 101")
    raw.transport.pauseProducing()  # type: ignore[union-attr]  # never reads again
    raw.send(client_frame(0x9, b"p" * 125) * 500)
    await wait_until(lambda: daemon.service.public_guard.open == 0, "the server to close the socket")
    raw.close()
    assert daemon.service.gateway.closes[4029] == 1
    assert len(protocols) == 1 and protocols[0].state == GatewayProtocol.STATE_CLOSED
    assert len(protocols[0].data) == 0  # Autobahn's receive buffer: up to a whole read (64 KiB) of pings


@pytest_twisted.ensureDeferred
async def test_a_null_origin_is_judged_by_the_allow_list_like_any_other(gateway: StartGateway) -> None:
    """``Origin: null`` (a sandboxed page, a file: URL) is refused 403 and counted when an allow-list is set,
    as any origin not on it (Autobahn refused it 400 first, uncounted); it gets in when no list is set."""
    request = UPGRADE.replace(b"\r\n\r\n", b"\r\nOrigin: null\r\n\r\n")
    listed = await gateway(redis=None, extra="[websocket]\nallowed_origins = https://cells.example.org\n")
    status, _ = head(await exchange(listed.port, request))
    assert status.startswith(b"HTTP/1.1 403"), status
    assert listed.service.public_guard.refused["origin"] == 1
    open_to_all = await gateway(redis=None)
    raw = await raw_connect(open_to_all.port)
    raw.send(request)
    await wait_until(lambda: b"\r\n\r\n" in raw.received, "the answer to the upgrade")
    assert raw.received.startswith(b"HTTP/1.1 101"), raw.received
    raw.close()
