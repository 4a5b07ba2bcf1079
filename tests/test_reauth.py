"""Live re-authorization (PROTOCOL.md §3.1) on the real daemon, Redis and WebSocket clients: an IDM event that can
change what sessions may see makes the gateway re-derive their access itself, with the ``claims`` resolver and with
an ``http`` access backend on loopback; the clients here never re-subscribe unless a test says so."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support.daemon import SECRET, Daemon, StartGateway, scrape, token, value, workspace
from tests.support.waiting import eventually, wait_until
from tests.support.wsclient import Client, connect
from wsgw.revocations import Revocation

WS_A = workspace("ws-a", "files-a", "pydiods1/a")
WS_B = workspace("ws-b", "files-b", "pydiods1/b")


def create(root: str, seq: int) -> dict[str, Any]:
    """A CREATE of node ``<root>-<seq>`` under workspace root ``pydiods1/<root>``."""
    return {"Type": "CREATE", "Target": {"Uuid": f"{root}-{seq}", "Path": f"pydiods1/{root}/f{seq}.txt",
                                         "Type": "LEAF", "MetaStore": {"name": json.dumps(f"f{seq}.txt")}}}


def node(frame: dict[str, Any]) -> str:
    """``a-3`` for a node frame of ``create("a", 3)``, else the frame's ``@type``."""
    target = frame.get("Target") or frame.get("Source")
    return target["Uuid"] if target and "@type" not in frame else frame["@type"]


async def received(client: Client, until: str) -> list[str]:
    """What ``client`` receives (``node`` of each frame) up to the node frame ``until``, included."""
    got: list[str] = []
    while not got or got[-1] != until:
        got.append(node(await client.next()))
    return got


async def subscribed(daemon: Daemon, jwt_: str, path: str = "/ws") -> Client:
    client = await connect(daemon.port, path)
    answer = await client.subscribe(jwt_)
    assert answer["@type"] == "subscribed", answer
    return client


async def closed_with(client: Client) -> tuple[list[Any], int | None]:
    """Every frame the client got before its close, and the close code."""
    code, _ = await client.wait_closed()
    frames = []
    while client.frames.pending:
        frames.append(client.frames.pending.pop(0))
    return frames, code


# -- the claims resolver: what the event says ---------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_claims_a_deleted_workspace_leaves_every_session_and_stays_out(gateway: StartGateway) -> None:
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A, WS_B], iat=int(time.time()) - 5))
    bob = await subscribed(daemon, token("bob", [WS_B]))
    await daemon.publish("tree", create("a", 1))
    assert await received(alice, "a-1") == ["a-1"]
    await daemon.publish("idm", {"Type": "DELETE", "Workspace": {"UUID": "ws-a", "Slug": "files-a"}})
    assert (await alice.next())["@type"] == "idm"  # the IDM frame first, on the old access (§4.3 rule 5)
    await daemon.publish("tree", create("a", 2))
    await daemon.publish("tree", create("b", 1))
    assert await received(alice, "b-1") == ["b-1"]  # never a-2
    assert await received(bob, "b-1") == ["b-1"]
    # the same old token again (the stock client's refresh) does not bring it back; a token issued later does
    assert (await alice.subscribe(token("alice", [WS_A, WS_B], iat=int(time.time()) - 5)))["@type"] == "subscribed"
    later = await subscribed(daemon, token("alice", [WS_A], iat=int(time.time()) + 2))
    await daemon.publish("tree", create("a", 3))
    await daemon.publish("tree", create("b", 2))
    assert await received(alice, "b-2") == ["b-2"]
    assert await received(later, "a-3") == ["a-3"]


@pytest_twisted.ensureDeferred
async def test_claims_deletions_are_kept_across_a_restart(gateway: StartGateway) -> None:
    """The revocations the claims rules derive are kept in Redis: an instance started after the events still
    withholds the deleted workspace and refuses the deleted user's old token."""
    daemon = await gateway()
    old_alice, old_bob = token("alice", [WS_A, WS_B]), token("bob", [WS_A])
    await daemon.publish("idm", {"Type": "DELETE", "Workspace": {"UUID": "ws-a"}})
    await daemon.publish("idm", {"Type": "DELETE", "User": {"Login": "bob"}})
    keys = [f"{daemon.prefix}:revoked:workspace:ws-a", f"{daemon.prefix}:revoked:login:bob"]
    await eventually(lambda: daemon.publisher.exists(*keys), "both kept in Redis")
    await daemon.stop()
    restarted = await gateway(prefix=daemon.prefix)
    alice = await subscribed(restarted, old_alice)
    await restarted.publish("tree", create("a", 1))
    await restarted.publish("tree", create("b", 1))
    assert await received(alice, "b-1") == ["b-1"]
    bob = await connect(restarted.port)
    assert await bob.subscribe(old_bob) == {"@type": "error", "error": "subscribe: token revoked"}


