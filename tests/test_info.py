"""GET /info and the operator page on the operator listener (issue 14, "An operator page"): real daemons on the
shared Redis (or the embedded bus), the instance registry's heartbeat between them, the token, the static files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.logger import formatEventAsClassicLogText, globalLogPublisher

from tests.support.daemon import Daemon, StartGateway, scrape, token, value, workspace
from tests.support.waiting import eventually, wait_until
from tests.support.wsclient import connect

ADMIN = "tcp:0:interface=127.0.0.1"
OPERATOR_TOKEN = "operator-token-of-the-info-tests-0123456789"
HEARTBEAT = "0.2"
HOME = workspace("w-home", "home", "ds/home")


async def instance(gateway: StartGateway, tmp_path: Path, prefix: str | None = None, redis: Any = "shared",
                   with_token: bool = True, **overrides: str) -> Daemon:
    settings = {"operator.heartbeat": HEARTBEAT, **overrides}
    if with_token:
        secret = tmp_path / "operator.token"
        secret.write_text(OPERATOR_TOKEN + "\n")
        settings["admin.publish_token_file"] = str(secret)
    options: dict[str, Any] = {} if redis == "shared" else {"redis": redis}
    return await gateway(prefix=prefix, admin=ADMIN, overrides=settings, **options)


async def get(daemon: Daemon, path: str, auth: str | None = OPERATOR_TOKEN, method: str = "GET") -> Any:
    headers = {"Authorization": [f"Bearer {auth}"]} if auth is not None else {}
    return await treq.request(method, f"http://127.0.0.1:{daemon.admin_port}{path}", headers=headers, timeout=5)


async def info(daemon: Daemon) -> dict[str, Any]:
    response = await get(daemon, "/info")
    assert response.code == 200, await response.text()
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    return json.loads(await response.content())  # type: ignore[no-any-return]


async def ids(daemon: Daemon) -> list[str]:
    return [record["id"] for record in (await info(daemon))["instances"]]


@pytest_twisted.ensureDeferred
async def test_two_instances_on_one_redis_both_appear_in_info_and_a_stopped_one_disappears(
        gateway: StartGateway, tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-a"})
    b = await instance(gateway, tmp_path, prefix=a.prefix, **{"operator.instance_name": "gw-b"})
    for daemon in (a, b):
        await eventually(lambda d=daemon: _lists(d, ["gw-a", "gw-b"]), "both instances in /info")

    async def b_connected() -> bool:  # its first heartbeat may predate its bus connection
        return any(r["id"] == "gw-b" and r["bus"]["connected"] for r in (await info(a))["instances"])

    await eventually(b_connected, "gw-b's bus connected in a's /info")
    answer = await info(a)
    assert answer["self"] == "gw-a" and answer["registry"] == "redis" and answer["skipped"] == 0
    other = next(r for r in answer["instances"] if r["id"] == "gw-b")
    assert other["bus"] == {"state": "connected", "connected": True}
    assert other["heartbeat"] == 0.2 and f"127.0.0.1:{b.port}" in other["listen"]
    assert set(other) >= {"version", "started", "at", "connections", "subscribed", "rooms", "closes", "history"}

    await b.stop()  # a clean stop removes the record at once (well before its 0.6 s TTL)
    assert await ids(a) == ["gw-a"]


async def _lists(daemon: Daemon, expected: list[str]) -> bool:
    return await ids(daemon) == expected


@pytest_twisted.ensureDeferred
async def test_a_killed_instance_disappears_after_its_ttl(gateway: StartGateway, tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-a"})
    b = await instance(gateway, tmp_path, prefix=a.prefix, **{"operator.instance_name": "gw-b"})
    await eventually(lambda: _lists(a, ["gw-a", "gw-b"]), "both instances in /info")
    b.service.instances._loop.stop()  # as if killed: no heartbeat any more, nothing removed
    await eventually(lambda: _lists(a, ["gw-a"]), "the silent instance gone from /info", timeout=5)


@pytest_twisted.ensureDeferred
async def test_info_counts_connections_and_charts_events_and_deliveries(gateway: StartGateway,
                                                                        tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path)
    client = await connect(a.port, "/ws")
    assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    for i in range(5):
        await a.publish("tree", {"Target": {"Uuid": f"n{i}", "Path": f"ds/home/f{i}.txt", "Type": "LEAF"}})
    for _ in range(5):
        await client.next()

    async def charted() -> bool:
        record = (await info(a))["instances"][0]
        return sum(record["history"]["events"]) >= 5 and sum(record["history"]["deliveries"]) >= 5

    await eventually(charted, "the events and deliveries in the history")
    record = (await info(a))["instances"][0]
    assert record["connections"]["ws"] == 1 and record["subscribed"]["ws"] == 1
    client.sendClose()
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_info_needs_the_operator_token_and_get(gateway: StartGateway, tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path)
    for auth in (None, "wrong-token"):
        response = await get(a, "/info", auth=auth)
        assert response.code == 401
        assert response.headers.getRawHeaders("www-authenticate") == ['Bearer realm="wsgw"']
        assert "instances" not in json.loads(await response.content())
    response = await get(a, "/info", method="POST")
    assert response.code == 405 and response.headers.getRawHeaders("allow") == ["GET"]
    await response.content()
    assert (await get(a, "/info")).code == 200
    samples = await scrape(a)  # every answer counted, as /disconnect's and /revoke's are
    for status, n in (("401", 2), ("405", 1), ("200", 1)):
        assert value(samples, "wsgw_operator_requests_total", path="/info", status=status) == n
    off = await instance(gateway, tmp_path, with_token=False)
    response = await get(off, "/info")
    assert response.code == 403
    assert "publish_token_file" in json.loads(await response.content())["error"]


@pytest_twisted.ensureDeferred
async def test_info_on_the_embedded_bus_lists_this_instance(gateway: StartGateway, tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path, redis=None)
    answer = await info(a)
    assert answer["registry"] == "embedded" and len(answer["instances"]) == 1
    assert answer["instances"][0]["bus"] == {"state": "embedded", "connected": True}


@pytest_twisted.ensureDeferred
async def test_hostile_records_in_redis_cost_info_nothing(gateway: StartGateway, tmp_path: Path) -> None:
    """Records in the registry's index that are not records: a huge value and a hash are never read, a record
    naming another id and junk are read and skipped, an id whose key is gone leaves the index; an index that is
    not a sorted set makes /info say so, still listing the answering instance."""
    a = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-a"})
    redis = a.service.redis_commands
    prefix = f"{a.prefix}:instances:"
    await eventually(lambda: _lists(a, ["gw-a"]), "gw-a in /info")
    await redis.execute_command("SET", prefix + "huge", b"{" + b" " * (8 << 20) + b"}", "EX", 60)
    await redis.execute_command("HSET", prefix + "hash", "id", "hash")
    await redis.execute_command("EXPIRE", prefix + "hash", 60)
    await redis.execute_command("SET", prefix + "liar", json.dumps({"id": "someone-else", "started": 1, "at": 1,
                                                                     "heartbeat": 1}), "EX", 60)
    await redis.execute_command("SET", prefix + "junk", b"\xff[[[", "EX", 60)
    for member in ("huge", "hash", "liar", "junk", "gone"):
        await redis.execute_command("ZADD", prefix, 1, member)
    answer = await info(a)
    assert [r["id"] for r in answer["instances"]] == ["gw-a"]
    assert answer["skipped"] == 2  # the liar and the junk; the huge one and the hash are never read
    assert await redis.execute_command("ZSCORE", prefix, "gone") is None  # its key is gone: out of the index

    await redis.execute_command("DEL", prefix)
    await redis.execute_command("SET", prefix, b"not a sorted set", "EX", 60)
    answer = await info(a)
    assert [r["id"] for r in answer["instances"]] == ["gw-a"] and "WRONGTYPE" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_the_registry_reads_its_index_not_the_keyspace(gateway: StartGateway, tmp_path: Path) -> None:
    """Other keys under the prefix (or anywhere) are not looked at: /info lists the instances of the index."""
    a = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-a"})
    redis = a.service.redis_commands
    prefix = f"{a.prefix}:instances:"
    await redis.execute_command("SET", prefix + "stray", json.dumps({"id": "stray", "started": 1, "at": 1,
                                                                     "heartbeat": 1}), "EX", 60)
    await eventually(lambda: _lists(a, ["gw-a"]), "gw-a alone in /info")
    assert await redis.execute_command("ZRANGE", prefix, 0, -1) == [b"gw-a"]
    b = await instance(gateway, tmp_path, prefix=a.prefix, **{"operator.instance_name": "gw-b"})
    await eventually(lambda: _lists(b, ["gw-a", "gw-b"]), "both in /info")
    await a.stop()  # its key and its index entry go
    redis = b.service.redis_commands
    assert await redis.execute_command("EXISTS", prefix + "gw-a") == 0
    assert await redis.execute_command("ZRANGE", prefix, 0, -1) == [b"gw-b"]


@pytest_twisted.ensureDeferred
async def test_the_operator_page_is_off_by_default_and_locked_down_when_on(gateway: StartGateway,
                                                                          tmp_path: Path) -> None:
    off = await instance(gateway, tmp_path, redis=None)
    for path in ("/", "/operator.js", "/operator.css"):
        response = await get(off, path, auth=None)
        assert response.code == 404
        await response.content()
    on = await instance(gateway, tmp_path, redis=None, **{"operator.page": "yes"})
    response = await get(on, "/", auth=None)
    assert response.code == 200
    body = await response.text()
    assert "<title>wsgw operator</title>" in body and "<script>" not in body and "style=" not in body
    csp = response.headers.getRawHeaders("content-security-policy")[0]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert response.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    for path, kind in (("/operator.js", "text/javascript"), ("/operator.css", "text/css")):
        response = await get(on, path, auth=None)
        assert response.code == 200 and response.headers.getRawHeaders("content-type")[0].startswith(kind)
        assert len(await response.content()) > 500


@pytest_twisted.ensureDeferred
async def test_a_reload_rotates_the_info_token_and_leaves_the_page_for_a_restart(gateway: StartGateway,
                                                                               tmp_path: Path) -> None:
    import attrs

    a = await instance(gateway, tmp_path, redis=None)
    a.service.reload(attrs.evolve(a.service.config, publish_token=b"the-new-operator-token", operator_page=True))
    response = await get(a, "/info")
    assert response.code == 401
    await response.content()
    response = await get(a, "/info", auth="the-new-operator-token")
    assert response.code == 200
    await response.content()
    assert a.service.config.operator_page is False  # [operator] page needs a restart
    response = await get(a, "/", auth=None)
    assert response.code == 404
    await response.content()


@pytest_twisted.ensureDeferred
async def test_info_names_each_listen_address_ipv6_in_brackets(gateway: StartGateway, tmp_path: Path) -> None:
    a = await instance(gateway, tmp_path, redis=None,
                       **{"server.listen": "tcp:0:interface=127.0.0.1\ntcp6:0:interface=\\:\\:1"})
    ports = [port.getHost().port for port in a.service.ports]
    listen = (await info(a))["instances"][0]["listen"]
    assert listen == [f"127.0.0.1:{ports[0]}", f"[::1]:{ports[1]}", f"127.0.0.1:{a.admin_port}"]


def _twin_warnings(events: list[dict[str, Any]], name: str) -> list[str]:
    lines = [formatEventAsClassicLogText(e) or "" for e in events]
    return [t for t in lines if f"another live instance is named {name}" in t]


@pytest_twisted.ensureDeferred
async def test_two_live_instances_with_one_name_each_warn_once(gateway: StartGateway, tmp_path: Path) -> None:
    """Two processes given the same [operator] instance_name on one Redis write one record, each replacing the
    other's: each says so in one warning (they used to say nothing, /info showing one of them at a time)."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        a = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-twin"})
        b = await instance(gateway, tmp_path, prefix=a.prefix, **{"operator.instance_name": "gw-twin"})
        registries = (a.service.instances, b.service.instances)
        await wait_until(lambda: all(r.written >= 10 for r in registries), "10 heartbeats of each", timeout=10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "another live instance" in (e.get("log_format") or "")]
    assert len(_twin_warnings(events, "gw-twin")) == 2, _twin_warnings(events, "gw-twin")
    assert {e["log_level"].name for e in warnings} == {"warn"}


@pytest_twisted.ensureDeferred
async def test_an_instance_replacing_the_record_of_the_process_it_restarts_says_nothing(
        gateway: StartGateway, tmp_path: Path) -> None:
    """A process killed (its record still there for 3 heartbeats) and started again under its name: the new one's
    first heartbeat replaces the old record, which is no second instance."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        old = await instance(gateway, tmp_path, **{"operator.instance_name": "gw-again"})
        await wait_until(lambda: old.service.instances.written >= 2, "the old process's heartbeats")
        old.service.instances._loop.stop()  # killed: its record stays until its TTL
        new = await instance(gateway, tmp_path, prefix=old.prefix, **{"operator.instance_name": "gw-again"})
        await wait_until(lambda: new.service.instances.written >= 8, "8 heartbeats of the new process")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert _twin_warnings(events, "gw-again") == []
