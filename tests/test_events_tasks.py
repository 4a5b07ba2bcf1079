"""Tests of the task rules (PROTOCOL.md §4.2): owner sessions, admins for system tasks, one frame per event."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsgw.access import Access, Workspace
from wsgw.events import tasks as tasks_module
from wsgw.events.tasks import SYSTEM_USER, TaskHandler
from wsgw.frames import MalformedEvent
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection


class BrokenConnection(RecordingConnection):
    """A connection whose send fails."""

    def write(self, payload: bytes) -> None:
        raise RuntimeError("socket gone")


def subscribe(
    table: SessionTable,
    login: str,
    *,
    profile: str = "standard",
    connection: RecordingConnection | None = None,
) -> tuple[Session, RecordingConnection]:
    conn = connection or RecordingConnection()
    session = Session(conn)
    table.add(session)
    table.subscribe(
        session,
        Access(login, "sub-" + login, profile, frozenset(), (Workspace("ws1", "common", ()),)),
    )
    return session, conn


def task_event(owner: Any = "alice", **task: Any) -> dict[str, Any]:
    return {
        "TaskUpdated": {
            "ID": "t1",
            "JobID": "j1",
            "Status": "Running",
            "TriggerOwner": owner,
            "Progress": 0.5,
            **task,
        },
        "Job": {"ID": "j1", "Label": "Compress", "Owner": owner},
        "NanoStamp": "1718022000000000000",
    }


def test_owner_sessions_get_the_event_unchanged(table: SessionTable) -> None:
    """Every session of the trigger owner receives the event exactly as published."""
    _, a1 = subscribe(table, "alice")
    _, a2 = subscribe(table, "alice")
    handler = TaskHandler(table)
    event = task_event()
    original = json.loads(json.dumps(event))
    handler.handle(event)
    assert a1.frames == [original]
    assert a2.frames == [original]
    assert event == original
    assert handler.delivered == 2


def test_other_users_and_admins_get_nothing_for_a_user_task(table: SessionTable) -> None:
    """A user's task reaches neither other users nor admins."""
    subscribe(table, "alice")
    _, bob = subscribe(table, "bob")
    _, admin = subscribe(table, "root", profile="admin")
    TaskHandler(table).handle(task_event("alice"))
    assert bob.sent == [] and admin.sent == []


def test_system_task_goes_to_every_admin(table: SessionTable) -> None:
    """A task owned by pydio.system.user reaches every admin session and no one else."""
    _, admin1 = subscribe(table, "root", profile="admin")
    _, admin2 = subscribe(table, "boss", profile="admin")
    _, user = subscribe(table, "alice")
    handler = TaskHandler(table)
    handler.handle(task_event(SYSTEM_USER))
    assert len(admin1.frames) == 1 and len(admin2.frames) == 1
    assert user.sent == []
    assert handler.delivered == 2


def test_admin_who_is_the_system_user_gets_one_copy(table: SessionTable) -> None:
    """A session that is both the owner and an admin receives a system task once."""
    _, system_admin = subscribe(table, SYSTEM_USER, profile="admin")
    handler = TaskHandler(table)
    handler.handle(task_event(SYSTEM_USER))
    assert len(system_admin.sent) == 1
    assert handler.delivered == 1


def test_task_without_owner_goes_nowhere(table: SessionTable) -> None:
    """A task with no TriggerOwner is delivered to nobody."""
    _, admin = subscribe(table, "root", profile="admin")
    handler = TaskHandler(table)
    handler.handle({"TaskUpdated": {"ID": "t1"}})
    assert admin.sent == [] and handler.delivered == 0


def test_frame_is_encoded_once_and_shared(
    table: SessionTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event is serialized once and the same bytes object goes to every recipient."""
    calls = []
    real = tasks_module.encode
    monkeypatch.setattr(tasks_module, "encode", lambda obj: calls.append(obj) or real(obj))
    _, a1 = subscribe(table, "root", profile="admin")
    _, a2 = subscribe(table, "boss", profile="admin")
    TaskHandler(table).handle(task_event(SYSTEM_USER))
    assert len(calls) == 1
    assert a1.sent[0] is a2.sent[0]


def test_a_failing_recipient_does_not_stop_the_others(table: SessionTable) -> None:
    """When one session's send raises, the other sessions still receive the event."""
    subscribe(table, "alice", connection=BrokenConnection())
    _, good = subscribe(table, "alice")
    handler = TaskHandler(table)
    handler.handle(task_event())
    assert len(good.sent) == 1
    assert handler.delivered == 1


def test_a_session_leaving_during_the_fan_out_does_not_break_it(table: SessionTable) -> None:
    """A session removed from the table while the event is being sent does not stop the fan-out."""

    class LeavingConnection(RecordingConnection):
        def write(self, payload: bytes) -> None:
            super().write(payload)
            table.unsubscribe(session)

    conns = [subscribe(table, "alice")[1] for _ in range(3)]
    session, leaving = subscribe(table, "alice", connection=LeavingConnection())
    handler = TaskHandler(table)
    handler.handle(task_event())
    assert [len(c.sent) for c in conns + [leaving]] == [1, 1, 1, 1]
    assert handler.delivered == 4


def test_unsubscribed_session_gets_nothing(table: SessionTable) -> None:
    """A session that unsubscribed no longer receives its user's tasks."""
    session, conn = subscribe(table, "alice")
    table.unsubscribe(session)
    TaskHandler(table).handle(task_event())
    assert conn.sent == []


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"Job": {"ID": "j1"}}, "TaskUpdated"),
        ({"TaskUpdated": "t1"}, "TaskUpdated"),
        ({"TaskUpdated": {"TriggerOwner": 7}}, "TriggerOwner"),
        ({"TaskUpdated": {"TriggerOwner": "alice"}, "Job": []}, "Job"),
        (["TaskUpdated"], "object"),
    ],
)
def test_malformed_task_events_raise(table: SessionTable, event: Any, reason: str) -> None:
    """A task event of the wrong shape raises MalformedEvent naming the faulty part, and sends nothing."""
    _, alice = subscribe(table, "alice")
    handler = TaskHandler(table)
    with pytest.raises(MalformedEvent, match=reason):
        handler.handle(event)
    assert alice.sent == [] and handler.delivered == 0


@pytest.mark.parametrize("status, sent", [("Running", "Running"), (2, "Running"), (0, "Unknown"), (8, "Queued")])
def test_a_status_number_reaches_the_client_as_its_name(table: SessionTable, status: Any, sent: str) -> None:
    """TaskUpdated.Status as Go's encoding/json writes it (a jobs.TaskStatus number) reaches the client as its
    name (protojson would leave the zero value out: the frontend reads an explicit "Unknown" the same way), the
    rest of the event unchanged; a name passes as it is."""
    _, alice = subscribe(table, "alice")
    event = task_event(Status=status)
    TaskHandler(table).handle(event)
    [frame] = alice.frames
    assert frame["TaskUpdated"] == {**event["TaskUpdated"], "Status": sent}
    assert frame["Job"] == event["Job"] and event["TaskUpdated"]["Status"] == status  # the input is untouched


@pytest.mark.parametrize("status", ["Flying", "running", 9, -1, True, 2.0])
def test_an_unknown_status_is_malformed(table: SessionTable, status: Any) -> None:
    """A Status that is neither a jobs.TaskStatus name nor one of its numbers is refused, naming the field."""
    _, alice = subscribe(table, "alice")
    with pytest.raises(MalformedEvent, match="TaskUpdated.Status"):
        TaskHandler(table).handle(task_event(Status=status))
    assert alice.sent == []