@pytest_twisted.ensureDeferred
async def test_claims_a_workspace_deleted_while_the_instance_was_off_the_bus_leaves_its_live_sessions(
        gateway: StartGateway) -> None:
    """Another instance kept the deletion of ws-a in Redis while this one's bus subscriber was down (the IDM event
    lost here): once it reconnected and loaded the store again, alice's live session no longer gets ws-a, without
    re-subscribing (PROTOCOL.md §3.1: "a deleted workspace leaves every session's access")."""
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A, WS_B], iat=int(time.time()) - 5))
    await daemon.service.revocation_store.save(Revocation("workspace", "ws-a", time.time()), time.time() + 60)
    subscriber = daemon.service.bus.links[0]
    subscriber._ready.transport.loseConnection()  # the subscriber drops; the client reconnects by itself
    await wait_until(lambda: subscriber.reconnects == 1, "the bus subscriber to reconnect")
    await wait_until(lambda: len(daemon.service.gateway.revocations) == 1, "the store loaded again")
    await daemon.publish("tree", create("a", 1))
    await daemon.publish("tree", create("b", 1))
    assert await received(alice, "b-1") == ["b-1"]


@pytest_twisted.ensureDeferred
async def test_claims_a_deleted_user_is_closed_4003_and_refused_after(gateway: StartGateway) -> None:
    daemon = await gateway()
    old = token("alice", [WS_A])
    alice, alice_chat = await subscribed(daemon, old), await subscribed(daemon, old, "/chat")
    bob = await subscribed(daemon, token("bob", [WS_A]))
    await daemon.publish("idm", {"Type": "DELETE", "User": {"Login": "alice", "Uuid": "uuid-alice"}})
    frames, code = await closed_with(alice)
    assert code == 4003 and frames[-1] == {"@type": "error", "error": "access revoked: user deleted"}
    assert [f["@type"] for f in frames] == ["idm", "error"]
    assert (await closed_with(alice_chat))[1] == 4003
    await daemon.publish("tree", create("a", 1))
    assert await received(bob, "a-1") == ["a-1"]
    again = await connect(daemon.port)
    assert await again.subscribe(old) == {"@type": "error", "error": "subscribe: token revoked"}
    assert (await again.wait_closed())[0] == 4001


@pytest_twisted.ensureDeferred
async def test_claims_a_user_deleted_by_uuid_closes_the_sessions_of_that_sub(gateway: StartGateway) -> None:
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A], sub="u-17"))
    await daemon.publish("idm", {"Type": "DELETE", "User": {"Uuid": "u-17"}})
    assert (await closed_with(alice))[1] == 4003


@pytest_twisted.ensureDeferred
async def test_claims_role_changes_wait_for_the_clients_refresh(gateway: StartGateway) -> None:
    """A role's ACL removed or a role deleted cannot be known from a token: the access stays until the client
    re-subscribes (with a token its issuer made after the change)."""
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A], roles="r1"))
    await daemon.publish("idm", {"Type": "DELETE", "Acl": {"RoleID": "r1", "Action": {"Name": "read"}}})
    await daemon.publish("idm", {"Type": "DELETE", "Role": {"Uuid": "r1"}})
    await daemon.publish("tree", create("a", 1))
    assert await received(alice, "a-1") == ["idm", "idm", "a-1"]


@pytest_twisted.ensureDeferred
async def test_claims_what_was_queued_for_a_deleted_workspace_is_not_sent(gateway: StartGateway) -> None:
    """200 events of ws-a at once: pacing sends 20 and holds the rest; the workspace is deleted: every event is
    either received before or withdrawn, none after."""
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A, WS_B]))
    await daemon.publisher.publish_many("tree", [create("a", i) for i in range(200)])
    await wait_until(lambda: daemon.service.dispatcher.received["tree"] == 200, "the 200 events")
    withdrawn = daemon.service.gateway.withdrawn
    await daemon.publish("idm", {"Type": "DELETE", "Workspace": {"UUID": "ws-a"}})
    await daemon.publish("tree", create("b", 1))
    got = await received(alice, "b-1")
    assert "idm" in got
    assert len([n for n in got if n.startswith("a-")]) + daemon.service.gateway.withdrawn - withdrawn == 200
    assert daemon.service.gateway.withdrawn - withdrawn >= 150


