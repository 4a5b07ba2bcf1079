"""Per-user Target (PROTOCOL.md §4.1, wsgw.events.usermeta): node events with each recipient's own metadata from
the node-metadata backend, on a fake clock and a fake backend whose answers the test gives."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from wsgw.access import Access, Root, Workspace
from wsgw.events.nodes import NodeHandler
from wsgw.interfaces import INodeMetaSource
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection

TEAM = Workspace("ws-team", "team", (Root("r1", "pydiods1/team", "k"),))
OTHER = Workspace("ws-other", "other", (Root("r2", "pydiods1/other", "k2"),))


@implementer(INodeMetaSource)
class Backend:
    """Records each lookup; the test answers it (``answer``) or lets it hang (then the timeout decides)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], list[str]]] = []
        self.pending: list[Deferred[dict[str, dict[str, str]]]] = []
        self.cancelled = 0

    def lookup(self, node: Any, logins: Any) -> Deferred[dict[str, dict[str, str]]]:
        self.requests.append((dict(node), list(logins)))

        def cancel(_: object) -> None:
            self.cancelled += 1

        d: Deferred[dict[str, dict[str, str]]] = Deferred(cancel)
        self.pending.append(d)
        return d

    def answer(self, entries: dict[str, dict[str, str]]) -> None:
        self.pending.pop(0).callback(entries)


class World:
    def __init__(self, backend: INodeMetaSource | None = None) -> None:
        self.clock = Clock()
        self.table = SessionTable()
        self.backend = backend if backend is not None else Backend()
        self.handler = NodeHandler(self.table, self.clock, batch_window=0, silent_rate=0, user_meta=self.backend,
                                   user_meta_timeout=0.3)

    def user(self, login: str, *workspaces: Workspace) -> RecordingConnection:
        conn = RecordingConnection(login)
        session = Session(conn)
        self.table.add(session)
        self.table.subscribe(session, Access(login, f"sub-{login}", "standard", frozenset(), workspaces or (TEAM,)))
        return conn


def node(path: str, uuid: str = "n1", **meta: str) -> dict[str, Any]:
    return {"Uuid": uuid, "Path": path, "Type": "LEAF", "MetaStore": {"name": json.dumps(path.rsplit("/", 1)[-1]),
                                                                       **meta}}


def rename(uuid: str = "n1", to: str = "pydiods1/team/b.txt") -> dict[str, Any]:
    return {"Type": "UPDATE_PATH", "Source": node("pydiods1/team/a.txt", uuid), "Target": node(to, uuid)}


def test_one_request_per_event_and_each_user_gets_their_own_metadata() -> None:
    """An UPDATE_PATH asks the backend once for every recipient login; alice's copy of the Target gets her
    bookmark merged in (EventWorkspaceId kept, a pydio: key dropped, a value that is not JSON re-encoded),
    bob, left out of the answer, gets the Target as published."""
    world = World()
    alice, bob = world.user("alice"), world.user("bob")
    world.handler.handle(rename())
    assert world.backend.requests == [({"Uuid": "n1", "Path": "pydiods1/team/b.txt"}, ["alice", "bob"])]
    assert alice.sent == [] and bob.sent == []  # held until the answer
    world.backend.answer({"alice": {"bookmark": "true", "pydio:secret": "1", "usermeta-note": "not json",
                                    "EventWorkspaceId": '"forged"'}})
    [mine] = alice.frames
    assert mine["Target"]["MetaStore"] == {"name": '"b.txt"', "bookmark": "true", "usermeta-note": '"not json"',
                                           "EventWorkspaceId": '"ws-team"'}
    [published] = bob.frames
    assert published["Target"]["MetaStore"] == {"name": '"b.txt"', "EventWorkspaceId": '"ws-team"'}
    assert mine["Source"] == published["Source"]  # only the Target is the user's own
    assert world.handler.user_meta_lookups == {"ok": 1}


def test_a_backend_that_does_not_answer_in_time_costs_the_bound_and_nothing_else() -> None:
    """No answer within the timeout (0.3 s): the request is abandoned and the event goes out as published."""
    world = World()
    alice = world.user("alice")
    world.handler.handle(rename())
    world.clock.advance(0.29)
    assert alice.sent == []
    world.clock.advance(0.02)
    assert [f["Target"]["Path"] for f in alice.frames] == ["team/b.txt"]
    assert "bookmark" not in alice.frames[0]["Target"]["MetaStore"]
    assert world.backend.cancelled == 1 and world.handler.user_meta_lookups == {"timeout": 1}


