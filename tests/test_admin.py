"""The operator listener on the real daemon: /metrics counters move when things happen; POST /publish status codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from tests.support.daemon import Daemon, StartGateway, scrape, token, value, workspace
from tests.support.wsclient import connect

HOME = workspace("w-home", "home", "ds/home")
ADMIN = "tcp:0:interface=127.0.0.1"
PUBLISH_TOKEN = "publish-token-of-the-tests-0123456789"


async def post(daemon: Daemon, path: str, body: bytes, auth: str | None = PUBLISH_TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": [f"Bearer {auth}"]} if auth is not None else {}
    response = await treq.post(f"http://127.0.0.1:{daemon.admin_port}{path}", data=body, headers=headers,
                               timeout=5)
    text = await response.content()
    return response.code, json.loads(text) if text.startswith(b"{") else text


async def publishing_daemon(gateway: StartGateway, tmp_path: Any, redis: str | None = None, **kwargs: Any) -> Daemon:
    secret = tmp_path / "publish.token"
    secret.write_text(PUBLISH_TOKEN + "\n")
    overrides = {"admin.publish_token_file": str(secret), **kwargs.pop("overrides", {})}
    return await gateway(redis=redis, admin=ADMIN, overrides=overrides, **kwargs)


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_subscribes_events_deliveries_and_lag(gateway: StartGateway) -> None:
    """Subscribes (accepted, refused by reason), events per topic, malformed events, deliveries, connections and
    the delivery lag histogram all count what happened."""
    daemon = await gateway(admin=ADMIN)
    before = await scrape(daemon)
    assert value(before, "wsgw_bus_up") == 1
    assert value(before, "wsgw_subscribes_refused_total", reason="invalid_token") == 0
    alice = await connect(daemon.port)
    assert (await alice.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    mallory = await connect(daemon.port)
    await mallory.subscribe("not-a-token")
    assert (await mallory.wait_closed())[0] == 4001
    idle = await connect(daemon.port, "/chat")

    await daemon.publish("tree", {"Target": {"Uuid": "n1", "Path": "ds/home/a.txt"}})
    await daemon.publish("tasks", b"{not json")
    assert (await alice.next())["Target"]["Path"] == "home/a.txt"
    # the malformed event was published after the good one; wait until the dispatcher has seen it
    await daemon.publish("tree", {"Target": {"Uuid": "n2", "Path": "ds/home/b.txt"}})
    await alice.next()

    after = await scrape(daemon)
    assert value(after, "wsgw_subscribes_accepted_total") == 1
    assert value(after, "wsgw_subscribes_refused_total", reason="invalid_token") == 1
    assert value(after, "wsgw_server_closes_total", code="4001") == 1
    assert value(after, "wsgw_bus_events_received_total", topic="tree") == 2
    assert value(after, "wsgw_bus_events_received_total", topic="tasks") == 1
    assert value(after, "wsgw_bus_events_malformed_total", topic="tasks") == 1
    assert value(after, "wsgw_deliveries_total", kind="nodes") == 2
    assert value(after, "wsgw_delivery_lag_seconds_count", topic="tree") == 2
    assert value(after, "wsgw_delivery_lag_seconds_count", topic="tasks") == 1
    assert value(after, "wsgw_delivery_lag_seconds_bucket", topic="tree", le="+Inf") == 2
    assert value(after, "wsgw_connections", endpoint="ws") == 1
    assert value(after, "wsgw_connections_subscribed", endpoint="ws") == 1
    assert value(after, "wsgw_connections", endpoint="chat") == 1
    assert value(after, "wsgw_connections_subscribed", endpoint="chat") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    idle.sendClose()
    await idle.wait_closed()


@pytest_twisted.ensureDeferred
async def test_slow_consumer_and_flood_closes_are_counted(gateway: StartGateway) -> None:
    """A reader that stopped reading past its queue limit (4008) and a client sending too fast (4029) show up
    in wsgw_server_closes."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={
        "delivery.max_queued_bytes": "65536", "websocket.inbound_rate": "1", "websocket.inbound_burst": "3",
    })
    slow = await connect(daemon.port)
    await slow.subscribe(token("slow", [HOME]))
    slow.transport.pauseProducing()  # stops reading
    pad = "x" * 16_000
    await daemon.flood(lambda i: json.dumps({"Target": {"Uuid": f"n{i}", "Path": "ds/home/x", "MetaStore": {
        "pad": json.dumps(pad)}}}).encode(), lambda: daemon.service.gateway.closes[4008] > 0)
    slow.transport.resumeProducing()
    assert (await slow.wait_closed())[0] == 4008
    flooder = await connect(daemon.port)
    for _ in range(10):
        flooder.send_json({"@type": "noise"})
    assert (await flooder.wait_closed())[0] == 4029
    samples = await scrape(daemon)
    assert value(samples, "wsgw_server_closes_total", code="4008") == 1
    assert value(samples, "wsgw_server_closes_total", code="4029") == 1


