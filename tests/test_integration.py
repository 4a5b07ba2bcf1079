"""End to end: the real gateway service on loopback, the real Redis, real WebSocket clients."""

from __future__ import annotations

import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect

PERSONAL = workspace("ws-alice", "personal-files", "pydiods1/personal/alice")
COMMON = workspace("ws-common", "common-files", "pydiods1/common")
# a second workspace whose root is inside COMMON: a node below it is seen twice by its members
PROJECTS = workspace("ws-projects", "projects", "pydiods1/common/projects")


def node(path: str, uuid: str = "n1", **extra: object) -> dict[str, object]:
    return {"Uuid": uuid, "Path": path, "Type": "LEAF", **extra}


@pytest_twisted.ensureDeferred
async def test_node_event_reaches_the_right_users_only(gateway: StartGateway) -> None:
    """A CREATE in alice's workspace reaches alice rewritten to her slug; bob, without it, gets nothing."""
    daemon = await gateway()
    alice = await connect(daemon.port, "/ws")
    bob = await connect(daemon.port, "/ws/event")
    assert (await alice.subscribe(token("alice", [PERSONAL, COMMON])))["@type"] == "subscribed"
    assert (await bob.subscribe(token("bob", [COMMON])))["user"] == "bob"

    await daemon.publish("tree", {"Type": "CREATE", "Target": node("pydiods1/personal/alice/a.txt")})
    await daemon.publish("tree", {"Type": "UPDATE_CONTENT", "Target": node("pydiods1/common/c.txt", "n2")})

    first = await alice.next()
    assert "Type" not in first  # CREATE is the zero value
    assert first["Target"]["Path"] == "personal-files/a.txt"
    assert first["Target"]["MetaStore"]["EventWorkspaceId"] == '"ws-alice"'
    assert (await alice.next())["Target"]["Path"] == "common-files/c.txt"
    # bob's first frame is the common event: the personal one never reached him
    bob_first = await bob.next()
    assert bob_first["Type"] == "UPDATE_CONTENT" and bob_first["Target"]["Path"] == "common-files/c.txt"


@pytest_twisted.ensureDeferred
async def test_two_workspaces_seeing_one_node_give_two_copies(gateway: StartGateway) -> None:
    """A node visible through two of a user's workspaces arrives twice, once per workspace view."""
    daemon = await gateway()
    carol = await connect(daemon.port)
    await carol.subscribe(token("carol", [COMMON, PROJECTS]))
    await daemon.publish("tree", {"Target": node("pydiods1/common/projects/plan.md")})
    got = {(await carol.next())["Target"]["Path"], (await carol.next())["Target"]["Path"]}
    assert got == {"common-files/projects/plan.md", "projects/plan.md"}


@pytest_twisted.ensureDeferred
async def test_move_out_of_a_workspace_becomes_delete(gateway: StartGateway) -> None:
    """UPDATE_PATH from inside a workspace to outside it reaches its members as a DELETE of the old path."""
    daemon = await gateway()
    bob = await connect(daemon.port)
    await bob.subscribe(token("bob", [COMMON]))
    await daemon.publish("tree", {
        "Type": "UPDATE_PATH",
        "Source": node("pydiods1/common/x.txt"),
        "Target": node("pydiods1/personal/alice/x.txt"),
    })
    frame = await bob.next()
    assert frame["Type"] == "DELETE"
    assert frame["Source"]["Path"] == "common-files/x.txt"
    assert "Target" not in frame


@pytest_twisted.ensureDeferred
async def test_task_idm_and_activity_events_are_routed(gateway: StartGateway) -> None:
    """Task, IDM and activity events go to the users their rules name."""
    daemon = await gateway()
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [PERSONAL], roles="r-team"))
    await daemon.publish("tasks", {"TaskUpdated": {"ID": "t1", "TriggerOwner": "alice", "Status": "Running"}})
    assert (await alice.next())["TaskUpdated"]["ID"] == "t1"
    await daemon.publish("idm", {"Role": {"Uuid": "r-team"}})
    assert (await alice.next())["@type"] == "idm"
    await daemon.publish("activity", {"OwnerType": "USER", "OwnerId": "alice", "BoxName": "inbox",
                                   "Activity": {"actor": {"id": "bob"}, "object": {"name": "/a/b/c.txt"}}})
    frame = await alice.next()
    assert frame["@type"] == "activity" and frame["Activity"]["object"]["name"] == "c.txt"