def test_a_failing_backend_sends_the_event_as_published_and_counts_it() -> None:
    """A lookup that fails sends the event as published at once, counted as failed."""

    @implementer(INodeMetaSource)
    class Down:
        def lookup(self, node: Any, logins: Any) -> Deferred[dict[str, dict[str, str]]]:
            return fail(ConnectionRefusedError("refused"))

    world = World(Down())
    alice = world.user("alice")
    world.handler.handle(rename())
    assert [f["Type"] for f in alice.frames] == ["UPDATE_PATH"]
    assert world.handler.user_meta_lookups == {"failed": 1}


def test_a_nodes_later_events_wait_behind_its_lookup_and_other_nodes_do_not() -> None:
    """While n1's rename waits for the backend, n1's DELETE waits behind it (a node's events keep their order)
    and n2's CREATE goes out at once; the answer releases the rename, then the DELETE (which asks too)."""
    world = World()
    alice = world.user("alice")
    world.handler.handle(rename())
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/team/b.txt")})
    world.handler.handle({"Target": node("pydiods1/team/c.txt", "n2")})
    assert [f["Target"]["Uuid"] for f in alice.frames] == ["n2"]
    alice.clear()
    world.backend.answer({})
    assert [f.get("Type") for f in alice.frames] == ["UPDATE_PATH", "DELETE"]
    assert len(world.backend.requests) == 1  # a DELETE without a Target has no Target to re-read


def test_only_events_cells_refreshes_are_looked_up() -> None:
    """CREATE is never looked up; UPDATE_CONTENT, UPDATE_META, UPDATE_USER_META, DELETE and UPDATE_PATH with a
    Target are; an event nobody receives is not."""
    world = World()
    world.user("alice")
    world.handler.handle({"Target": node("pydiods1/team/new.txt", "n0")})
    world.handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/other/x", "n9")})  # nobody sees it
    assert world.backend.requests == []
    for kind in ("UPDATE_CONTENT", "UPDATE_META", "DELETE"):
        world.handler.handle({"Type": kind, "Target": node("pydiods1/team/x.txt", f"n-{kind}")})
    assert [r[0]["Uuid"] for r in world.backend.requests] == ["n-UPDATE_CONTENT", "n-UPDATE_META", "n-DELETE"]


def test_user_meta_asks_only_for_the_users_its_policy_allows() -> None:
    """An UPDATE_USER_META names in the request only the logins its policies allow to read it."""
    world = World()
    world.user("alice"), world.user("bob")
    pol = '[{"Action":2,"Subject":"user:alice","Effect":1}]'
    world.handler.handle({"Type": "UPDATE_USER_META", "Target": node("pydiods1/team/a.txt"),
                          "Source": node("pydiods1/team/a.txt", **{"pydio:meta-policies": pol})})
    assert world.backend.requests[0][1] == ["alice"]


def test_recipients_are_those_of_when_the_event_goes_out() -> None:
    """A session that unsubscribes while the event waits gets nothing; one that subscribes meanwhile gets the
    Target as published (its login was not asked about)."""
    world = World()
    alice = world.user("alice")
    world.handler.handle(rename())
    [session] = world.table.with_login("alice")
    world.table.unsubscribe(session)
    carol = world.user("carol")
    world.backend.answer({"alice": {"bookmark": "true"}})
    assert alice.sent == [] and [f["Type"] for f in carol.frames] == ["UPDATE_PATH"]


def test_a_user_in_two_views_gets_their_metadata_in_both_copies() -> None:
    """A node seen through two of a user's workspaces comes twice, each copy with the user's metadata and its
    own EventWorkspaceId."""
    both = Workspace("ws-all", "all", (Root("r0", "pydiods1", "k0"),))
    world = World()
    alice = world.user("alice", TEAM, both)
    world.handler.handle(rename())
    world.backend.answer({"alice": {"bookmark": "true"}})
    metas = sorted((f["Target"]["MetaStore"]["EventWorkspaceId"], f["Target"]["MetaStore"]["bookmark"])
                   for f in alice.frames)
    assert metas == [('"ws-all"', "true"), ('"ws-team"', "true")]


def test_without_a_backend_nothing_waits() -> None:
    """No backend configured: the event goes out at once, as published."""
    world = World()
    handler = NodeHandler(world.table, world.clock, batch_window=0, silent_rate=0)
    alice = world.user("alice")
    handler.handle(rename())
    assert [f["Type"] for f in alice.frames] == ["UPDATE_PATH"] and world.backend.requests == []
    assert handler.user_meta_lookups == {}


def test_each_event_waits_at_most_the_bound_past_its_own_arrival() -> None:
    """Ten renames of one node arrive together while the backend hangs: every lookup starts on arrival, so all
    ten go out, in order, when the 0.3 s bound passes, not one bound after the other."""
    world = World()
    alice = world.user("alice")
    for n in range(10):
        world.handler.handle(rename(to=f"pydiods1/team/v{n}.txt"))
    assert len(world.backend.requests) == 10 and world.handler.user_meta_waiting == 10
    world.clock.advance(0.31)
    assert [f["Target"]["Path"] for f in alice.frames] == [f"team/v{n}.txt" for n in range(10)]
    assert world.handler.user_meta_waiting == 0 and world.handler.user_meta_lookups == {"timeout": 10}


