"""The stock Cells frontend and Cells services, exactly: their frames and bus events as they write them, end to end
on the real daemon and Redis (PROTOCOL.md §4.1, §4.3, §5.2).

The frames are the ones of the Cells client (``ChatClient.js``: ``joinRoom``, ``loadHistory``, the 15 s PING;
``PydioWebSocket.js``: subscribe), the bus events the JSON a Go service of Cells writes (``encoding/json``: enums
as numbers, zero values omitted).
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import Client, connect

TEAM = workspace("ws-team", "team-files", "pydiods1/team")
Frame = dict[str, Any]


class UnreadBadge:
    """``useChatNewMessages`` + ``ChatClient.handleMessageReceived`` of the Cells frontend: a room is learned from
    its ROOM_UPDATE, then every message frame routed to it counts one unread, DELETE_MSG one less."""

    def __init__(self, room_type: str, object_id: str) -> None:
        self.identifier = f"{room_type}:{object_id}"
        self.rooms: dict[str, str] = {}
        self.unread = 0

    def receive(self, data: Frame) -> None:
        if data.get("@type") == "ROOM_UPDATE":
            room = data["Room"]
            if f"{room['Type']}:{room['RoomTypeObject']}" == self.identifier:
                self.rooms.setdefault(room["Uuid"], self.identifier)
            return
        message = data["Message"] if data.get("@type") == "DELETE_MSG" else data
        if data.get("@type") in ("VIDEO_CALL", "MAY_HAVE_MORE") or message.get("RoomUuid") not in self.rooms:
            return
        self.unread = max(0, self.unread - 1) if data.get("@type") == "DELETE_MSG" else self.unread + 1


def join(room_type: str, object_id: str) -> Frame:
    """``ChatClient.joinRoom``."""
    return {"@type": "JOIN", "Room": {"Type": room_type, "RoomTypeObject": object_id}}


def load_history(room_type: str, object_id: str, offset: int, limit: int) -> Frame:
    """``ChatClient.loadHistory``."""
    return {"@type": "HISTORY", "Room": {"Type": room_type, "RoomTypeObject": object_id},
            "Message": {"Message": json.dumps({"Offset": offset, "Limit": limit})}}


async def cells_chat(port: int, login: str) -> Client:
    client = await connect(port, "/ws/chat")
    client.send_json({"@type": "subscribe", "jwt": token(login, [TEAM])})
    assert (await client.next())["@type"] == "subscribed"
    return client


async def until(client: Client, badge: UnreadBadge, last: Any) -> list[Frame]:
    """Every frame up to and including the first one ``last(frame)`` accepts, each shown to ``badge``."""
    got: list[Frame] = []
    while True:
        frame = await client.next()
        badge.receive(frame)
        got.append(frame)
        if last(frame):
            return got


def is_error(frame: Frame) -> bool:
    return frame.get("@type") == "error"


MARK = {"@type": "MARK"}  # not a Cells frame: its error answer marks the end of what came before it, in order


@pytest_twisted.ensureDeferred
async def test_a_cells_unread_badge_counts_nothing_for_old_messages(gateway: StartGateway) -> None:
    """A WORKSPACE room holding 3 messages: the badge of a second user's cell JOINs it and counts 0 unread, only
    ROOM_UPDATE arrives (PING included); the chat panel's loadHistory then gets the 3; a new post counts 1."""
    daemon = await gateway()
    alice = await cells_chat(daemon.port, "alice")
    alice.send_json(join("WORKSPACE", "ws-team"))
    room = (await alice.next())["Room"]
    for text in ("one", "two", "three"):
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": room["Uuid"], "Message": text}})
    while (await alice.next()).get("Message") != "three":
        pass

    bob = await cells_chat(daemon.port, "bob")
    badge = UnreadBadge("WORKSPACE", "ws-team")
    bob.send_json(join("WORKSPACE", "ws-team"))
    bob.send_json({**join("WORKSPACE", "ws-team"), "Message": {"Message": "PING"}})
    bob.send_json(MARK)
    frames = await until(bob, badge, is_error)
    assert [f["@type"] for f in frames[:-1]] and {f["@type"] for f in frames[:-1]} == {"ROOM_UPDATE"}
    assert badge.unread == 0

    bob.send_json(load_history("WORKSPACE", "ws-team", 0, 40))
    history = await until(bob, badge, lambda f: f.get("Message") == "three")
    assert [f.get("Message") for f in history if "@type" not in f] == ["one", "two", "three"]
    badge.unread = 0  # the panel is open: the user has read them (ChatIcon's onClick)

    alice.send_json({"@type": "POST", "Message": {"RoomUuid": room["Uuid"], "Message": "four"}})
    await until(bob, badge, lambda f: f.get("Message") == "four")
    assert badge.unread == 1


