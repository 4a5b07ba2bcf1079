"""The benchmark's baselines and table (bench/, issue 13 "The benchmark").

Every baseline verifies the subscribe frame's HS256 token; the Node and Go baselines' selective modes send
the same frames for the same event (index by workspace root, paths rewritten, one encoding per workspace);
the results table shows a Go column when Go ran and issue 13's goals. The baselines run for real on
loopback against a private redis-server; the Node and Go ones are skipped where `make bench-deps` has not
installed or built them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.redis_server import RedisServer, free_port

BENCH = Path(__file__).resolve().parent.parent / "bench"
GO_BIN = BENCH / "baselines" / "go" / "wsgw-bench-go"
NODE_MODULES = BENCH / "baselines" / "node" / "node_modules" / "jsonwebtoken"
CHANNEL = "bench-test.topic.pydio.tree.nodes.changes"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load("run")
loadgen = _load("loadgen")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _command(kind: str, port: int, redis_port: int, mode: str) -> list[str]:
    common = ["--port", str(port), "--redis-port", str(redis_port), "--channel", CHANNEL]
    if kind == "autobahn":
        return [sys.executable, str(BENCH / "baselines" / "autobahn_broadcast.py"), *common]
    if kind == "node":
        if not NODE_MODULES.is_dir():
            pytest.skip("the Node baseline is not installed (make bench-deps)")
        return ["node", str(BENCH / "baselines" / "node" / "server.js"), *common, "--mode", mode]
    if not os.access(GO_BIN, os.X_OK):
        pytest.skip("the Go baseline is not built (make bench-deps)")
    return [str(GO_BIN), *common, "--mode", mode]


class Baseline:
    """One baseline server process on 127.0.0.1, stopped by its pid."""

    def __init__(self, kind: str, redis: RedisServer, mode: str = "broadcast", subscribers: int = 1) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(_command(kind, self.port, redis.port, mode), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**os.environ, "WSGW_HMAC_SECRET": run.SECRET})
        run.wait_port(self.port, self.proc)
        run.wait_subscribed(redis.port, CHANNEL, subscribers)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class _Client(loadgen.Client):  # type: ignore[name-defined,misc]
    """loadgen's client, and ``gone``: resolved when its connection is lost."""

    __slots__ = ("gone",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.gone.done():
            self.gone.set_result(None)


async def _client(port: int, jwt: str) -> tuple[Any, list[bytes], asyncio.Event]:
    """A loadgen client on /ws that sent a subscribe frame; its frames land in the returned list."""
    frames: list[bytes] = []
    arrived = asyncio.Event()

    def sink(client: Any, payload: bytes, now: float) -> None:
        frames.append(payload)
        arrived.set()

    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: _Client(0, f"127.0.0.1:{port}", "/ws", sink),
                                             "127.0.0.1", port)
    await asyncio.wait_for(client.opened, 5)
    client.send_text(json.dumps({"@type": "subscribe", "jwt": jwt}).encode())
    return client, frames, arrived


async def _frames(frames: list[bytes], arrived: asyncio.Event, count: int) -> list[Any]:
    while len(frames) < count:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
    return [json.loads(f) for f in frames]


