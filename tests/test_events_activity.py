"""Tests of the activity rules (PROTOCOL.md §4.4): user inboxes only, basenames, no self-notification."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wsgw.access import Access
from wsgw.events import activity as activity_module
from wsgw.events.activity import ActivityHandler, basename, validate
from wsgw.frames import MalformedEvent
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection


def subscribe(table: SessionTable, login: str, profile: str = "standard") -> RecordingConnection:
    conn = RecordingConnection()
    session = Session(conn)
    table.add(session)
    table.subscribe(session, Access(login, "sub-" + login, profile, frozenset(), ()))
    return conn


def activity_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "OwnerType": "USER",
        "OwnerId": "alice",
        "BoxName": "inbox",
        "Activity": {
            "@context": "https://www.w3.org/ns/activitystreams",
            "type": "Update",
            "id": "act-1",
            "actor": {"type": "Person", "id": "bob", "name": "Bob"},
            "object": {"type": "Document", "id": "n1", "name": "/pydiods1/users/alice/report.pdf"},
            "origin": {"type": "Folder", "id": "n2", "name": "/pydiods1/users/alice/drafts/"},
            "target": {"type": "Folder", "id": "n3", "name": "common/final"},
        },
    }
    event.update(overrides)
    return event


def test_inbox_activity_goes_to_owner_with_basenames(table: SessionTable) -> None:
    """A user-inbox activity reaches the owner with object/origin/target names reduced and "@type":"activity"."""
    alice = subscribe(table, "alice")
    handler = ActivityHandler(table)
    handler.handle(activity_event())
    [frame] = alice.frames
    assert frame["@type"] == "activity"
    assert (
        frame["OwnerId"] == "alice" and frame["BoxName"] == "inbox" and frame["OwnerType"] == "USER"
    )
    assert frame["Activity"]["object"] == {"type": "Document", "id": "n1", "name": "report.pdf"}
    assert frame["Activity"]["origin"]["name"] == "drafts"
    assert frame["Activity"]["target"]["name"] == "final"
    assert frame["Activity"]["actor"] == {"type": "Person", "id": "bob", "name": "Bob"}
    assert frame["Activity"]["type"] == "Update"
    assert handler.delivered == 1


def test_only_present_objects_are_reduced(table: SessionTable) -> None:
    """Absent origin/target stay absent and an object without a name gets no name."""
    alice = subscribe(table, "alice")
    event = activity_event()
    event["Activity"] = {"type": "Create", "actor": {"id": "bob"}, "object": {"id": "n1"}}
    ActivityHandler(table).handle(event)
    [frame] = alice.frames
    assert frame["Activity"] == {"type": "Create", "actor": {"id": "bob"}, "object": {"id": "n1"}}


def test_input_event_is_not_changed(table: SessionTable) -> None:
    """Shaping the frame leaves the published event, and its nested objects, as they were."""
    subscribe(table, "alice")
    event = activity_event()
    original = copy.deepcopy(event)
    ActivityHandler(table).handle(event)
    assert event == original


def test_every_session_of_the_owner_gets_one_copy(table: SessionTable) -> None:
    """Each of the owner's sessions receives the frame once, the same bytes serialized once."""
    a1, a2 = subscribe(table, "alice"), subscribe(table, "alice")
    handler = ActivityHandler(table)
    handler.handle(activity_event())
    assert len(a1.sent) == 1 and a1.sent[0] is a2.sent[0]
    assert handler.delivered == 2