@pytest_twisted.ensureDeferred
async def test_chat_metrics_count_requests_rooms_and_deliveries(gateway: StartGateway) -> None:
    """A JOIN and a POST are counted by action, the room is active, and the broadcast counts as a chat delivery."""
    daemon = await gateway(redis=None, admin=ADMIN)
    chat = await connect(daemon.port, "/chat")
    await chat.subscribe(token("alice", [HOME]))
    chat.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": "lobby"}})
    room = await chat.next()
    assert room["@type"] == "ROOM_UPDATE"
    chat.send_json({"@type": "POST", "Message": {"RoomUuid": room["Room"]["Uuid"], "Message": "hello"}})
    while (await chat.next()).get("Message") != "hello":
        pass
    chat.send_json({"@type": "POST", "Message": {"RoomUuid": "nope", "Message": "lost"}})
    assert (await chat.next())["@type"] == "error"
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_frames_total", action="JOIN") == 1
    assert value(samples, "wsgw_chat_frames_total", action="POST") == 1
    assert value(samples, "wsgw_chat_frames_refused_total") == 1
    assert value(samples, "wsgw_chat_rooms_active") == 1
    assert value(samples, "wsgw_deliveries_total", kind="chat") >= 2  # the ROOM_UPDATE and the message
    assert value(samples, "wsgw_bus_events_received_total", topic="chat") >= 2
    assert value(samples, "wsgw_chat_events_unpublished") == value(samples, "wsgw_chat_events_republished_total") \
        == value(samples, "wsgw_chat_events_unpublished_dropped_total") == 0  # the bus took every event


