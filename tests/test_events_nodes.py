"""Tests of the node event rules of PROTOCOL.md §4.1 (wsgw.events.nodes)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from wsgw.access import Access, Root, Workspace
from wsgw.cells import NODE_TYPE
from wsgw.events.metastore import clean_meta_store, read_policy, subjects_allowed
from wsgw.events.nodes import NodeHandler, PreparedEvent, event_paths, internal_path, locate, validate
from wsgw.frames import MalformedEvent
from wsgw.pacing import TokenBucket
from wsgw.sessions import Session, SessionTable
from wsgw.testing import RecordingConnection

HOME = Workspace("ws-home", "personal-files", (Root("r1", "pydiods1/users/alice", "k-alice"),))
COMMON = Workspace("ws-common", "common-files", (Root("r2", "pydiods1", "k-ds1"),))
MULTI = Workspace("ws-multi", "multi", (Root("r3", "pydiods1/projects", "k-proj"),
                                         Root("r4", "pydiods2/archive", "k-arch")))
OTHER = Workspace("ws-other", "other", (Root("r5", "pydiods9/elsewhere", "k-else"),))


def shape_for_workspace(event: dict[str, Any], ws: Workspace) -> dict[str, Any] | None:
    """The frame a (validated) ``event`` becomes for workspace view ``ws``; None when nothing is visible."""
    return PreparedEvent(event).shape(ws)


def is_visible(path: str, ws: Workspace) -> bool:
    """Whether a node at ``path`` (leading/trailing ``/`` allowed) is visible in ``ws``."""
    return locate(internal_path(path), ws) is not None


def policies_allow_read(policies_json: str | None, subjects: frozenset[str]) -> bool:
    """Whether the policies allow ``READ`` to one of ``subjects``."""
    return subjects_allowed(read_policy(policies_json), subjects)


def node(path: str, uuid: str = "n1", **extra: Any) -> dict[str, Any]:
    return {"Uuid": uuid, "Path": path, "Type": "LEAF", **extra}


def access(login: str, *workspaces: Workspace, roles: tuple[str, ...] = ()) -> Access:
    return Access(login, "sub-" + login, "standard", frozenset(roles), tuple(workspaces))


class World:
    """A session table on a clock, with a NodeHandler."""

    def __init__(self, **handler_options: Any) -> None:
        self.clock = Clock()
        self.table = SessionTable()
        self.handler = NodeHandler(self.table, self.clock, **handler_options)

    def session(self, acc: Access | None) -> RecordingConnection:
        conn = RecordingConnection(acc.login if acc else "anon")
        session = Session(conn)
        self.table.add(session)
        if acc is not None:
            self.table.subscribe(session, acc)
        return conn


def policies(*rules: tuple[str, str, str]) -> str:
    return json.dumps([{"Subject": s, "Action": a, "Effect": e} for s, a, e in rules])


# -- visibility ---------------------------------------------------------------------------------


def test_visible_at_and_below_a_root() -> None:
    """A node is visible at a root path and below it, with or without slashes around the path."""
    assert is_visible("pydiods1/users/alice", HOME)
    assert is_visible("pydiods1/users/alice/docs/a.txt", HOME)
    assert is_visible("/pydiods1/users/alice/docs/a.txt", HOME)
    assert is_visible("/pydiods1/users/alice/docs/", HOME)


def test_not_visible_beside_or_above_a_root() -> None:
    """A sibling with the root as a name prefix, a parent, or another tree is not visible."""
    assert not is_visible("pydiods1/users/alice2/a.txt", HOME)
    assert not is_visible("pydiods1/users", HOME)
    assert not is_visible("pydiods2/users/alice/a.txt", HOME)
    assert not is_visible("", HOME)


def test_hidden_basenames_are_not_visible() -> None:
    """A node whose basename starts with a dot is not visible; a dot elsewhere in the path is fine."""
    assert not is_visible("pydiods1/users/alice/.pydio", HOME)
    assert not is_visible("pydiods1/users/alice/docs/.hidden/", HOME)
    assert is_visible("pydiods1/users/alice/.git/config", HOME)
    assert is_visible("pydiods1/users/alice/a.txt", HOME)


# -- shaping ------------------------------------------------------------------------------------


def test_single_root_path_rewrite() -> None:
    """In a single-root workspace a node's path becomes <slug>/<rel>."""
    frame = shape_for_workspace({"Target": node("/pydiods1/users/alice/docs/a.txt")}, HOME)
    assert frame is not None
    assert frame["Target"]["Path"] == "personal-files/docs/a.txt"


