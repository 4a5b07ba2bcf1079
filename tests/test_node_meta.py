"""The node-metadata backend end to end (PROTOCOL.md §4.1, per-user Target): the real daemon and Redis, a real
WebSocket client, and a reference backend on loopback that answers, answers late, or is not there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support.daemon import Daemon, StartGateway, scrape, token, value, workspace
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

TEAM = workspace("ws-team", "team-files", "pydiods1/team")
TOKEN = "node-meta-token-0123456789"
ADMIN = "tcp:0:interface=127.0.0.1"


class ReferenceBackend(Resource):
    """The reference node-metadata backend: per login, the MetaStore entries it holds for every node; it records
    each request and answers after ``delay`` seconds."""

    isLeaf = True

    def __init__(self, entries: dict[str, dict[str, str]], delay: float = 0.0) -> None:
        super().__init__()
        self.entries = entries
        self.delay = delay
        self.requests: list[tuple[Any, bytes | None]] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        asked = json.loads(request.content.read())
        self.requests.append((asked, request.getHeader(b"authorization")))
        answer = json.dumps({login: self.entries.get(login, {}) for login in asked["Logins"]}).encode()
        if not self.delay:
            return answer
        call = reactor.callLater(self.delay, lambda: (request.write(answer), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


async def started(gateway: StartGateway, tmp_path: Path, url: str, timeout: str = "0.5") -> Daemon:
    token_file = tmp_path / "node-meta-token"
    token_file.write_text(TOKEN + "\n")
    return await gateway(admin=ADMIN, overrides={
        "access.node_meta_url": url, "access.node_meta_token_file": str(token_file),
        "access.node_meta_timeout": timeout,
    })


def serve(backend: ReferenceBackend) -> tuple[str, Any]:
    port = reactor.listenTCP(0, Site(backend), interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}/node-meta", port


async def member(daemon: Daemon, login: str) -> Client:
    client = await connect(daemon.port, "/ws/event")
    assert (await client.subscribe(token(login, [TEAM])))["@type"] == "subscribed"
    return client


RENAME = {
    "Type": "UPDATE_PATH",
    "Source": {"Uuid": "n1", "Path": "pydiods1/team/draft.md", "Type": "LEAF", "MetaStore": {"name": '"draft.md"'}},
    "Target": {"Uuid": "n1", "Path": "pydiods1/team/plan.md", "Type": "LEAF", "MetaStore": {"name": '"plan.md"'}},
}


@pytest_twisted.ensureDeferred
async def test_a_rename_keeps_each_users_bookmark(gateway: StartGateway, tmp_path: Path) -> None:
    """alice bookmarked the file: renaming it brings her Target with the bookmark (the stock client keeps its
    star), bob's without; the backend got one request naming the node and both logins, with the bearer token."""
    backend = ReferenceBackend({"alice": {"bookmark": "true", "usermeta-tags": '"urgent"'}})
    url, port = serve(backend)
    try:
        daemon = await started(gateway, tmp_path, url)
        alice, bob = await member(daemon, "alice"), await member(daemon, "bob")
        await daemon.publish("tree", RENAME)
        mine, theirs = await alice.next(), await bob.next()
        assert mine["Target"]["MetaStore"] == {"name": '"plan.md"', "bookmark": "true", "usermeta-tags": '"urgent"',
                                               "EventWorkspaceId": '"ws-team"'}
        assert theirs["Target"]["MetaStore"] == {"name": '"plan.md"', "EventWorkspaceId": '"ws-team"'}
        assert backend.requests == [({"Node": {"Uuid": "n1", "Path": "pydiods1/team/plan.md"},
                                      "Logins": ["alice", "bob"]}, f"Bearer {TOKEN}".encode())]
        assert value(await scrape(daemon), "wsgw_node_meta_lookups_total", outcome="ok") == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_slow_backend_delays_the_event_by_the_bound_only(gateway: StartGateway, tmp_path: Path) -> None:
    """A backend answering in 5 s: the event goes out as published once the 0.3 s bound passes (well within a
    second), the timeout is counted, and an event of another node published meanwhile is not held."""
    backend = ReferenceBackend({"alice": {"bookmark": "true"}}, delay=5.0)
    url, port = serve(backend)
    try:
        daemon = await started(gateway, tmp_path, url, timeout="0.3")
        alice = await member(daemon, "alice")
        published = reactor.seconds()
        await daemon.publish("tree", RENAME)
        await daemon.publish("tree", {"Target": {"Uuid": "n2", "Path": "pydiods1/team/new.md"}})
        assert (await alice.next(timeout=1.0))["Target"]["Uuid"] == "n2"  # not behind n1's lookup
        frame = await alice.next(timeout=1.0)
        assert frame["Type"] == "UPDATE_PATH" and "bookmark" not in frame["Target"]["MetaStore"]
        assert 0.25 <= reactor.seconds() - published < 1.0
        samples = await scrape(daemon)
        assert value(samples, "wsgw_node_meta_lookups_total", outcome="timeout") == 1, {k: v for k, v in samples.items() if "node_meta" in k[0]}
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_backend_that_is_down_costs_nothing_but_its_count(gateway: StartGateway, tmp_path: Path) -> None:
    """Nothing listens at node_meta_url: the event goes out as published (within the 0.5 s bound) and the
    failure is counted."""
    daemon = await started(gateway, tmp_path, f"http://127.0.0.1:{free_port()}/node-meta")
    alice = await member(daemon, "alice")
    await daemon.publish("tree", RENAME)
    frame = await alice.next(timeout=2.0)
    assert frame["Target"]["Path"] == "team-files/plan.md" and "bookmark" not in frame["Target"]["MetaStore"]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_node_meta_lookups_total", outcome="failed") == 1, {k: v for k, v in samples.items() if "node_meta" in k[0]}
    assert value(samples, "wsgw_node_meta_lookups_total", outcome="ok") == 0