@pytest_twisted.ensureDeferred
async def test_redis_outage_shows_in_bus_up_and_reconnects(gateway: StartGateway, tmp_path: Any) -> None:
    """While Redis is down wsgw_bus_up is 0 and /publish answers 503; after it returns each connection counts a
    reconnect."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis:
        daemon = await publishing_daemon(gateway, tmp_path, redis=redis.endpoint)
        samples = await scrape(daemon)
        assert value(samples, "wsgw_redis_connected", role="bus subscriber") == 1
        assert value(samples, "wsgw_redis_reconnects_total", role="bus subscriber") == 0
        redis.kill()
        for _ in range(500):  # each try is a full HTTP round trip; the bus notices the drop within a few
            samples = await scrape(daemon)
            if value(samples, "wsgw_bus_up") == 0 and value(samples, "wsgw_redis_connected",
                                                             role="bus publisher") == 0:
                break
        else:
            pytest.fail("the Redis outage never showed in the metrics")
        code, answer = await post(daemon, "/publish/tree", b'{"Target":{"Uuid":"n","Path":"ds/x"}}')
        assert code == 503 and "bus unavailable" in answer["error"]
        redis.start()
        back = daemon.service.bus.whenConnected()
        back.addTimeout(20, reactor)
        await back
        samples = await scrape(daemon)
        assert value(samples, "wsgw_bus_up") == 1
        assert value(samples, "wsgw_redis_reconnects_total", role="bus subscriber") == 1
        assert value(samples, "wsgw_redis_reconnects_total", role="bus publisher") == 1
        back = daemon.service.redis_commands.whenConnected()
        back.addTimeout(20, reactor)
        await back
        samples = await scrape(daemon)
        assert value(samples, "wsgw_redis_reconnects_total", role="chat store") == 1
        code, answer = await post(daemon, "/publish/tree", b'{"Target":{"Uuid":"n","Path":"ds/x"}}')
        assert code == 200 and answer["receivers"] == 1  # this daemon's own subscriber


@pytest_twisted.ensureDeferred
async def test_publish_puts_the_event_on_the_bus(gateway: StartGateway, tmp_path: Any) -> None:
    """POST /publish/<topic> with the bearer token reaches a subscribed client exactly as a bus event would."""
    daemon = await publishing_daemon(gateway, tmp_path)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    event = b'{"Target":{"Uuid":"n1","Path":"ds/home/report.pdf"}}'
    code, answer = await post(daemon, "/publish/tree", event)
    assert code == 200 and answer == {"published": "tree", "bytes": len(event)}
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"
    samples = await scrape(daemon)
    assert value(samples, "wsgw_publish_requests_total", status="200") == 1


@pytest_twisted.ensureDeferred
async def test_publish_takes_the_topics_configured_channel_name_too(gateway: StartGateway, tmp_path: Any) -> None:
    """PROTOCOL.md §1: ``<topic>`` of ``POST /publish/<topic>`` is the logical name or its configured channel name;
    the channel name was answered 404 unknown topic. The event reaches the subscriber as through the logical name;
    the gateway's own control channel stays closed to it."""
    daemon = await publishing_daemon(gateway, tmp_path)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    channels = daemon.service.config.topics
    event = b'{"Target":{"Uuid":"n1","Path":"ds/home/report.pdf"}}'
    code, answer = await post(daemon, "/publish/" + channels["tree"], event)
    assert (code, answer) == (200, {"published": "tree", "bytes": len(event)})
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"
    code, answer = await post(daemon, "/publish/" + channels["tasks"], b'{"Job":{}}')
    assert code == 400 and "not a tasks event" in answer["error"]
    code, answer = await post(daemon, "/publish/" + channels["control"], b"{}")
    assert code == 404 and "unknown topic" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_publish_answers_401_400_404_413_405(gateway: StartGateway, tmp_path: Any) -> None:
    """Without the right token 401; an unknown topic 404; a body that is not an event of the topic 400 with the
    reason; an oversized body 413; a GET 405. Nothing reaches the bus."""
    daemon = await publishing_daemon(gateway, tmp_path)
    good = b'{"Target":{"Uuid":"n1","Path":"ds/home/a"}}'
    assert (await post(daemon, "/publish/tree", good, auth=None))[0] == 401
    assert (await post(daemon, "/publish/tree", good, auth="wrong"))[0] == 401
    assert (await post(daemon, "/publish/tree", good, auth=PUBLISH_TOKEN + "x"))[0] == 401
    code, answer = await post(daemon, "/publish/nodes", good)
    assert code == 404 and "unknown topic 'nodes'" in answer["error"] and "tree" in answer["error"]
    code, answer = await post(daemon, "/publish/tree", b"{nope")
    assert code == 400 and answer["error"].startswith("not JSON")
    code, answer = await post(daemon, "/publish/tree", b"[1, 2]")
    assert code == 400 and answer["error"] == "the event must be a JSON object"
    code, answer = await post(daemon, "/publish/tree", b'{"Type":"EXPLODE","Target":{"Uuid":"n"}}')
    assert code == 400 and "not a tree event" in answer["error"] and "EXPLODE" in answer["error"]
    code, answer = await post(daemon, "/publish/tasks", b'{"Job":{}}')
    assert code == 400 and "TaskUpdated" in answer["error"]
    big = b'{"Target":{"Uuid":"n","Path":"' + b"x" * (1 << 20) + b'"}}'
    code, answer = await post(daemon, "/publish/tree", big)
    assert code == 413
    response = await treq.get(f"http://127.0.0.1:{daemon.admin_port}/publish/tree", timeout=5)
    assert response.code == 405
    await response.content()
    assert sum(daemon.service.dispatcher.received.values()) == 0
    samples = await scrape(daemon)
    assert value(samples, "wsgw_publish_requests_total", status="401") == 3
    assert value(samples, "wsgw_publish_requests_total", status="400") == 4


@pytest_twisted.ensureDeferred
async def test_publish_is_off_without_a_token_file_and_admin_is_not_on_the_public_port(gateway: StartGateway) -> None:
    """With no publish_token_file POST /publish answers 403 saying how to turn it on; the public port serves
    neither /metrics nor /publish."""
    daemon = await gateway(redis=None, admin=ADMIN)
    code, answer = await post(daemon, "/publish/tree", b"{}")
    assert code == 403 and "publish_token_file" in answer["error"]
    for path in ("/metrics", "/publish/tree"):
        response = await treq.get(f"http://127.0.0.1:{daemon.port}{path}", timeout=5)
        assert response.code == 404
        await response.content()


def test_the_default_operator_listener_is_loopback_5051() -> None:
    """Out of the box the operator listener binds 127.0.0.1:5051 only."""
    from wsgw.config import config_from_string

    assert config_from_string("", environ={"WSGW_HMAC_SECRET": "s"}).admin_listen == ("tcp:5051:interface=127.0.0.1",)
