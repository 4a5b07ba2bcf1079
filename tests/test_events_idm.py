"""Tests of the IDM rules (PROTOCOL.md §4.3): the first applicable rule picks the recipients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from wsgw.access import Access, Root, Workspace
from wsgw.events import idm as idm_module
from wsgw.events.idm import IdmHandler
from wsgw.frames import MalformedEvent
from wsgw.sessions import Session
from wsgw.testing import IndexOnlyTable, RecordingConnection


def workspace(uuid: str) -> Workspace:
    return Workspace(uuid, "slug-" + uuid, (Root("r-" + uuid, "ds/" + uuid, "k"),))


class Users:
    """A table holding a few users with distinct logins, subs, roles and workspaces."""

    def __init__(self) -> None:
        self.table = IndexOnlyTable()
        self.conns: dict[str, RecordingConnection] = {}
        self.add("alice", "uuid-alice", roles={"role-a", "ROOT_GROUP"}, workspaces=("ws-a",))
        self.add("bob", "uuid-bob", roles={"role-b", "ROOT_GROUP"}, workspaces=("ws-b",))
        self.add("root", "uuid-root", profile="admin", roles={"ADMINS", "ROOT_GROUP"})
        self.add("carol", "uuid-carol", roles={"role-a"}, workspaces=("ws-a", "ws-b"))

    def add(
        self,
        login: str,
        sub: str,
        *,
        profile: str = "standard",
        roles: Iterable[str] = (),
        workspaces: tuple[str, ...] = (),
        name: str | None = None,
    ) -> RecordingConnection:
        conn = RecordingConnection()
        session = Session(conn)
        self.table.add(session)
        access = Access(
            login, sub, profile, frozenset(roles), tuple(workspace(w) for w in workspaces)
        )
        self.table.subscribe(session, access)
        self.conns[name or login] = conn
        return conn

    def receivers(self) -> set[str]:
        """Names of the sessions that received something."""
        return {name for name, conn in self.conns.items() if conn.sent}


@pytest.fixture
def users() -> Users:
    return Users()


def acl(role: str = "role-a", action: str | None = "read") -> dict[str, Any]:
    body: dict[str, Any] = {"RoleID": role, "WorkspaceID": "ws-a", "NodeID": "n1"}
    if action is not None:
        body["Action"] = {"Name": action, "Value": "1"}
    return body


def test_acl_on_a_role_goes_to_sessions_with_that_role(users: Users) -> None:
    """An ACL with a RoleID and an ordinary action reaches exactly the sessions holding that role."""
    handler = IdmHandler(users.table)
    handler.handle({"Type": "UPDATE", "Acl": acl("role-a")})
    assert users.receivers() == {"alice", "carol"}
    assert handler.delivered == 2


def test_frame_is_the_event_with_idm_type(users: Users) -> None:
    """The frame is the event as published with "@type":"idm" added, and the input dict is not changed."""
    event = {"Type": "UPDATE", "Acl": acl("role-b")}
    IdmHandler(users.table).handle(event)
    assert users.conns["bob"].frames == [{"Type": "UPDATE", "Acl": acl("role-b"), "@type": "idm"}]
    assert "@type" not in event


@pytest.mark.parametrize("kind, sent", [(2, "UPDATE"), (3, "DELETE"), (0, "CREATE"), ("DELETE", "DELETE"),
                                        ("BIND", "BIND")])
def test_a_type_number_reaches_the_client_as_its_name(users: Users, kind: Any, sent: str) -> None:
    """The event Type as Go's encoding/json writes it (an idm.ChangeEventType number) reaches the client as
    its name, which the admin users list switches on ('DELETE', 'UPDATE'); a name passes as written, BIND
    (what older Cells called 4) included; the input is untouched."""
    event = {"Type": kind, "Acl": acl("role-b")}
    IdmHandler(users.table).handle(event)
    assert users.conns["bob"].frames == [{"Type": sent, "Acl": acl("role-b"), "@type": "idm"}]
    assert event["Type"] == kind


def test_acl_without_action_counts_as_an_ordinary_acl(users: Users) -> None:
    """An ACL with a RoleID and no Action goes to that role (an absent name starts with neither prefix)."""
    IdmHandler(users.table).handle({"Acl": acl("role-b", action=None)})
    assert users.receivers() == {"bob"}


@pytest.mark.parametrize("action", ["parameter:core.auth:password", "action:share"])
def test_parameter_and_action_acls_fall_through_to_the_role(users: Users, action: str) -> None:
    """A parameter:/action: ACL does not decide; the Role rule that follows does."""
    IdmHandler(users.table).handle({"Acl": acl("role-a", action), "Role": {"Uuid": "role-b"}})
    assert users.receivers() == {"bob"}


@pytest.mark.parametrize("action", ["parameter:x", "action:y"])
def test_parameter_and_action_acls_fall_through_to_the_user(users: Users, action: str) -> None:
    """A parameter:/action: ACL with only a User after it goes to that user's sessions and admins."""
    IdmHandler(users.table).handle({"Acl": acl("role-a", action), "User": {"Login": "bob"}})
    assert users.receivers() == {"bob", "root"}