def test_multi_root_path_rewrite() -> None:
    """In a multi-root workspace a node's path becomes <slug>/<root key>/<rel>."""
    frame = shape_for_workspace({"Target": node("pydiods2/archive/2020/b.pdf")}, MULTI)
    assert frame is not None
    assert frame["Target"]["Path"] == "multi/k-arch/2020/b.pdf"


def test_a_root_node_itself() -> None:
    """A node that is the root becomes <slug> (one root) or <slug>/<root key> (several roots)."""
    single = shape_for_workspace({"Type": "UPDATE_META", "Target": node("pydiods1/users/alice")}, HOME)
    multi = shape_for_workspace({"Type": "UPDATE_META", "Target": node("pydiods1/projects/")}, MULTI)
    assert single is not None and single["Target"]["Path"] == "personal-files"
    assert multi is not None and multi["Target"]["Path"] == "multi/k-proj"


def test_deepest_root_wins_when_roots_nest() -> None:
    """When a workspace's roots nest, the path is rewritten below the deepest one."""
    nested = Workspace("ws-n", "nested", (Root("a", "ds", "k-ds"), Root("b", "ds/sub", "k-sub")))
    frame = shape_for_workspace({"Target": node("ds/sub/x")}, nested)
    assert frame is not None and frame["Target"]["Path"] == "nested/k-sub/x"


def test_create_is_sent_without_type_and_only_type_target_source() -> None:
    """A CREATE frame has no Type, and no event field other than Type/Target/Source is sent."""
    event = {"Type": "CREATE", "Target": node("pydiods1/users/alice/a"), "Silent": False,
             "Optimistic": False, "Metadata": {"x": "y"}}
    frame = shape_for_workspace(event, HOME)
    assert frame is not None and set(frame) == {"Target"}
    update = shape_for_workspace({**event, "Type": "UPDATE_CONTENT"}, HOME)
    assert update is not None and set(update) == {"Type", "Target"} and update["Type"] == "UPDATE_CONTENT"


def test_node_fields_are_kept() -> None:
    """Fields of a node other than Path and MetaStore go out unchanged."""
    target = node("pydiods1/users/alice/a", Size="1024", MTime="1718022000", Etag="e", Mode=420)
    frame = shape_for_workspace({"Target": target}, HOME)
    assert frame is not None
    assert {k: frame["Target"][k] for k in ("Uuid", "Type", "Size", "MTime", "Etag", "Mode")} == {
        "Uuid": "n1", "Type": "LEAF", "Size": "1024", "MTime": "1718022000", "Etag": "e", "Mode": 420}


def test_meta_store_cleaning() -> None:
    """EventWorkspaceId is the JSON workspace uuid, pydio: keys go, non-JSON values become JSON strings."""
    meta = {"pydio:meta-policies": "[]", "pydio:x": "1", "name": "\"a.txt\"", "count": "3",
            "color": "red", "obj": "{\"a\":1}", "nan": "NaN", "EventWorkspaceId": "\"forged\""}
    frame = shape_for_workspace({"Target": node("pydiods1/users/alice/a", MetaStore=meta)}, HOME)
    assert frame is not None
    assert frame["Target"]["MetaStore"] == {
        "EventWorkspaceId": "\"ws-home\"", "name": "\"a.txt\"", "count": "3", "color": "\"red\"",
        "obj": "{\"a\":1}", "nan": "\"NaN\""}
    for value in frame["Target"]["MetaStore"].values():
        json.loads(value)


def test_meta_store_added_when_absent() -> None:
    """A node without MetaStore still carries EventWorkspaceId."""
    frame = shape_for_workspace({"Target": node("pydiods1/users/alice/a")}, HOME)
    assert frame is not None and frame["Target"]["MetaStore"] == {"EventWorkspaceId": "\"ws-home\""}


def test_clean_meta_store_does_not_touch_its_input() -> None:
    """Cleaning builds a new MetaStore."""
    meta = {"pydio:a": "1", "b": "x"}
    assert clean_meta_store(meta) == {"b": "\"x\""}
    assert meta == {"pydio:a": "1", "b": "x"}