@pytest_twisted.ensureDeferred
async def test_history_on_join_keeps_the_seed_documents_answer(gateway: StartGateway) -> None:
    """With ``[chat] history_on_join = yes`` a JOIN is answered with ROOM_UPDATE then the room's messages."""
    daemon = await gateway(overrides={"chat.history_on_join": "yes"})
    alice = await cells_chat(daemon.port, "alice")
    alice.send_json(join("WORKSPACE", "ws-team"))
    room = (await alice.next())["Room"]
    alice.send_json({"@type": "POST", "Message": {"RoomUuid": room["Uuid"], "Message": "kept"}})
    while (await alice.next()).get("Message") != "kept":
        pass
    bob = await cells_chat(daemon.port, "bob")
    bob.send_json(join("WORKSPACE", "ws-team"))
    assert (await bob.next())["@type"] == "ROOM_UPDATE"
    assert (await bob.next())["Message"] == "kept"


async def cells_events(port: int, login: str, profile: str = "standard") -> Client:
    """``PydioWebSocket``'s event socket: ``/ws/event``, subscribe with the token."""
    client = await connect(port, "/ws/event")
    client.send_json({"@type": "subscribe", "jwt": token(login, [TEAM], profile=profile)})
    assert (await client.next())["@type"] == "subscribed"
    return client


@pytest_twisted.ensureDeferred
async def test_an_update_user_meta_with_cells_own_policy_encoding_reaches_the_user(gateway: StartGateway) -> None:
    """The UPDATE_USER_META a Cells service publishes, its pydio:meta-policies written by Go's encoding/json
    (Action and Effect numbers), reaches the user the policy allows, in names and without Source; another
    member of the workspace gets nothing (the next event shows it was not held back)."""
    daemon = await gateway()
    alice, bob = await cells_events(daemon.port, "alice"), await cells_events(daemon.port, "bob")
    policies = '[{"Resource":"n1","Action":2,"Subject":"user:alice","Effect":1}]'
    await daemon.publish("meta", {
        "Type": 6,
        "Target": {"Uuid": "n1", "Path": "pydiods1/team/plan.md", "Type": 1, "MetaStore": {"bookmark": "true"}},
        "Source": {"Uuid": "n1", "Path": "pydiods1/team/plan.md", "MetaStore": {"pydio:meta-policies": policies}},
    })
    await daemon.publish("tree", {"Type": 5, "Source": {"Uuid": "n2", "Path": "pydiods1/team/old.txt"}})
    first = await alice.next()
    assert first["Type"] == "UPDATE_USER_META" and "Source" not in first
    assert first["Target"]["Type"] == "LEAF" and first["Target"]["MetaStore"]["bookmark"] == "true"
    assert (await alice.next())["Type"] == "DELETE"
    assert (await bob.next()) == {"Type": "DELETE", "Source": {"Uuid": "n2", "Path": "team-files/old.txt",
                                                               "MetaStore": {"EventWorkspaceId": '"ws-team"'}}}


@pytest_twisted.ensureDeferred
async def test_an_admin_hears_other_users_user_events_with_ctx_username(gateway: StartGateway) -> None:
    """An admin session (the Settings users list) gets every User IDM event, a Type number as its name, and
    Attributes (ctx_username: who made the change) as published; the user named gets it too."""
    daemon = await gateway()
    root = await cells_events(daemon.port, "root", profile="admin")
    carol = await cells_events(daemon.port, "carol")
    event = {"Type": 2, "User": {"Uuid": "u-carol", "Login": "carol", "GroupPath": "/", "Attributes":
                                 {"displayName": "Carol"}}, "Attributes": {"ctx_username": "root"}}
    await daemon.publish("idm", event)
    expected = {**event, "Type": "UPDATE", "@type": "idm"}
    assert await root.next() == expected
    assert await carol.next() == expected


@pytest_twisted.ensureDeferred
async def test_a_task_status_number_reaches_the_owner_as_its_name(gateway: StartGateway) -> None:
    """A TaskChangeEvent whose Status a Go service wrote as a jobs.TaskStatus number reaches the trigger owner
    with the name the frontend's jobs store compares ("Running")."""
    daemon = await gateway()
    alice = await cells_events(daemon.port, "alice")
    await daemon.publish("tasks", {"TaskUpdated": {"ID": "t1", "JobID": "j1", "Status": 2, "TriggerOwner": "alice",
                                                   "Progress": 0.5}, "Job": {"ID": "j1", "Label": "Compress"}})
    assert (await alice.next())["TaskUpdated"]["Status"] == "Running"