@pytest.mark.parametrize("kind", ["autobahn", "node", "go"])
def test_a_baseline_refuses_a_bad_token_and_accepts_a_good_one(kind: str, redis: RedisServer) -> None:
    server = Baseline(kind, redis)

    async def scenario() -> None:
        forged = loadgen.jwt.encode({"name": "mallory", "exp": 2**31}, "another-secret-of-at-least-32-bytes",
                                    algorithm="HS256")
        bad, bad_frames, bad_arrived = await _client(server.port, forged)
        good, good_frames, good_arrived = await _client(server.port, loadgen.token("alice", []))
        assert (await _frames(bad_frames, bad_arrived, 1))[0]["@type"] == "error"
        await asyncio.wait_for(bad.gone, 5)  # the server closes the connection
        assert bad.close_code == 4001
        subscribed = (await _frames(good_frames, good_arrived, 1))[0]
        assert subscribed["@type"] == "subscribed" and subscribed["user"] == "alice"
        good.transport.abort()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_node_and_go_selective_modes_send_the_same_frames(redis: RedisServer) -> None:
    node_server = Baseline("node", redis, "selective")
    try:
        go_server = Baseline("go", redis, "selective", subscribers=2)
    except BaseException:
        node_server.stop()
        raise
    servers = [node_server, go_server]
    one = loadgen.workspace("ws-1", "one", "pydiods1/a")
    two = {"uuid": "ws-2", "slug": "two", "roots": [{"uuid": "r1", "path": "pydiods1/a/sub", "key": "k"},
                                                      {"uuid": "r2", "path": "pydiods1/b"}]}
    events = [
        {"Type": "UPDATE_PATH",  # the Target in both workspaces, the Source in none: a CREATE in each
         "Target": {"Uuid": "n1", "Path": "pydiods1/a/sub/f.txt", "Size": "3",
                    "MetaStore": {"pydio:secret": "1", "tag": '"x"'}},
         "Source": {"Uuid": "n1", "Path": "pydiods1/c/f.txt"}},
        {"Type": "DELETE", "Source": {"Uuid": "n2", "Path": "pydiods1/b/.hidden"}},  # not visible
        {"Type": "DELETE", "Source": {"Uuid": "n3", "Path": "pydiods1/b/x"}},
    ]

    async def scenario() -> list[list[Any]]:
        clients = [await _client(s.port, loadgen.token("alice", [one, two])) for s in servers]
        for _, frames, arrived in clients:
            await _frames(frames, arrived, 1)
        publisher = loadgen.Redis()
        await publisher.connect(redis.port)
        for event in events:
            publisher.publish(CHANNEL, json.dumps(event).encode())
        got = [await _frames(frames, arrived, 4) for _, frames, arrived in clients]
        await publisher.close()
        for client, _, _ in clients:
            client.transport.abort()
        return got

    try:
        node, go = asyncio.run(scenario())
    finally:
        for s in servers:
            s.stop()
    expected_one = {"Target": {"Uuid": "n1", "Path": "one/sub/f.txt", "Size": "3",
                               "MetaStore": {"tag": '"x"', "EventWorkspaceId": '"ws-1"'}}}
    expected_two = {"Target": {"Uuid": "n1", "Path": "two/k/f.txt", "Size": "3",
                               "MetaStore": {"tag": '"x"', "EventWorkspaceId": '"ws-2"'}}}
    expected_delete = {"Type": "DELETE", "Source": {"Uuid": "n3", "Path": "two/b/x",
                                                    "MetaStore": {"EventWorkspaceId": '"ws-2"'}}}
    for frames in (node, go):
        assert frames[0]["@type"] == "subscribed"
        # One copy per workspace view (in either order), then the visible DELETE; nothing for the hidden node.
        assert sorted(frames[1:3], key=json.dumps) == sorted([expected_one, expected_two], key=json.dumps)
        assert frames[3] == expected_delete


def _result(flood_per_cpu: float, one: float, floor: float, selective: float, storm_cpu: float) -> dict[str, Any]:
    return {"flood": {"deliveries_per_cpu_s": flood_per_cpu}, "selective_one": {"cpu_us_per_event": one},
            "floor": {"cpu_us_per_event": floor},
            "selective": {"cpu_us_per_event": selective, "recipients_per_event": 10.0},
            "storm": {"server_cpu_s": storm_cpu, "subscribed": 1000}}