def test_update_path_both_visible() -> None:
    """A move inside a workspace stays an UPDATE_PATH with both nodes."""
    frame = shape_for_workspace({"Type": "UPDATE_PATH", "Source": node("pydiods1/users/alice/a"),
                                 "Target": node("pydiods1/users/alice/b")}, HOME)
    assert frame is not None and frame["Type"] == "UPDATE_PATH"
    assert (frame["Source"]["Path"], frame["Target"]["Path"]) == ("personal-files/a", "personal-files/b")


def test_update_path_out_of_the_workspace_is_a_delete() -> None:
    """A move whose Target is out of the workspace is a DELETE of the Source."""
    frame = shape_for_workspace({"Type": "UPDATE_PATH", "Source": node("pydiods1/users/alice/a"),
                                 "Target": node("pydiods1/users/bob/a")}, HOME)
    assert frame is not None and frame["Type"] == "DELETE" and set(frame) == {"Type", "Source"}


def test_update_path_into_the_workspace_is_a_create() -> None:
    """A move whose Source is out of the workspace is a CREATE of the Target (Type omitted)."""
    frame = shape_for_workspace({"Type": "UPDATE_PATH", "Source": node("pydiods1/users/bob/a"),
                                 "Target": node("pydiods1/users/alice/a")}, HOME)
    assert frame == {"Target": {"Uuid": "n1", "Type": "LEAF", "Path": "personal-files/a",
                                "MetaStore": {"EventWorkspaceId": "\"ws-home\""}}}


def test_rename_to_a_hidden_name_is_a_delete() -> None:
    """A rename to a dot-name hides the node: the workspace sees a DELETE."""
    frame = shape_for_workspace({"Type": "UPDATE_PATH", "Source": node("pydiods1/users/alice/a"),
                                 "Target": node("pydiods1/users/alice/.a")}, HOME)
    assert frame is not None and frame["Type"] == "DELETE"


def test_nothing_visible_gives_none() -> None:
    """An event whose nodes are both outside the workspace shapes to None."""
    assert shape_for_workspace({"Type": "DELETE", "Source": node("pydiods1/users/bob/a")}, HOME) is None


def test_user_meta_is_shaped_without_source() -> None:
    """UPDATE_USER_META frames never carry the Source (it holds the policies)."""
    event = {"Type": "UPDATE_USER_META", "Target": node("pydiods1/users/alice/a"),
             "Source": node("pydiods1/users/alice/a", MetaStore={"pydio:meta-policies": "[]"})}
    frame = shape_for_workspace(event, HOME)
    assert frame is not None and set(frame) == {"Type", "Target"}


# -- policies -----------------------------------------------------------------------------------


def test_policy_allow() -> None:
    """An allow READ policy on one of the subjects allows."""
    assert policies_allow_read(policies(("role:team", "READ", "allow")), {"user:alice", "role:team", "*"})


def test_policy_deny_wins() -> None:
    """A deny READ on any of the subjects wins over an allow on another."""
    pol = policies(("*", "READ", "allow"), ("user:alice", "READ", "deny"))
    assert not policies_allow_read(pol, {"user:alice", "*"})
    assert policies_allow_read(pol, {"user:bob", "*"})


def test_policy_default_deny() -> None:
    """No matching allow, an empty list, a WRITE-only allow, bad JSON or no policies at all deny."""
    subjects = {"user:alice", "*"}
    assert not policies_allow_read(policies(("user:bob", "READ", "allow")), subjects)
    assert not policies_allow_read("[]", subjects)
    assert not policies_allow_read(policies(("user:alice", "WRITE", "allow")), subjects)
    assert not policies_allow_read("not json", subjects)
    assert not policies_allow_read("{\"Subject\":\"*\"}", subjects)
    assert not policies_allow_read(None, subjects)


def test_cells_own_policy_encoding_is_read() -> None:
    """``pydio:meta-policies`` as Cells writes it with Go's encoding/json (service.ResourcePolicyAction and
    ResourcePolicy.PolicyEffect as numbers, zero values left out): READ is 2, allow is 1, an absent Effect is
    deny (and wins), an absent Action is ANY and grants no READ; a bool is no number."""
    cells = '[{"Resource":"n1","Action":2,"Subject":"user:alice","Effect":1}]'
    assert policies_allow_read(cells, {"user:alice", "*"})
    assert not policies_allow_read(cells, {"user:bob", "*"})
    both = '[{"Action":2,"Subject":"*","Effect":1},{"Action":2,"Subject":"user:bob"}]'  # bob: READ deny
    assert policies_allow_read(both, {"user:alice", "*"}) and not policies_allow_read(both, {"user:bob", "*"})
    assert not policies_allow_read('[{"Subject":"user:alice","Effect":1}]', {"user:alice"})  # ANY allow
    assert not policies_allow_read('[{"Action":3,"Subject":"user:alice","Effect":1}]', {"user:alice"})  # WRITE
    assert not policies_allow_read('[{"Action":2,"Subject":"user:alice","Effect":true}]', {"user:alice"})
    assert not policies_allow_read('[{"Action":2,"Subject":"user:alice","Effect":7}]', {"user:alice"})
    assert policies_allow_read('[{"Action":"read","Subject":"user:alice","Effect":"Allow"}]', {"user:alice"})