# -- the http resolver: ask the backend again ------------------------------------------------------------------------

class AccessBackend(Resource):
    """``GET`` with a bearer token: the access of the token's login (``access[login]``), or ``status[login]``;
    ``delay`` seconds late; it counts the requests by login."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.access: dict[str, dict[str, Any]] = {}
        self.status: dict[str, int] = {}
        self.delay = 0.0
        self.asked: dict[str, int] = {}
        self.url = ""

    def render_GET(self, request: Request) -> bytes | int:
        bearer = (request.getHeader(b"authorization") or b"").decode().removeprefix("Bearer ")
        login = jwt.decode(bearer, SECRET, algorithms=["HS256"])["name"]
        self.asked[login] = self.asked.get(login, 0) + 1
        status = self.status.get(login, 200)
        request.setResponseCode(status)
        answer = json.dumps(self.access.get(login, {})).encode()
        if not self.delay:
            return answer
        call = reactor.callLater(self.delay, lambda: (request.write(answer), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


@pytest_twisted.async_yield_fixture
async def backend() -> AsyncIterator[AccessBackend]:
    """An AccessBackend listening on loopback (``backend.url``) for the test's duration."""
    resource = AccessBackend()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/access"
    yield resource
    await port.stopListening()


def with_backend(gateway: StartGateway, backend: AccessBackend) -> Deferred[Daemon]:
    """A daemon resolving access through ``backend`` (answers cached 60 s: only a re-derivation asks again)."""
    return Deferred.fromCoroutine(gateway(admin="tcp:0:interface=127.0.0.1", overrides={
        "access.resolver": "http", "access.url": backend.url, "access.cache_ttl": "60"}))


def both(roles: list[str]) -> dict[str, Any]:
    return {"profile": "standard", "roles": roles, "workspaces": [WS_A, WS_B]}


HTTP_CHANGES = {
    "acl": {"Type": "DELETE", "Acl": {"RoleID": "r1", "Action": {"Name": "read"}, "WorkspaceID": "ws-a"}},
    "role": {"Type": "DELETE", "Role": {"Uuid": "r1"}},
    "workspace": {"Type": "DELETE", "Workspace": {"UUID": "ws-a"}},
}


@pytest_twisted.ensureDeferred
async def test_http_each_idm_change_re_asks_the_backend_past_its_cache(gateway: StartGateway,
                                                                       backend: AccessBackend) -> None:
    """For a role ACL removed, a role deleted and a workspace deleted: the sessions designated get the backend's
    new answer (here: ws-a gone for alice), asked once per distinct token; bob (r2) is not asked again."""
    for kind, event in HTTP_CHANGES.items():
        backend.asked.clear()
        backend.access = {"alice": both(["r1"]), "bob": {"profile": "standard", "roles": ["r2"],
                                                        "workspaces": [WS_B]}}
        daemon = await with_backend(gateway, backend)
        alice_jwt = token("alice")
        alice, alice2 = await subscribed(daemon, alice_jwt), await subscribed(daemon, alice_jwt)
        bob = await subscribed(daemon, token("bob"))
        assert backend.asked == {"alice": 1, "bob": 1}, kind  # the second socket was answered from the cache
        backend.access["alice"] = {"profile": "standard", "roles": ["r1"], "workspaces": [WS_B]}
        await daemon.publish("idm", event)
        await daemon.publish("tree", create("a", 1))
        await daemon.publish("tree", create("b", 1))
        for client in (alice, alice2):
            assert [n for n in await received(client, "b-1") if n != "idm"] == ["b-1"], kind
        assert [n for n in await received(bob, "b-1") if n != "idm"] == ["b-1"], kind
        assert backend.asked == {"alice": 2, "bob": 1}, kind
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_http_frames_wait_while_the_backend_thinks(gateway: StartGateway, backend: AccessBackend) -> None:
    """A backend answering in 300 ms: the node frames published meanwhile wait and are re-filtered by the new
    access, so not one frame of ws-a goes out after the event."""
    backend.access = {"alice": both(["r1"])}
    daemon = await with_backend(gateway, backend)
    alice = await subscribed(daemon, token("alice"))
    backend.access["alice"] = {"profile": "standard", "roles": ["r1"], "workspaces": [WS_B]}
    backend.delay = 0.3
    await daemon.publish("idm", HTTP_CHANGES["role"])
    await daemon.publish("tree", create("a", 1))
    await daemon.publish("tree", create("b", 1))
    assert await received(alice, "b-1") == ["idm", "b-1"]


