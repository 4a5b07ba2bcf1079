"""The session table's indexes: lookups by login, sub, role, workspace, admin and root path."""

from __future__ import annotations

from wsgw.access import Access, Root, Workspace
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection

HOME = Workspace("w-home", "home", (Root("r1", "ds/home/alice", "k1"),))
MULTI = Workspace("w-multi", "multi", (Root("r2", "ds/a", "ka"), Root("r3", "ds/b/c", "kc")))


def access(login: str, *workspaces: Workspace, profile: str = "standard", roles: tuple[str, ...] = ()) -> Access:
    return Access(login, f"sub-{login}", profile, frozenset(roles), workspaces, None)


def subscribed(table: SessionTable, acc: Access) -> Session:
    session = Session(RecordingConnection())
    table.add(session)
    table.subscribe(session, acc)
    return session


def test_lookups_by_each_index() -> None:
    """A subscribed session is found by its login, sub, roles, workspaces and admin profile."""
    table = SessionTable()
    alice = subscribed(table, access("alice", HOME, roles=("r-a", "r-b")))
    root = subscribed(table, access("root", profile="admin"))
    assert table.with_login("alice") == {alice}
    assert table.with_sub("sub-alice") == {alice}
    assert table.with_role("r-b") == {alice}
    assert table.with_workspace("w-home") == {alice}
    assert table.admins() == {root}
    assert table.with_login("nobody") == set()


def test_views_for_paths_match_roots_at_or_above_the_path() -> None:
    """A node path finds the workspace views whose root is the path or one of its ancestors, nothing else."""
    table = SessionTable()
    alice = subscribed(table, access("alice", HOME, MULTI))
    bob = subscribed(table, access("bob", MULTI))
    assert table.views_for_paths(["ds/home/alice/x/y.txt"]) == {HOME: {alice}}
    assert table.views_for_paths(["ds/home/alice"]) == {HOME: {alice}}
    assert table.views_for_paths(["ds/home/alicex/y.txt"]) == {}
    assert table.views_for_paths(["ds/b/c/d"]) == {MULTI: {alice, bob}}
    assert table.views_for_paths(["ds/b/d"]) == {}
    both = table.views_for_paths(["ds/a/1", "ds/home/alice/2"])
    assert both == {MULTI: {alice, bob}, HOME: {alice}}


def test_views_for_paths_does_not_alias_the_index() -> None:
    """Merging views found through two roots does not modify the table's own sets."""
    table = SessionTable()
    alice = subscribed(table, access("alice", MULTI))
    found = table.views_for_paths(["ds/a/1", "ds/b/c/2"])
    found[MULTI].add(Session(RecordingConnection()))
    assert table.views_for_paths(["ds/a"]) == {MULTI: {alice}}


def test_resubscribe_and_remove_leave_no_trace() -> None:
    """Replacing access moves the session between index entries; unsubscribing and removing it (as its endpoint
    and the gateway do at close) empties every index."""
    table = SessionTable()
    session = subscribed(table, access("alice", HOME, roles=("r1",), profile="admin"))
    table.subscribe(session, access("alice2", MULTI))
    assert table.with_login("alice") == set() and table.with_role("r1") == set() and table.admins() == set()
    assert table.views_for_paths(["ds/home/alice/f"]) == {}
    assert table.views_for_paths(["ds/a/f"]) == {MULTI: {session}}
    table.unsubscribe(session)
    table.remove(session)
    assert len(table) == 0
    assert table._by_root == {} and table._events.login == {} and table._events.workspace == {}


def test_unsubscribed_session_stays_in_the_table() -> None:
    """unsubscribe keeps the session connected (counted) but in no index."""
    table = SessionTable()
    session = subscribed(table, access("alice", HOME))
    table.unsubscribe(session)
    assert list(table) == [session] and session.access is None
    assert table.with_login("alice") == set()


def test_login_and_sub_indexes_hold_one_session_or_a_set() -> None:
    """A login with one session and a login with two both look up right, and removing one leaves the other."""
    table = SessionTable()
    a, b = Session(RecordingConnection()), Session(RecordingConnection())
    for s in (a, b):
        table.add(s)
        table.subscribe(s, access("alice"))
    assert table.with_login("alice") == {a, b} and table.with_sub("sub-alice") == {a, b}
    table.unsubscribe(a)
    assert table.with_login("alice") == {b}
    assert table.admins() | table.with_login("alice") == {b}
    table.unsubscribe(b)
    assert table.with_login("alice") == frozenset() and table.with_sub("sub-alice") == frozenset()


def test_subjects() -> None:
    """Policy subjects are user:, profile:, role: and *."""
    assert access("a", roles=("r",)).subjects == {"user:a", "profile:standard", "role:r", "*"}


def test_designated_finds_the_sessions_of_every_endpoint_and_only_events_ones_get_events() -> None:
    """PROTOCOL.md §3.1: an access change finds /ws and /chat sessions alike; a chat session (indexed with
    events=False) is never a recipient of bus events."""
    table = SessionTable()
    ws, chat = Session(RecordingConnection()), Session(RecordingConnection())
    table.subscribe(ws, access("alice"))
    table.subscribe(chat, access("alice"), events=False)
    assert table.designated(logins=["alice"]) == {ws, chat}
    assert table.designated(subs=["sub-alice"], workspaces=[]) == {ws, chat}
    assert table.with_login("alice") == {ws}
    table.unsubscribe(chat)
    table.unsubscribe(ws)
    assert table.designated(logins=["alice"]) == set() and table._quiet.login == {} and table._events.login == {}