def test_an_update_user_meta_with_cells_numbers_reaches_the_allowed_user_only() -> None:
    """The UPDATE_USER_META Cells publishes (numbers in the policies, the event Type as a number too) reaches
    the user its policy allows, in names, without Source; the others get nothing."""
    world = World(batch_window=0)
    alice, bob = world.session(access("alice", COMMON)), world.session(access("bob", COMMON))
    pol = '[{"Resource":"n1","Action":2,"Subject":"user:alice","Effect":1}]'
    world.handler.handle({"Type": 6, "Target": node("pydiods1/x.txt", Type=1, MetaStore={"bookmark": "true"}),
                          "Source": node("pydiods1/x.txt", MetaStore={"pydio:meta-policies": pol})})
    [frame] = alice.frames
    assert frame["Type"] == "UPDATE_USER_META" and frame["Target"]["Type"] == "LEAF" and "Source" not in frame
    assert bob.sent == []


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [
    [],
    "CREATE",
    {"Type": "EXPLODE", "Target": node("a")},
    {"Type": 9, "Target": node("a")},
    {"Type": True, "Target": node("a")},
    {"Type": "delete", "Source": node("a")},
    {"Target": node("a", Type=3)},
    {"Target": "a/b"},
    {"Source": ["a"]},
    {"Target": {"Uuid": "n", "Path": 7}},
    {"Target": {"Uuid": 7, "Path": "a"}},
    {"Target": node("a", MetaStore=["x"])},
    {"Target": node("a", MetaStore={"k": 1})},
    {"Target": node("a", MetaStore={"k": None})},
    {"Target": node("a", Type="FILE")},
    {"Target": node("a", Size=True)},
    {"Target": node("a", Etag=1)},
    {"Target": node("a"), "Silent": "yes"},
    {"Target": node("a"), "Optimistic": 1},
    {"Type": "DELETE"},
    {},
])
def test_malformed_events_raise(event: Any) -> None:
    """Events of the wrong shape raise MalformedEvent and deliver nothing."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    with pytest.raises(MalformedEvent):
        world.handler.handle(event)
    assert conn.sent == [] and world.handler.pending == 0


def test_malformed_message_names_the_field() -> None:
    """The error says which node field is wrong."""
    with pytest.raises(MalformedEvent, match="Source.Path"):
        validate({"Source": {"Path": 1}})


def test_validate_returns_the_event_with_its_enums_as_names() -> None:
    """A well-formed event validates to itself when its enums are names (protojson); the numbers Go's
    encoding/json writes (tree.NodeChangeEvent.EventType, tree.NodeType) come back as names, in a copy."""
    named = {"Target": node("a", Size="1", MTime=2, MetaStore={"k": "v"})}
    assert validate(named) is named
    numbered = {"Type": 5, "Source": node("a", Type=2), "Silent": True}
    assert validate(numbered) == {"Type": "DELETE", "Source": node("a", Type="COLLECTION"), "Silent": True}
    assert numbered["Type"] == 5 and numbered["Source"]["Type"] == 2  # the bus event itself is untouched
    assert validate({"Type": 0, "Target": node("a", Type=0)}) == {"Type": "CREATE", "Target": node("a", Type="UNKNOWN")}


def _reference_validate_node(node: Any, name: str) -> Any:
    """Node validation as written before its fast path (the generic ``field`` checks), the oracle below."""
    if node is None:
        return None
    if not isinstance(node, dict):
        raise MalformedEvent(f"{name} must be an object")
    try:
        for key, kinds in (("Uuid", (str,)), ("Path", (str,)), ("Etag", (str,)), ("Size", (str, int)),
                           ("MTime", (str, int)), ("Mode", (str, int))):
            value = node.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise MalformedEvent(key)
        node_type = node.get("Type")
        if node_type is not None:
            named = NODE_TYPE.name(node_type, "Type")
            if named is not node_type:
                node = {**node, "Type": named}
        meta = node.get("MetaStore")
        if meta is not None and not isinstance(meta, dict):
            raise MalformedEvent("MetaStore")
        if meta and not all(isinstance(v, str) for v in meta.values()):
            raise MalformedEvent("MetaStore values")
    except MalformedEvent:
        raise MalformedEvent(name) from None
    return node


_ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3),
                       st.sampled_from(["LEAF", "COLLECTION", "UNKNOWN", "CREATE"]), st.lists(st.integers(), max_size=1),
                       st.dictionaries(st.text(max_size=2), st.one_of(st.text(max_size=2), st.integers()), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["Uuid", "Path", "Etag", "Type", "Size", "MTime", "Mode", "MetaStore", "X"]),
                       _ANY_VALUE, max_size=6))
def test_validate_takes_a_node_exactly_as_the_generic_checks_do(fields: dict[str, Any]) -> None:
    """The fast path for well-formed nodes (``_plain_node``) changes no outcome: for any node, ``validate``
    returns what the generic checks return (the same dict when nothing was renamed) or raises for the same
    node, naming it."""
    event = {"Type": "UPDATE_PATH", "Target": fields}
    try:
        expected = _reference_validate_node(fields, "Target")
    except MalformedEvent:
        with pytest.raises(MalformedEvent, match="^Target"):
            validate(event)
        return
    got = validate(event)["Target"]
    assert got == expected and (got is fields) == (expected is fields)


def test_a_frame_is_written_as_the_standard_encoder_writes_it_floats_and_big_integers_included() -> None:
    """Node frames are encoded by orjson only where it writes the standard encoder's bytes: a node field holding
    a float (orjson writes 1e-05 as 0.00001), a list, or an integer past 64 bits is written as ``json`` writes it."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    odd = {"Float": 1e-05, "Big": 2**70, "List": [0.5, None], "Text": "é\u2028"}
    for i, extra in enumerate([{}, *({k: v} for k, v in odd.items())]):
        world.handler.handle({"Type": "UPDATE_PATH", "Target": node(f"pydiods1/a{i}", **extra)})
    written = [p.decode() for p in conn.sent]
    assert written[0] == ('{"Target":{"Uuid":"n1","Type":"LEAF","Path":"common-files/a0","MetaStore":'
                          '{"EventWorkspaceId":"\\"ws-common\\""}}}')
    assert ['"Float":1e-05', '"Big":1180591620717411303424', '"List":[0.5,null]', '"Text":"é\u2028"'] == [
        w[w.index('"LEAF",') + 7:w.index(',"Path"')] for w in written[1:]]