@pytest.mark.parametrize("action", ["parameter:x", "action:y"])
def test_parameter_and_action_acls_alone_go_nowhere(users: Users, action: str) -> None:
    """A parameter:/action: ACL with nothing after it reaches nobody, not even the role's holders."""
    handler = IdmHandler(users.table)
    handler.handle({"Acl": acl("role-a", action)})
    assert users.receivers() == set()
    assert handler.delivered == 0


def test_acl_without_role_falls_through_to_the_workspace(users: Users) -> None:
    """An ACL without RoleID does not decide; a Workspace after it does."""
    IdmHandler(users.table).handle({"Acl": acl(""), "Workspace": {"UUID": "ws-b"}})
    assert users.receivers() == {"bob", "carol"}


def test_acl_rule_wins_over_role_user_and_workspace(users: Users) -> None:
    """An ordinary role ACL decides even when Role, User and Workspace are present too."""
    IdmHandler(users.table).handle(
        {
            "Acl": acl("role-b"),
            "Role": {"Uuid": "role-a"},
            "User": {"Login": "alice"},
            "Workspace": {"UUID": "ws-a"},
        }
    )
    assert users.receivers() == {"bob"}


def test_role_goes_to_sessions_with_that_role(users: Users) -> None:
    """A Role event reaches the sessions holding Role.Uuid, and only them."""
    IdmHandler(users.table).handle({"Role": {"Uuid": "ROOT_GROUP", "Label": "Root"}})
    assert users.receivers() == {"alice", "bob", "root"}


def test_role_rule_wins_over_user(users: Users) -> None:
    """When Role and User are both present, the Role decides."""
    IdmHandler(users.table).handle({"Role": {"Uuid": "ADMINS"}, "User": {"Login": "alice"}})
    assert users.receivers() == {"root"}


def test_role_without_uuid_goes_nowhere(users: Users) -> None:
    """A Role without Uuid applies (it is the first rule present) and names nobody."""
    IdmHandler(users.table).handle({"Role": {"Label": "x"}, "User": {"Login": "alice"}})
    assert users.receivers() == set()


def test_user_with_login_goes_to_that_login_and_admins(users: Users) -> None:
    """A User with a Login reaches that user's sessions and every admin session, no one else."""
    second_alice = users.add("alice", "uuid-alice", name="alice-2")
    handler = IdmHandler(users.table)
    handler.handle({"User": {"Uuid": "uuid-alice", "Login": "alice"}})
    assert users.receivers() == {"alice", "alice-2", "root"}
    assert len(second_alice.sent) == 1
    assert handler.delivered == 3


def test_admin_who_is_the_user_gets_one_copy(users: Users) -> None:
    """An admin session that is also the changed user receives the event once."""
    handler = IdmHandler(users.table)
    handler.handle({"User": {"Login": "root"}})
    assert users.receivers() == {"root"}
    assert len(users.conns["root"].sent) == 1
    assert handler.delivered == 1


def test_user_without_login_goes_to_sessions_with_that_sub(users: Users) -> None:
    """A User without a Login reaches the sessions whose sub equals User.Uuid, and not the admins."""
    IdmHandler(users.table).handle({"User": {"Uuid": "uuid-bob"}})
    assert users.receivers() == {"bob"}


def test_user_with_empty_login_uses_the_uuid(users: Users) -> None:
    """An empty Login counts as absent: the User.Uuid rule applies."""
    IdmHandler(users.table).handle({"User": {"Uuid": "uuid-carol", "Login": ""}})
    assert users.receivers() == {"carol"}


def test_user_rule_wins_over_workspace(users: Users) -> None:
    """When User and Workspace are both present, the User decides."""
    IdmHandler(users.table).handle({"User": {"Uuid": "uuid-bob"}, "Workspace": {"UUID": "ws-a"}})
    assert users.receivers() == {"bob"}


