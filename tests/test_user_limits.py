"""What one login may hold on the real daemon (issue 11 §4): its subscribed sockets, /ws and /chat together."""

from __future__ import annotations

import pytest_twisted

from tests.support.daemon import StartGateway, scrape, token, value, workspace
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

HOME = workspace("w-home", "home", "ds/home")
ADMIN = "tcp:0:interface=127.0.0.1"


async def subscribed(port: int, login: str, path: str = "/ws") -> Client:
    client = await connect(port, path)
    answer = await client.subscribe(token(login, [HOME]))
    assert answer["@type"] == "subscribed", answer
    return client


@pytest_twisted.ensureDeferred
async def test_one_socket_past_the_cap_of_a_login_is_refused_4029_and_counted(gateway: StartGateway) -> None:
    """With max_connections_per_user = 3, alice's third socket (/ws and /chat count together) is accepted and her
    fourth gets an error frame and 4029, counted under ``too_many_sockets``; a refresh of a counted socket, and
    another login, still subscribe; a socket that closes or unsubscribes frees its place."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"websocket.max_connections_per_user": "3"})
    alice = [await subscribed(daemon.port, "alice"), await subscribed(daemon.port, "alice", "/chat"),
             await subscribed(daemon.port, "alice")]
    extra = await connect(daemon.port, "/chat")
    answer = await extra.subscribe(token("alice"))
    assert answer == {"@type": "error", "error": "subscribe: too many sockets for this user (at most 3)"}
    assert (await extra.wait_closed())[0] == 4029
    assert (await alice[0].subscribe(token("alice", [HOME])))["@type"] == "subscribed"  # a refresh: not one more
    bob = await subscribed(daemon.port, "bob", "/chat")
    samples = await scrape(daemon)
    assert value(samples, "wsgw_subscribes_refused_total", reason="too_many_sockets") == 1
    assert value(samples, "wsgw_server_closes_total", code="4029") == 1
    assert value(samples, "wsgw_connections_subscribed", endpoint="ws") == 2
    assert value(samples, "wsgw_connections_subscribed", endpoint="chat") == 2

    alice[1].sendClose()
    await alice[1].wait_closed()
    await wait_until(lambda: daemon.service.gateway.census().subscribed["chat"] == 1, "alice's /chat socket gone")
    alice[1] = await subscribed(daemon.port, "alice", "/chat")
    alice[0].send_json({"@type": "unsubscribe"})
    await wait_until(lambda: daemon.service.gateway.census().subscribed["ws"] == 1, "alice's unsubscribe")
    last = await subscribed(daemon.port, "alice")
    refused = await connect(daemon.port)
    assert (await refused.subscribe(token("alice")))["@type"] == "error"
    assert (await refused.wait_closed())[0] == 4029
    assert bob.state == bob.STATE_OPEN and last.state == last.STATE_OPEN


@pytest_twisted.ensureDeferred
async def test_the_default_cap_is_64_sockets_per_login(gateway: StartGateway) -> None:
    """By default a login holds 64 subscribed sockets (32 Cells tabs, each a /ws and a /chat socket); the 65th
    is refused with 4029."""
    daemon = await gateway(redis=None)
    assert daemon.service.config.max_connections_per_user == 64
    for i in range(64):
        await subscribed(daemon.port, "carol", "/ws" if i % 2 else "/chat")
    extra = await connect(daemon.port)
    assert (await extra.subscribe(token("carol")))["error"] == "subscribe: too many sockets for this user (at most 64)"
    assert (await extra.wait_closed())[0] == 4029
    assert daemon.service.gateway.refusals["too_many_sockets"] == 1