@pytest.mark.parametrize("event", [
    {"Type": "UPDATE_PATH", "Target": node("/pydiods1/a/"), "Source": node("pydiods1/b")},
    {"Type": "UPDATE_USER_META", "Target": node("pydiods1/a"), "Source": node("pydiods1/b")},
    {"Type": "DELETE", "Source": node("/")}, {"Target": node("")}, {"Target": {"Uuid": "n"}, "Source": {}},
])
def test_the_paths_looked_up_are_those_of_the_prepared_event(event: dict[str, Any]) -> None:
    """The handler looks views up by ``event_paths`` before preparing anything (an event nobody sees is not
    prepared): the same paths as the prepared event's."""
    assert event_paths(event) == PreparedEvent(event).paths()


# -- the handler: fan-out -----------------------------------------------------------------------


def test_a_session_gets_one_copy_per_workspace_seeing_the_node() -> None:
    """A node seen by two of a session's workspaces is sent twice, shaped for each."""
    world = World(batch_window=0)
    conn = world.session(access("alice", HOME, COMMON, OTHER))
    world.handler.handle({"Target": node("pydiods1/users/alice/a.txt")})
    frames = sorted(conn.frames, key=lambda f: f["Target"]["Path"])
    assert [(f["Target"]["Path"], f["Target"]["MetaStore"]["EventWorkspaceId"]) for f in frames] == [
        ("common-files/users/alice/a.txt", "\"ws-common\""),
        ("personal-files/a.txt", "\"ws-home\""),
    ]
    assert world.handler.delivered == 2


def test_sessions_holding_the_same_view_share_the_same_bytes() -> None:
    """The frame is encoded once per workspace view and the same bytes go to every session of it."""
    world = World(batch_window=0)
    a = world.session(access("alice", COMMON))
    b = world.session(access("bob", COMMON))
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/x")})
    assert len(a.sent) == 1 and a.sent[0] is b.sent[0]