def test_an_answered_event_waits_for_its_nodes_earlier_one_only() -> None:
    """The second rename's answer comes first: it waits for the first (order per node), which then goes out
    at its own bound; a third node's event is not held at all."""
    world = World()
    alice = world.user("alice")
    world.handler.handle(rename(to="pydiods1/team/one.txt"))
    world.clock.advance(0.1)
    world.handler.handle(rename(to="pydiods1/team/two.txt"))
    world.backend.pending.pop(1).callback({"alice": {"bookmark": "true"}})
    assert alice.sent == []
    world.clock.advance(0.21)  # the first one's bound
    frames = alice.frames
    assert [f["Target"]["Path"] for f in frames] == ["team/one.txt", "team/two.txt"]
    assert "bookmark" not in frames[0]["Target"]["MetaStore"] and frames[1]["Target"]["MetaStore"]["bookmark"]


def test_lookups_in_flight_are_bounded_and_a_failing_backend_is_left_alone_a_while() -> None:
    """Past 64 lookups at once an event goes out as published (busy); after 5 failures in a row, lookups stop
    for 5 s (suspended), then resume."""
    world = World()
    alice = world.user("alice")
    for n in range(70):
        world.handler.handle(rename(uuid=f"n{n}"))
    assert len(world.backend.requests) == 64 and world.handler.user_meta_lookups["busy"] == 6
    assert len(alice.frames) == 6  # the busy ones, of other nodes, did not wait
    world.clock.advance(0.31)  # 64 timeouts: 5 in a row suspend the backend
    world.handler.handle(rename(uuid="later"))
    assert world.handler.user_meta_lookups["suspended"] == 1 and len(world.backend.requests) == 64
    world.clock.advance(5)
    world.handler.handle(rename(uuid="after"))
    assert len(world.backend.requests) == 65


def test_a_backend_that_answers_at_once_or_raises_holds_nothing() -> None:
    """A source whose lookup answers synchronously (3,000 events of one node: no recursion) or raises inside
    the call: every event goes out, in order, and nothing stays held."""

    @implementer(INodeMetaSource)
    class Instant:
        def __init__(self, error: Exception | None = None) -> None:
            self.error = error

        def lookup(self, node: Any, logins: Any) -> Any:
            if self.error is not None:
                raise self.error
            return succeed({"alice": {"bookmark": "true"}})

    raising = Instant(UnicodeEncodeError("utf-8", "", 0, 1, "x"))
    for source, outcomes in ((Instant(), {"ok": 3000}), (raising, {"failed": 5, "suspended": 2995})):
        world = World(source)
        alice = world.user("alice")
        for n in range(3000):
            world.handler.handle(rename(to=f"pydiods1/team/{n}.txt"))
        assert len(alice.frames) == 3000 and alice.frames[-1]["Target"]["Path"] == "team/2999.txt"
        assert world.handler.user_meta_waiting == 0 and world.handler.user_meta_lookups == outcomes


def test_flush_fires_once_no_event_waits() -> None:
    """NodeHandler.flush (shutdown) fires once the events waiting for the backend are out (within the bound)."""
    world = World()
    alice = world.user("alice")
    world.handler.handle(rename())
    flushed = world.handler.flush()
    assert not flushed.called
    world.clock.advance(0.31)
    assert flushed.called and [f["Type"] for f in alice.frames] == ["UPDATE_PATH"]


def test_with_the_merge_window_a_merged_update_is_looked_up_and_a_delete_keeps_its_place() -> None:
    """With the merge window on, UPDATE_CONTENT+UPDATE_META of one node merge, are looked up once the window
    passes, and a DELETE of that node flushes the merge first and goes out after it."""
    world = World()
    handler = NodeHandler(world.table, world.clock, batch_window=1.0, silent_rate=0, user_meta=world.backend,
                          user_meta_timeout=0.3)
    alice = world.user("alice")
    handler.handle({"Type": "UPDATE_CONTENT", "Target": node("pydiods1/team/a.txt")})
    handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/team/a.txt", tags='"x"')})
    handler.handle({"Type": "DELETE", "Target": node("pydiods1/team/a.txt"), "Source": node("pydiods1/team/a.txt")})
    assert [r[0]["Uuid"] for r in world.backend.requests] == ["n1", "n1"]  # the merge, then the DELETE
    world.backend.answer({"alice": {"bookmark": "true"}})
    world.backend.answer({})
    assert [f.get("Type") for f in alice.frames] == ["UPDATE_CONTENT", "DELETE"]
    assert alice.frames[0]["Target"]["MetaStore"]["bookmark"] == "true"