def test_user_without_login_or_uuid_goes_nowhere(users: Users) -> None:
    """A User with neither Login nor Uuid reaches nobody."""
    IdmHandler(users.table).handle({"User": {}})
    assert users.receivers() == set()


def test_workspace_goes_to_sessions_having_it(users: Users) -> None:
    """A Workspace event reaches the sessions that have Workspace.UUID among their workspaces."""
    IdmHandler(users.table).handle({"Workspace": {"UUID": "ws-a", "Slug": "slug-ws-a"}})
    assert users.receivers() == {"alice", "carol"}


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Type": "DELETE"},
        {"Attributes": {"k": "v"}},
        {"Workspace": {"UUID": "ws-unknown"}},
        {"Role": {"Uuid": "role-unknown"}},
        {"User": {"Login": "nobody-here"}, "Acl": acl("role-unknown")},
    ],
)
def test_events_naming_no_connected_session_go_nowhere(users: Users, event: dict[str, Any]) -> None:
    """An event with none of Acl/Role/User/Workspace, or naming no connected session, is sent to no one."""
    handler = IdmHandler(users.table)
    handler.handle(event)
    assert users.receivers() == set()
    assert handler.delivered == 0


def test_user_login_nobody_connected_still_reaches_admins(users: Users) -> None:
    """A User event for a login with no session still reaches the admins."""
    IdmHandler(users.table).handle({"User": {"Login": "dave"}})
    assert users.receivers() == {"root"}


def test_frame_is_encoded_once_and_shared(users: Users, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event is serialized once and the same bytes object goes to every recipient."""
    calls = []
    real = idm_module.encode
    monkeypatch.setattr(idm_module, "encode", lambda obj: calls.append(obj) or real(obj))
    IdmHandler(users.table).handle({"Role": {"Uuid": "ROOT_GROUP"}})
    assert len(calls) == 1
    assert users.conns["alice"].sent[0] is users.conns["bob"].sent[0] is users.conns["root"].sent[0]


def test_a_failing_recipient_does_not_stop_the_others(users: Users) -> None:
    """When one session's send raises, the other holders of the role still receive the event."""

    class BrokenConnection(RecordingConnection):
        def write(self, payload: bytes) -> None:
            raise RuntimeError("socket gone")

    broken = Session(BrokenConnection())
    users.table.add(broken)
    users.table.subscribe(
        broken, Access("dave", "uuid-dave", "standard", frozenset({"role-a"}), ())
    )
    handler = IdmHandler(users.table)
    handler.handle({"Role": {"Uuid": "role-a"}})
    assert users.receivers() == {"alice", "carol"}
    assert handler.delivered == 2


def test_no_encoding_when_nobody_receives(users: Users, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event with no recipient costs no serialization."""
    calls = []
    monkeypatch.setattr(idm_module, "encode", lambda obj: calls.append(obj) or b"{}")
    IdmHandler(users.table).handle({"Workspace": {"UUID": "ws-unknown"}})
    assert calls == []


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"Acl": "role-a"}, "Acl"),
        ({"Acl": {"RoleID": 3}}, "RoleID"),
        ({"Acl": {"RoleID": "role-a", "Action": "read"}}, "Action"),
        ({"Acl": {"RoleID": "role-a", "Action": {"Name": ["read"]}}}, "Name"),
        ({"Role": ["role-a"]}, "Role"),
        ({"Role": {"Uuid": 1}}, "Uuid"),
        ({"User": "alice"}, "User"),
        ({"User": {"Login": True}}, "Login"),
        ({"User": {"Uuid": {}}}, "Uuid"),
        ({"Workspace": 5}, "Workspace"),
        ({"Workspace": {"UUID": 5}}, "UUID"),
        ({"Acl": acl("role-a"), "Workspace": "ws-a"}, "Workspace"),
        ({"Type": "EXPLODE", "User": {"Login": "alice"}}, "Type"),
        ({"Type": 6, "User": {"Login": "alice"}}, "Type"),
        ({"Type": False, "User": {"Login": "alice"}}, "Type"),
        ("idm", "object"),
    ],
)
def test_malformed_idm_events_raise(users: Users, event: Any, reason: str) -> None:
    """An IDM event with a wrongly typed part raises MalformedEvent naming it, and sends nothing."""
    handler = IdmHandler(users.table)
    with pytest.raises(MalformedEvent, match=reason):
        handler.handle(event)
    assert users.receivers() == set()