def test_a_user_without_the_workspace_gets_nothing() -> None:
    """Sessions whose workspaces do not contain the node, and unsubscribed sessions, receive nothing."""
    world = World(batch_window=0)
    alice = world.session(access("alice", HOME))
    bob = world.session(access("bob", OTHER))
    anon = world.session(None)
    world.handler.handle({"Target": node("pydiods1/users/alice/a.txt")})
    assert len(alice.sent) == 1
    assert bob.sent == [] and anon.sent == []


def test_move_out_of_a_workspace_is_a_delete_for_its_sessions() -> None:
    """A node moved out of a workspace reaches that workspace's sessions as a DELETE of the Source."""
    world = World(batch_window=0)
    alice = world.session(access("alice", HOME))
    world.handler.handle({"Type": "UPDATE_PATH", "Source": node("pydiods1/users/alice/a"),
                          "Target": node("pydiods9/elsewhere/a")})
    assert alice.frames == [{"Type": "DELETE", "Source": {
        "Uuid": "n1", "Type": "LEAF", "Path": "personal-files/a",
        "MetaStore": {"EventWorkspaceId": "\"ws-home\""}}}]


def test_move_into_a_workspace_is_a_create_for_its_sessions() -> None:
    """A node moved into a workspace reaches its sessions as a CREATE, while the old one sees a DELETE."""
    world = World(batch_window=0)
    alice = world.session(access("alice", HOME))
    other = world.session(access("carol", OTHER))
    world.handler.handle({"Type": "UPDATE_PATH", "Source": node("pydiods9/elsewhere/a"),
                          "Target": node("/pydiods1/users/alice/in/a")})
    assert alice.frames == [{"Target": {"Uuid": "n1", "Type": "LEAF", "Path": "personal-files/in/a",
                                        "MetaStore": {"EventWorkspaceId": "\"ws-home\""}}}]
    assert [f["Type"] for f in other.frames] == ["DELETE"]


def test_read_events_are_dropped() -> None:
    """READ events reach nobody."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Type": "READ", "Target": node("pydiods1/a")})
    assert conn.sent == [] and world.handler.delivered == 0


def test_hidden_nodes_are_not_delivered() -> None:
    """A change to a dot-file reaches nobody."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/.pydio")})
    assert conn.sent == []


def test_incoming_event_is_not_modified() -> None:
    """Shaping for several workspace views leaves the incoming event dict as it was."""
    world = World(batch_window=0)
    world.session(access("alice", HOME, COMMON))
    world.session(access("bob", COMMON, MULTI))
    event = {"Type": "UPDATE_PATH",
             "Source": node("pydiods1/users/alice/a", MetaStore={"pydio:x": "1", "c": "red"}),
             "Target": node("pydiods1/projects/a", MetaStore={"EventWorkspaceId": "\"x\"", "c": "blue"})}
    before = copy.deepcopy(event)
    world.handler.handle(event)
    assert event == before
    assert world.handler.delivered == 4  # alice: HOME + COMMON, bob: COMMON + MULTI


def test_a_failing_session_does_not_stop_the_others() -> None:
    """An exception while sending to one session is logged; the other sessions still get the frame."""
    world = World(batch_window=0)

    class Broken(RecordingConnection):
        def write(self, payload: bytes) -> None:
            raise RuntimeError("socket gone")

    session = Session(Broken())
    world.table.add(session)
    world.table.subscribe(session, access("x", COMMON))
    good = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a")})
    assert len(good.sent) == 1 and world.handler.delivered == 1


# -- the handler: user meta ---------------------------------------------------------------------


def user_meta(pol: str | None) -> dict[str, Any]:
    meta = {"usermeta-tags": "\"x\""}
    if pol is not None:
        meta["pydio:meta-policies"] = pol
    return {"Type": "UPDATE_USER_META", "Target": node("pydiods1/a", MetaStore={"usermeta-tags": "\"x\""}),
            "Source": node("pydiods1/a", MetaStore=meta)}