def test_frame_is_encoded_once(table: SessionTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """The frame is serialized once per event, however many sessions the owner has."""
    calls = []
    real = activity_module.encode
    monkeypatch.setattr(activity_module, "encode", lambda obj: calls.append(obj) or real(obj))
    for _ in range(3):
        subscribe(table, "alice")
    ActivityHandler(table).handle(activity_event())
    assert len(calls) == 1


def test_other_users_and_admins_get_nothing(table: SessionTable) -> None:
    """Sessions of other users, admins included, and the actor receive nothing."""
    subscribe(table, "alice")
    others = [subscribe(table, "bob"), subscribe(table, "carol"), subscribe(table, "root", "admin")]
    ActivityHandler(table).handle(activity_event())
    assert all(conn.sent == [] for conn in others)


def test_owner_is_not_notified_of_their_own_action(table: SessionTable) -> None:
    """When the actor is the owner, nobody is notified."""
    alice = subscribe(table, "alice")
    bob = subscribe(table, "bob")
    event = activity_event()
    event["Activity"]["actor"]["id"] = "alice"
    handler = ActivityHandler(table)
    handler.handle(event)
    assert alice.sent == [] and bob.sent == []
    assert handler.delivered == 0


def test_activity_without_actor_goes_to_owner(table: SessionTable) -> None:
    """An activity with no actor is nobody's own action: the owner is notified."""
    alice = subscribe(table, "alice")
    event = activity_event()
    del event["Activity"]["actor"]
    ActivityHandler(table).handle(event)
    assert len(alice.sent) == 1


def test_activity_without_owner_goes_nowhere(table: SessionTable) -> None:
    """An activity with no OwnerId reaches nobody."""
    alice = subscribe(table, "alice")
    handler = ActivityHandler(table)
    handler.handle(activity_event(OwnerId=""))
    assert alice.sent == [] and handler.delivered == 0


@pytest.mark.parametrize(
    "box, owner_type, sent",
    [
        ("inbox", "USER", True),
        ("inbox", "NODE", True),  # inbox alone is enough
        ("inbox", None, True),
        ("outbox", "USER", True),  # USER alone is enough
        ("outbox", 1, True),  # the enum number of USER
        ("outbox", "NODE", False),  # skipped only when both conditions hold
        ("outbox", None, False),  # absent OwnerType is the zero value NODE
        ("outbox", 0, False),
        (None, "NODE", False),
        (None, None, False),
        (None, "USER", True),
    ],
)
def test_skip_only_when_not_inbox_and_not_user(
    table: SessionTable, box: Any, owner_type: Any, sent: bool
) -> None:
    """An activity is skipped only when BoxName is not inbox and OwnerType is not USER (absent = NODE)."""
    alice = subscribe(table, "alice")
    event = activity_event()
    for key, value in (("BoxName", box), ("OwnerType", owner_type)):
        if value is None:
            del event[key]
        else:
            event[key] = value
    ActivityHandler(table).handle(event)
    assert (len(alice.sent) == 1) is sent
    assert (validate(event) is None) is not sent


def test_skipped_events_are_not_inspected(table: SessionTable) -> None:
    """A skipped event costs nothing more: its Activity is not even checked (no MalformedEvent)."""
    event = {"OwnerType": "NODE", "BoxName": "outbox", "Activity": "not an object"}
    assert validate(event) is None
    ActivityHandler(table).handle(event)


@pytest.mark.parametrize(
    "path, name",
    [
        ("/pydiods1/users/alice/report.pdf", "report.pdf"),
        ("report.pdf", "report.pdf"),
        ("a/b/folder/", "folder"),
        ("a//b", "b"),
        ("/", "/"),
        ("", ""),
        ("/été/ça.txt", "ça.txt"),
    ],
)
def test_basename(path: str, name: str) -> None:
    """basename keeps the last path element, ignores trailing slashes and leaves empty names empty."""
    assert basename(path) == name


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"OwnerType": "USER", "OwnerId": "alice"}, "Activity"),
        ({"BoxName": "inbox", "Activity": ["x"]}, "Activity"),
        ({"BoxName": 1, "OwnerType": "USER", "Activity": {}}, "BoxName"),
        ({"OwnerType": True, "BoxName": "inbox", "Activity": {}}, "OwnerType"),
        ({"OwnerType": ["USER"], "Activity": {}}, "OwnerType"),
        ({"BoxName": "inbox", "OwnerId": 7, "Activity": {}}, "OwnerId"),
        ({"BoxName": "inbox", "OwnerId": "alice", "Activity": {"actor": "bob"}}, "actor"),
        ({"BoxName": "inbox", "OwnerId": "alice", "Activity": {"actor": {"id": 2}}}, "id"),
        ({"BoxName": "inbox", "OwnerId": "alice", "Activity": {"object": "/a/b"}}, "object"),
        ({"BoxName": "inbox", "OwnerId": "alice", "Activity": {"origin": {"name": 3}}}, "name"),
        ({"BoxName": "inbox", "OwnerId": "alice", "Activity": {"target": {"name": {}}}}, "name"),
        ([], "object"),
    ],
)
def test_malformed_activity_events_raise(table: SessionTable, event: Any, reason: str) -> None:
    """An activity event with a missing Activity or a wrongly typed part raises MalformedEvent and sends nothing."""
    alice = subscribe(table, "alice")
    handler = ActivityHandler(table)
    with pytest.raises(MalformedEvent, match=reason):
        handler.handle(event)
    assert alice.sent == [] and handler.delivered == 0


@pytest.mark.parametrize("owner_type, box, sent", [(1, "outbox", "USER"), ("USER", "outbox", "USER"),
                                                   (0, "inbox", "NODE")])
def test_an_owner_type_number_is_read_and_sent_as_its_name(table: SessionTable, owner_type: Any, box: str,
                                                            sent: str) -> None:
    """OwnerType as Go's encoding/json writes it (an activity.OwnerType number) decides like its name, and the
    client gets the name."""
    alice = subscribe(table, "alice")
    ActivityHandler(table).handle(activity_event(OwnerType=owner_type, BoxName=box))
    [frame] = alice.frames
    assert frame["OwnerType"] == sent


@pytest.mark.parametrize("owner_type", ["GROUP", "user", 2, True])
def test_an_unknown_owner_type_is_malformed(table: SessionTable, owner_type: Any) -> None:
    """An OwnerType that is neither an activity.OwnerType name nor one of its numbers is refused, naming it."""
    with pytest.raises(MalformedEvent, match="OwnerType"):
        ActivityHandler(table).handle(activity_event(OwnerType=owner_type))


def test_object_type_numbers_reach_the_client_as_names(table: SessionTable) -> None:
    """The activity's type and its actor's, object's, origin's and target's, as activity.ObjectType numbers (Go's
    encoding/json), reach the client as names; an unknown one is malformed."""
    alice = subscribe(table, "alice")
    event = activity_event()
    activity = event["Activity"]
    numbered = {**event, "Activity": {**activity, "type": 45, "actor": {**activity["actor"], "type": 5},
                                      "object": {**activity["object"], "type": 9}}}
    ActivityHandler(table).handle(numbered)
    [frame] = alice.frames
    shaped = frame["Activity"]
    assert (shaped["type"], shaped["actor"]["type"], shaped["object"]["type"]) == ("Update", "Person", "Document")
    assert shaped["object"]["name"] == "report.pdf" and numbered["Activity"]["type"] == 45
    with pytest.raises(MalformedEvent, match="Activity.object.type"):
        ActivityHandler(table).handle({**event, "Activity": {**activity, "object": {"type": 99, "name": "x"}}})