@pytest_twisted.ensureDeferred
async def test_http_a_refusal_closes_4003_and_a_backend_down_closes_1013(gateway: StartGateway, backend: AccessBackend) -> None:
    backend.access = {"alice": both(["r1"]), "carol": both(["r1"]), "bob": both(["r2"])}
    daemon = await with_backend(gateway, backend)
    alice, carol = await subscribed(daemon, token("alice")), await subscribed(daemon, token("carol"))
    bob = await subscribed(daemon, token("bob"))
    backend.status = {"alice": 404, "carol": 503}
    await daemon.publish("idm", HTTP_CHANGES["acl"])
    frames, code = await closed_with(alice)
    assert code == 4003 and frames[-1]["error"] == "access revoked: the access backend refused the token"
    frames, code = await closed_with(carol)
    assert code == 1013 and frames[-1]["error"].startswith("access unknown: ")
    await daemon.publish("tree", create("a", 1))
    assert await received(bob, "a-1") == ["a-1"]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_reauthorization_events_total") == 1
    assert [value(samples, "wsgw_reauthorized_sessions_total", outcome=o) for o in ("refused", "unavailable")] == [
        1, 1]
    assert value(samples, "wsgw_sessions_revoked_total", why="backend_refused") == 1
    assert value(samples, "wsgw_reauthorization_sessions_suspended") == 0


@pytest_twisted.ensureDeferred
async def test_http_a_chat_socket_leaves_the_room_it_may_no_longer_join(gateway: StartGateway,
                                                                       backend: AccessBackend) -> None:
    """alice loses ws-a: her socket leaves the ws-a room, and bob, still in it, sees her presence go."""
    backend.access = {"alice": both(["r1"]), "bob": both(["r2"])}
    daemon = await with_backend(gateway, backend)
    room = {"Type": "WORKSPACE", "RoomTypeObject": "ws-a"}
    alice, bob = await subscribed(daemon, token("alice"), "/chat"), await subscribed(daemon, token("bob"), "/chat")
    alice.send_json({"@type": "JOIN", "Room": room})
    assert (await alice.next())["Room"]["Users"] == ["alice"]
    bob.send_json({"@type": "JOIN", "Room": room})
    while (await bob.next())["Room"]["Users"] != ["alice", "bob"]:
        pass
    backend.access["alice"] = {"profile": "standard", "roles": ["r1"], "workspaces": [WS_B]}
    await daemon.publish("idm", HTTP_CHANGES["workspace"])
    users: list[str] | None = None
    while users != ["bob"]:
        frame = await bob.next()
        users = frame["Room"]["Users"] if frame.get("@type") == "ROOM_UPDATE" else users
        # (alice's own join may reach bob late, through the bus, as ["alice"])
        assert users in (["bob"], ["alice", "bob"], ["alice"]), frame


@pytest_twisted.ensureDeferred
async def test_http_idm_events_faster_than_the_backend_never_hold_frames_past_the_timeout(
        gateway: StartGateway, backend: AccessBackend) -> None:
    """The backend answers in 0.5 s and IDM events come every 0.25 s (about bob's role r2; one first about alice's
    r1): every answer predates the latest event, so it is asked again; but alice's frames are not held forever:
    within the resolver's timeout (2 s here) plus one answer she is closed 1013 (PROTOCOL.md §3.1)."""
    backend.access = {"alice": both(["r1"]), "bob": both(["r2"])}
    daemon = await Deferred.fromCoroutine(gateway(admin="tcp:0:interface=127.0.0.1", overrides={
        "access.resolver": "http", "access.url": backend.url, "access.cache_ttl": "60", "access.timeout": "2"}))
    alice = await subscribed(daemon, token("alice"))
    await subscribed(daemon, token("bob"))
    backend.delay = 0.5
    await daemon.publish("idm", HTTP_CHANGES["acl"])
    started = time.monotonic()
    closed = alice.wait_closed(timeout=30)
    while not closed.called and time.monotonic() - started < 6:
        await daemon.publish("idm", {"Type": "UPDATE", "Acl": {"RoleID": "r2", "Action": {"Name": "read"}}})
        await task.deferLater(reactor, 0.25, lambda: None)  # the stream of events: one every 0.25 s
    assert closed.called, "alice's session is still suspended after 6 s"
    frames, code = await closed_with(alice)
    assert code == 1013 and frames[-1]["error"].startswith("access unknown: ")
    assert time.monotonic() - started < 3.5