def test_user_meta_goes_to_allowed_sessions_only_without_source() -> None:
    """UPDATE_USER_META reaches a session allowed READ by the policies, without Source; others get nothing."""
    world = World(batch_window=0)
    team = world.session(access("alice", COMMON, roles=("team",)))
    denied = world.session(access("bob", COMMON, roles=("team",)))
    outsider = world.session(access("carol", COMMON))
    world.handler.handle(user_meta(policies(("role:team", "READ", "allow"), ("user:bob", "READ", "deny"))))
    assert team.frames == [{"Type": "UPDATE_USER_META", "Target": {
        "Uuid": "n1", "Type": "LEAF", "Path": "common-files/a",
        "MetaStore": {"usermeta-tags": "\"x\"", "EventWorkspaceId": "\"ws-common\""}}}]
    assert denied.sent == [] and outsider.sent == []


def test_user_meta_without_policies_reaches_nobody() -> None:
    """Deny by default: UPDATE_USER_META without pydio:meta-policies is not sent."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    world.handler.handle(user_meta(None))
    world.handler.handle(user_meta("garbage"))
    assert conn.sent == []


def test_user_meta_wildcard_subject() -> None:
    """A READ allow on "*" reaches every session seeing the node."""
    world = World(batch_window=0)
    a = world.session(access("alice", COMMON))
    b = world.session(access("bob", COMMON))
    world.handler.handle(user_meta(policies(("*", "READ", "allow"))))
    assert len(a.sent) == 1 and a.sent[0] is b.sent[0]


# -- the handler: pacing, silent budget, batching -----------------------------------------------


def test_non_optimistic_events_are_paced_and_optimistic_ones_bypass() -> None:
    """Node events go through the session's pacer; an Optimistic event goes out at once, behind what was held."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    session = next(iter(world.table))
    session.flow.pace(TokenBucket(1.0, 1.0, world.clock), world.clock, 60.0)
    for i in range(3):
        world.handler.handle({"Type": "DELETE", "Source": node(f"pydiods1/p{i}", uuid=f"p{i}")})
    assert len(conn.sent) == 1
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/o", uuid="o"), "Optimistic": True})
    # order is kept: the held frames are released early rather than overtaken (a DELETE never precedes its CREATE)
    assert [f["Source"]["Uuid"] for f in conn.frames] == ["p0", "p1", "p2", "o"]
    world.clock.pump([1.0, 1.0, 1.0])
    assert len(conn.frames) == 4


def test_silent_events_share_a_budget_and_the_excess_is_counted() -> None:
    """Silent events beyond the global budget are dropped and counted; non-silent ones are not limited."""
    world = World(batch_window=0, silent_rate=20.0, silent_burst=10.0)
    conn = world.session(access("alice", COMMON))
    for i in range(15):
        world.handler.handle({"Type": "DELETE", "Source": node(f"pydiods1/s{i}", uuid=f"s{i}"), "Silent": True})
    assert len(conn.sent) == 10 and world.handler.silent_dropped == 5
    for i in range(5):
        world.handler.handle({"Type": "DELETE", "Source": node(f"pydiods1/l{i}", uuid=f"l{i}")})
    assert len(conn.sent) == 15
    world.clock.advance(0.25)  # 5 tokens back
    for i in range(6):
        world.handler.handle({"Type": "DELETE", "Source": node(f"pydiods1/t{i}", uuid=f"t{i}"), "Silent": True})
    assert len(conn.sent) == 20 and world.handler.silent_dropped == 6


def test_silent_budget_is_global_across_sessions() -> None:
    """The silent budget counts events, not recipients: one event to many sessions costs one token."""
    world = World(batch_window=0, silent_rate=1.0, silent_burst=2.0)
    conns = [world.session(access(f"u{i}", COMMON)) for i in range(5)]
    for i in range(3):
        world.handler.handle({"Type": "DELETE", "Source": node(f"pydiods1/s{i}", uuid=f"s{i}"), "Silent": True})
    assert all(len(c.sent) == 2 for c in conns) and world.handler.silent_dropped == 1


def test_bursts_on_one_node_are_merged_over_the_window() -> None:
    """CREATE then UPDATE_CONTENT of one node within the window go out as one CREATE after it."""
    world = World()
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a", Etag="temporary", Size="0")})
    world.clock.advance(0.5)
    world.handler.handle({"Type": "UPDATE_CONTENT", "Target": node("pydiods1/a", Etag="e1", Size="9")})
    world.clock.advance(0.9)
    assert conn.sent == [] and world.handler.merged == 1 and world.handler.pending == 1
    world.clock.advance(0.1)
    assert len(conn.frames) == 1
    frame = conn.frames[0]
    assert "Type" not in frame and (frame["Target"]["Etag"], frame["Target"]["Size"]) == ("e1", "9")
    assert world.handler.delivered == 1 and world.handler.pending == 0