def test_the_table_has_a_go_column_when_go_ran_and_checks_issue_13s_goals() -> None:
    gateway = _result(130_000, 90.0, 100.0, 80.0, 0.4)
    node = _result(100_000, 95.0, 100.0, 120.0, 1.0)
    go = _result(120_000, 90.0, 90.0, 100.0, 0.3)
    with_go = run.table({1000: {"gateway": gateway, "node": node, "go": go}})
    assert "| figure | wsgw | Node ws | Go gorilla | wsgw / Node ws | wsgw / Go gorilla |" in with_go
    assert "| flood: deliveries per server CPU-s | 130,000 | 100,000 | 120,000 | 1.30× | 1.08× |" in with_go
    without = run.table({1000: {"gateway": gateway, "node": node}})
    assert "Go" not in without
    met = {goal: ok for goal, _, ok in run.goals({1000: {"gateway": gateway, "node": node, "go": go}})}
    assert met == {
        "N=1,000 flood deliveries per CPU-s ≥ 1.0× Go": True,
        "N=1,000 flood deliveries per CPU-s ≥ 1.3× Node": True,
        "N=1,000 one-recipient event: CPU per event ≤ Node's": True,
        "N=1,000 event nobody receives: CPU per event ≤ Node's": True,
        "N=1,000 selective (10.0 recipients per event): CPU per event ≤ 0.8× Go's": True,
        "N=1,000 connect + subscribe ≤ 0.5 ms of server CPU each": True,
    }
    gateway["floor"]["cpu_us_per_event"] = 101.0
    gateway["selective"]["cpu_us_per_event"] = 81.0
    failed = [goal for goal, _, ok in run.goals({1000: {"gateway": gateway, "node": node, "go": go}}) if not ok]
    assert failed == ["N=1,000 event nobody receives: CPU per event ≤ Node's",
                      "N=1,000 selective (10.0 recipients per event): CPU per event ≤ 0.8× Go's"]


def _run_selective(monkeypatch: pytest.MonkeyPatch, groups: int,
                   grouping: Callable[[list[Any], int], list[list[Any]]]) -> tuple[Any, list[int], list[int]]:
    """The loader's two selective phases for 200 sessions grouped by ``grouping(clients, groups)``, without a
    server (every event complete at once): the loader, each event's expected recipients, the groupings asked."""
    expected: list[int] = []
    asked: list[int] = []

    class Instant(loadgen.Tracker):  # every event complete at once: no server, no wait
        def expect(self, seq: int, recipients: int) -> None:
            super().expect(seq, recipients)
            expected.append(recipients)
            self.completed += 1

    clients = [argparse.Namespace(sink=None) for _ in range(200)]

    async def resubscribe(n: int) -> list[list[Any]]:
        asked.append(n)
        return grouping(clients, n)

    monkeypatch.setattr(loadgen, "Tracker", Instant)
    args = argparse.Namespace(server_pid=[], prefix="t", server="gateway", n=200, selective_rate=2000,
                              selective_duration=0.05, selective_groups=groups)
    runner = loadgen.Run(args)
    runner.clients = clients  # type: ignore[assignment]
    monkeypatch.setattr(runner, "_resubscribe", resubscribe)
    monkeypatch.setattr(runner.redis, "publish", lambda channel, payload: None)
    monkeypatch.setattr(runner, "sample", lambda: (0.0, 0, loadgen._now()))
    asyncio.run(runner.selective())
    return runner, expected, asked


def test_selective_phases_publish_only_to_workspaces_that_exist_when_n_is_under_1000(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``per_event.py --n 200``: the selective phases (1,000 workspaces; then one per session, 1,000 of them hot)
    with 200 sessions publish to existing workspaces only (an IndexError ended the run at ``selective_one``), each
    event expecting its workspace's sessions."""
    runner, expected, _ = _run_selective(
        monkeypatch, 1000, lambda clients, n: [[clients[w]] if w < 200 else [] for w in range(n)])
    assert set(runner.results) >= {"selective", "selective_one"}
    assert expected and set(expected) <= {0, 1} and 1 in expected


def test_selective_groups_sets_the_recipients_of_the_first_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """``per_event.py --selective-groups 20`` at N = 200: the first selective phase groups the sessions in 20
    workspaces, so each of its events expects 10 recipients (issue 13's 10-recipient event at N = 1,000: 100)."""
    runner, expected, asked = _run_selective(monkeypatch, 20, lambda clients, n: [clients[w::n] for w in range(n)])
    first = runner.results["selective"]
    assert asked == [20, 200]
    assert expected[:first["events"]] == [10] * first["events"] and first["events"] > 0