@pytest_twisted.ensureDeferred
async def test_malformed_bus_event_disturbs_nothing(gateway: StartGateway) -> None:
    """A malformed event is dropped and counted; the next good event is delivered."""
    daemon = await gateway()
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [PERSONAL]))
    await daemon.publish("tree", b"{not json")
    await daemon.publish("tree", [1, 2])
    await daemon.publish("tree", {"Target": {"Path": 42}})
    await daemon.publish("tree", {"Target": node("pydiods1/personal/alice/ok.txt")})
    assert (await alice.next())["Target"]["Path"] == "personal-files/ok.txt"
    assert daemon.service.dispatcher.malformed["tree"] == 3


@pytest_twisted.ensureDeferred
async def test_two_instances_on_one_redis_deliver_to_their_own_sessions(gateway: StartGateway) -> None:
    """Two daemons on one Redis each deliver a published event to their own sockets, once."""
    one = await gateway()
    two = await gateway(prefix=one.prefix)
    a = await connect(one.port)
    b = await connect(two.port)
    await a.subscribe(token("alice", [COMMON]))
    await b.subscribe(token("bob", [COMMON]))
    await one.publish("tree", {"Target": node("pydiods1/common/one.txt")})
    await one.publish("tree", {"Target": node("pydiods1/common/two.txt", "n2")})
    for client in (a, b):
        assert (await client.next())["Target"]["Path"] == "common-files/one.txt"
        assert (await client.next())["Target"]["Path"] == "common-files/two.txt"  # no duplicate between


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_error_and_close_codes(gateway: StartGateway) -> None:
    """Non-JSON and non-object frames close 1003, binary frames 1003, oversized frames 1009, each after an error frame."""
    daemon = await gateway(redis=None)
    cases = [
        (b"not json", False, 1003),
        (b"[1,2]", False, 1003),
        (b"{}", True, 1003),
        (b'{"@type":"subscribe","jwt":"' + b"x" * 3000 + b'"}', False, 1009),
    ]
    for payload, binary, code in cases:
        client = await connect(daemon.port)
        client.sendMessage(payload, isBinary=binary)
        error = await client.next()
        assert error["@type"] == "error"
        assert (await client.wait_closed())[0] == code


@pytest_twisted.ensureDeferred
async def test_invalid_token_closes_4001(gateway: StartGateway) -> None:
    """A token signed with another secret gets an error frame and close 4001."""
    import jwt

    daemon = await gateway(redis=None)
    client = await connect(daemon.port)
    answer = await client.subscribe(jwt.encode({"name": "eve", "exp": 2**31}, "other", algorithm="HS256"))
    assert answer["@type"] == "error"
    assert (await client.wait_closed())[0] == 4001


@pytest_twisted.ensureDeferred
async def test_healthz_reports_the_bus(gateway: StartGateway) -> None:
    """/healthz answers 200 ok on a connected bus."""
    daemon = await gateway()
    response = await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")
    assert response.code == 200
    assert (await response.text()).strip() == "ok"
    missing = await treq.get(f"http://127.0.0.1:{daemon.port}/nope")
    assert missing.code == 404
    await missing.content()


@pytest_twisted.ensureDeferred
async def test_embedded_bus_delivers_published_events(gateway: StartGateway) -> None:
    """With no Redis configured, events published on the embedded bus reach sockets."""
    daemon = await gateway(redis=None)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [PERSONAL]))
    import json

    await daemon.service.bus.publish("tree", json.dumps({"Target": node("pydiods1/personal/alice/e.txt")}).encode())
    assert (await alice.next())["Target"]["Path"] == "personal-files/e.txt"


@pytest_twisted.ensureDeferred
async def test_the_default_tcp6_listener_is_dual_stack(gateway: StartGateway) -> None:
    """A tcp6 listener on [::] (the default kind) accepts IPv4 clients as well as IPv6 ones."""
    daemon = await gateway(redis=None, overrides={"server.listen": r"tcp6:0:interface=\:\:"})
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Get(Protocol):
        def __init__(self) -> None:
            self.answer = b""
            self.done: Deferred[bytes] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(b"GET /healthz HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.answer += data

        def connectionLost(self, reason: object = None) -> None:
            self.done.callback(self.answer)

    v6 = Get()
    await connectProtocol(TCP6ClientEndpoint(reactor, "::1", daemon.port), v6)
    assert (await v6.done).startswith(b"HTTP/1.0 200")
    v4 = await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")
    assert v4.code == 200
    await v4.content()
    client = await connect(daemon.port, "/ws", host="127.0.0.1")
    assert (await client.subscribe(token("alice")))["@type"] == "subscribed"