def test_delete_flushes_the_pending_merge_first() -> None:
    """A DELETE of a node with a pending merge sends the merged CREATE first, then the DELETE, at once."""
    world = World()
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a")})
    world.handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/a")})
    world.handler.handle({"Type": "DELETE", "Source": node("/pydiods1/a")})
    assert [f.get("Type", "CREATE") for f in conn.frames] == ["CREATE", "DELETE"]
    world.clock.advance(5)
    assert len(conn.sent) == 2


def test_move_flushes_the_pending_merge_first() -> None:
    """An UPDATE_PATH of a node with a pending merge comes after the merge, keyed by either node's uuid."""
    world = World()
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a")})
    world.handler.handle({"Type": "UPDATE_PATH", "Source": node("pydiods1/a"), "Target": node("pydiods1/b")})
    assert [(f.get("Type", "CREATE"), f["Target"]["Path"]) for f in conn.frames] == [
        ("CREATE", "common-files/a"), ("UPDATE_PATH", "common-files/b")]


def test_events_of_other_nodes_do_not_flush_a_pending_merge() -> None:
    """A DELETE of another node goes out at once and leaves the pending merge waiting."""
    world = World()
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a", uuid="a")})
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/b", uuid="b")})
    assert [f["Type"] for f in conn.frames] == ["DELETE"] and world.handler.pending == 1
    world.clock.advance(1)
    assert len(conn.sent) == 2


def test_flush_sends_pending_merges_now() -> None:
    """flush() (shutdown) delivers every pending merge without waiting for the window."""
    world = World()
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a", uuid="a")})
    world.handler.handle({"Target": node("pydiods1/b", uuid="b")})
    world.handler.flush()
    assert len(conn.sent) == 2 and world.clock.getDelayedCalls() == []


def test_zero_window_disables_merging() -> None:
    """With batch_window 0 every event goes out at once."""
    world = World(batch_window=0)
    conn = world.session(access("alice", COMMON))
    world.handler.handle({"Target": node("pydiods1/a")})
    world.handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/a")})
    assert len(conn.sent) == 2 and world.handler.merged == 0


def test_silent_merges_spend_the_budget_once() -> None:
    """A burst of silent events of one node is merged, then costs one token of the silent budget."""
    world = World(silent_rate=1.0, silent_burst=1.0)
    conn = world.session(access("alice", COMMON))
    for _ in range(5):
        world.handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/a"), "Silent": True})
    world.handler.handle({"Type": "UPDATE_META", "Target": node("pydiods1/b", uuid="b"), "Silent": True})
    world.clock.advance(1)
    assert len(conn.sent) == 1 and world.handler.silent_dropped == 1 and world.handler.merged == 4


def test_the_tree_and_meta_topics_share_one_silent_budget() -> None:
    """The daemon hands both node topics to one handler, so Silent events of either spend one global budget."""
    from wsgw.config import config_from_string
    from wsgw.service import GatewayService

    config = config_from_string("[delivery]\nbatch_window = 0\nsilent_rate = 1\nsilent_burst = 1\n",
                                environ={"WSGW_HMAC_SECRET": "x" * 32})
    service = GatewayService(config, Clock())
    for topic, path in (("tree", "pydiods1/a"), ("meta", "pydiods1/b")):
        service.dispatcher(topic, json.dumps({"Type": "DELETE", "Source": node(path), "Silent": True}).encode())
    assert service.nodes.silent_dropped == 1


def test_optimistic_delete_never_overtakes_a_paced_merged_create() -> None:
    """A merged CREATE held by the pacer reaches the client before an Optimistic DELETE of the same node."""
    world = World(batch_window=1.0)
    conn = world.session(access("alice", COMMON))
    session = next(iter(world.table))
    session.flow.pace(TokenBucket(1.0, 1.0, world.clock), world.clock, 60.0)
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/other", uuid="z")})  # uses the one token
    world.handler.handle({"Type": "CREATE", "Target": node("pydiods1/x.txt", uuid="x")})
    world.handler.handle({"Type": "DELETE", "Source": node("pydiods1/x.txt", uuid="x"), "Optimistic": True})
    kinds = [(f.get("Type", "CREATE"), (f.get("Target") or f.get("Source"))["Uuid"]) for f in conn.frames]
    assert kinds == [("DELETE", "z"), ("CREATE", "x"), ("DELETE", "x")]