@pytest_twisted.ensureDeferred
async def test_shutdown_sends_the_events_still_waiting_for_the_backend(gateway: StartGateway, tmp_path: Path) -> None:
    """SIGTERM while a rename waits for a slow backend: the rename goes out (as published, at its bound) before
    the 1000 close, not lost."""
    backend = ReferenceBackend({"alice": {"bookmark": "true"}}, delay=5.0)
    url, port = serve(backend)
    try:
        daemon = await started(gateway, tmp_path, url)
        alice = await member(daemon, "alice")
        await daemon.publish("tree", RENAME)
        await wait_until(lambda: bool(backend.requests), "the daemon asking the backend")
        await daemon.stop()
        assert (await alice.next())["Type"] == "UPDATE_PATH"
        assert await alice.wait_closed() == (1000, "server shutting down")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_path_holding_a_lone_surrogate_is_asked_about_escaped(gateway: StartGateway, tmp_path: Path) -> None:
    """A Target path with a lone surrogate (valid JSON on the bus, impossible in UTF-8) is sent to the backend
    escaped; the user's metadata comes back as for any node, and the node's next event follows it."""
    backend = ReferenceBackend({"alice": {"bookmark": "true"}})
    url, port = serve(backend)
    try:
        daemon = await started(gateway, tmp_path, url)
        alice = await member(daemon, "alice")
        odd = json.dumps({**RENAME, "Target": {**RENAME["Target"], "Path": "pydiods1/team/\ud800.md"}})
        await daemon.publish("tree", odd)
        await daemon.publish("tree", {"Type": "UPDATE_META", "Target": RENAME["Target"]})
        first = await alice.next()
        assert first["Target"]["Path"] == "team-files/\ud800.md" and first["Target"]["MetaStore"]["bookmark"]
        assert (await alice.next())["Type"] == "UPDATE_META"
        # The two requests travel on two connections: the backend may read either first.
        assert sorted(asked["Node"]["Path"] for asked, _ in backend.requests) == [
            "pydiods1/team/plan.md", "pydiods1/team/\ud800.md"]
    finally:
        await port.stopListening()