@pytest_twisted.ensureDeferred
async def test_http_an_idm_frame_waiting_behind_a_re_derivation_is_still_delivered(
        gateway: StartGateway, backend: AccessBackend) -> None:
    """Two IDM events in a row: an ACL change of alice's r1 (her frames wait for the backend), then the deletion of
    her role r2. The second frame was addressed to alice (she had r2 when it came): it reaches her although her new
    access no longer has r2 (PROTOCOL.md §3.1: "The IDM frame goes first, to its recipients as computed on the old
    access; then the change applies")."""
    backend.access = {"alice": both(["r1", "r2"])}
    daemon = await with_backend(gateway, backend)
    alice = await subscribed(daemon, token("alice"))
    backend.access["alice"] = both(["r1"])
    backend.delay = 0.3
    await daemon.publish("idm", {"Type": "UPDATE", "Acl": {"RoleID": "r1", "Action": {"Name": "read"}}})
    await daemon.publish("idm", {"Type": "DELETE", "Role": {"Uuid": "r2"}})
    await daemon.publish("tree", create("a", 1))
    got = []
    while not got or got[-1] != "a-1":
        frame = await alice.next()
        got.append(frame.get("Role", frame.get("Acl", {})).get("Uuid", "acl") if frame.get("@type") == "idm"
                   else node(frame))
    assert got == ["acl", "r2", "a-1"]


@pytest_twisted.ensureDeferred
async def test_http_a_prompt_reader_past_the_bound_while_held_is_closed_1013_not_4008(
        gateway: StartGateway, backend: AccessBackend) -> None:
    """max_queued_bytes 64 KiB, a backend answering in 1 s: 400 node frames (about 100 KB) of ws-a come while
    her frames are held. She reads all along, so she is not "too slow" (PROTOCOL.md §4.1: only a reader that stops
    reading is closed 4008); the bound still holds: her access unknown, she is closed 1013 (try again)."""
    backend.access = {"alice": both(["r1"])}
    daemon = await Deferred.fromCoroutine(gateway(admin="tcp:0:interface=127.0.0.1", overrides={
        "access.resolver": "http", "access.url": backend.url, "access.cache_ttl": "60",
        "delivery.max_queued_bytes": "65536"}))
    alice = await subscribed(daemon, token("alice"))
    backend.delay = 1.0
    await daemon.publish("idm", HTTP_CHANGES["role"])
    await daemon.publisher.publish_many("tree", [
        {"Type": "DELETE", "Target": {"Uuid": f"a-{i}", "Path": f"pydiods1/a/{'x' * 100}{i}"}} for i in range(400)])
    frames, code = await closed_with(alice)
    assert code == 1013 and [f["@type"] for f in frames] == ["idm"]


@pytest_twisted.ensureDeferred
async def test_tokens_that_would_escape_a_revocation_are_refused(gateway: StartGateway) -> None:
    """Revocations match by ``iat`` and live max_token_lifetime (+ leeway): a token issued in the future, or
    living longer (from its iat, 0 included; from now without one), would outlive them."""
    daemon = await gateway(overrides={"auth.max_token_lifetime": "3600"})
    now = int(time.time())
    for claims, reason in [
        ({"iat": now + 120}, "token issued in the future (iat)"),
        ({"iat": 0}, "token lives longer than 3600 s (exp - iat)"),
        ({"iat": now - 10, "ttl": 3700}, "token lives longer than 3600 s (exp - iat)"),
        ({"ttl": 3700}, "token lives longer than 3600 s (exp - iat)"),
    ]:
        client = await connect(daemon.port)
        answer = await client.subscribe(token("alice", [WS_A], **claims))
        assert answer == {"@type": "error", "error": f"subscribe: {reason}"}, claims
        assert (await client.wait_closed())[0] == 4001
    for claims in ({"iat": now + 20}, {"iat": now - 10, "ttl": 3500}, {"ttl": 3500}):  # within the leeway (30 s)
        assert (await (await connect(daemon.port)).subscribe(token("alice", [WS_A], **claims)))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_claims_a_deletion_naming_a_user_and_a_workspace_applies_both(gateway: StartGateway) -> None:
    daemon = await gateway()
    alice = await subscribed(daemon, token("alice", [WS_A]))
    bob = await subscribed(daemon, token("bob", [WS_A, WS_B]))
    await daemon.publish("idm", {"Type": "DELETE", "User": {"Login": "alice"}, "Workspace": {"UUID": "ws-a"}})
    assert (await closed_with(alice))[1] == 4003
    await daemon.publish("tree", create("a", 1))
    await daemon.publish("tree", create("b", 1))
    assert await received(bob, "b-1") == ["b-1"]
