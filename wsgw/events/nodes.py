"""Node events of the tree and meta topics (PROTOCOL.md §4.1): validation, visibility, shaping, fan-out.

``NodeHandler.handle`` validates a ``NodeChangeEvent`` once (``validate``), drops ``READ``,
merges bursts per node (``wsgw.events.batching``), spends the global budget of
``Silent`` events, then finds the workspace views that may see the event
through ``SessionTable.views_for_paths`` and shapes and encodes one frame per
view, handed as the same bytes to every session holding that view.

Shaping for one workspace view (``PreparedEvent.shape``):
- a node is visible when its basename does not start with ``.`` and its path
  equals or is below one of the workspace's roots;
- a visible node's ``Path`` becomes ``<slug>/<rel>`` (one root) or
  ``<slug>/<root key>/<rel>`` (several roots); a node that *is* a root has an
  empty ``<rel>`` and becomes ``<slug>`` (one root) or ``<slug>/<root key>``
  (several roots), as Go's ``path.Join`` in Cells would give;
- its ``MetaStore`` loses every ``pydio:`` key, gets ``EventWorkspaceId`` set
  to the JSON string of the workspace uuid, and every value that is not valid
  JSON is re-encoded as a JSON string;
- ``UPDATE_PATH`` with only the Target visible becomes ``CREATE``, with only
  the Source visible ``DELETE``; only ``{Type, Target, Source}`` is sent and
  ``Type`` is omitted for ``CREATE``;
- ``UPDATE_USER_META`` is shaped without Source, and each session must be
  allowed ``READ`` by ``Source.MetaStore["pydio:meta-policies"]``.

Incoming event dicts are never modified: shaping builds new node dicts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from wsgw.access import Root, Workspace
from wsgw.events.batching import MERGEABLE, NodeBatcher, event_type, merge_key
from wsgw.events.metastore import (
    POLICIES_META_KEY,
    WORKSPACE_META_KEY,
    Policy,
    clean_meta_store,
    read_policy,
    subjects_allowed,
)
from wsgw.events.nodecheck import validate
from wsgw.events.usermeta import UserMeta
from wsgw.frames import encode, encode_plain
from wsgw.interfaces import INodeMetaSource
from wsgw.pacing import TokenBucket
from wsgw.sessions import Session, SessionTable, fan_out

_json_text = json.JSONEncoder(ensure_ascii=False).encode  # a str as json.dumps(s, ensure_ascii=False) writes it
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


# -- visibility and paths -----------------------------------------------------------------------


def internal_path(path: str) -> str:
    """An event path as the session indexes hold it: no leading or trailing ``/``."""
    return path.strip("/")


def locate(path: str, ws: Workspace) -> tuple[Root, str] | None:
    """The root of ``ws`` holding ``path`` and the path below it, or None when not visible.

    ``path`` is internal (see ``internal_path``). The deepest matching root wins.
    """
    if not path or path.rpartition("/")[2].startswith("."):
        return None
    found: tuple[Root, str] | None = None
    for root in ws.roots:
        rp = root.path
        if path == rp:
            rel = ""
        elif path.startswith(rp) and path[len(rp)] == "/":
            rel = path[len(rp) + 1:]
        else:
            continue
        if found is None or len(rp) > len(found[0].path):
            found = (root, rel)
    return found


def workspace_path(ws: Workspace, root: Root, rel: str) -> str:
    """``<slug>/<rel>`` (one root) or ``<slug>/<root key>/<rel>``; a root itself drops ``/<rel>``."""
    base = ws.slug if len(ws.roots) == 1 else ws.slug + "/" + root.key
    return base + "/" + rel if rel else base


# -- shaping ------------------------------------------------------------------------------------


class PreparedNode:
    """A node with what does not depend on the workspace computed once: internal path, cleaned MetaStore."""

    __slots__ = ("_fields", "_meta", "_node", "path", "plain")

    def __init__(self, node: dict[str, Any]) -> None:
        self._node = node
        self.path = internal_path(node.get("Path") or "")
        self._fields: dict[str, Any] | None = None  # computed when first visible
        self._meta: dict[str, str] = {}
        self.plain = True  # once visible: its fields hold no float, nor any list or object (frames.encode_plain)

    def for_workspace(self, ws: Workspace, ws_meta_value: str) -> dict[str, Any] | None:
        """A new node dict as ``ws`` shows it, or None when the node is not visible there."""
        found = locate(self.path, ws)
        if found is None:
            return None
        fields = self._fields
        if fields is None:
            node = self._node
            fields = self._fields = {}
            plain = True
            for k, v in node.items():
                if k != "Path" and k != "MetaStore":
                    fields[k] = v
                    if plain and type(v) not in _PLAIN_TYPES:
                        plain = False
            self.plain = plain
            self._meta = clean_meta_store(node.get("MetaStore"))
        out = dict(fields)
        out["Path"] = workspace_path(ws, *found)
        meta = dict(self._meta)
        meta[WORKSPACE_META_KEY] = ws_meta_value
        out["MetaStore"] = meta
        return out


@attrs.frozen
class InView:
    """What a node frame was produced for (``wsgw.flow.Scope``): a workspace view and, for UPDATE_USER_META,
    the READ policy its recipients had to pass (PROTOCOL.md §4.1)."""

    ws: Workspace
    policy: Policy | None = None

    def admits(self, session: Session) -> bool:
        access = session.access
        return (access is not None and self.ws in access.workspaces
                and (self.policy is None or subjects_allowed(self.policy, access.subjects)))


class PreparedEvent:
    """A validated event ready to be shaped for many workspace views."""

    __slots__ = ("kind", "source", "target")

    def __init__(self, event: dict[str, Any]) -> None:
        self.kind = event_type(event)
        target, source = event.get("Target"), event.get("Source")
        if self.kind == "UPDATE_USER_META":
            source = None  # sent without Source (it carries the policies)
        self.target = PreparedNode(target) if target else None
        self.source = PreparedNode(source) if source else None

    def encode(self, frame: dict[str, Any]) -> bytes:
        """``frame`` (from ``shape``) as ``wsgw.frames.encode`` writes it, by orjson when no node holds a float."""
        plain = (self.target is None or self.target.plain) and (self.source is None or self.source.plain)
        return encode_plain(frame) if plain else encode(frame)

    def paths(self) -> list[str]:
        """The internal paths to look workspace views up by (``event_paths``)."""
        return [n.path for n in (self.target, self.source) if n is not None and n.path]

    def shape(self, ws: Workspace) -> dict[str, Any] | None:
        """The frame for ``ws``, or None when neither node is visible there."""
        ws_meta_value = _json_text(ws.uuid)
        target = self.target.for_workspace(ws, ws_meta_value) if self.target else None
        source = self.source.for_workspace(ws, ws_meta_value) if self.source else None
        if target is None and source is None:
            return None
        kind = self.kind
        if kind == "UPDATE_PATH":
            if source is None:
                kind = "CREATE"
            elif target is None:
                kind = "DELETE"
        frame: dict[str, Any] = {}
        if kind != "CREATE":
            frame["Type"] = kind
        if target is not None:
            frame["Target"] = target
        if source is not None:
            frame["Source"] = source
        return frame


def event_paths(event: dict[str, Any]) -> list[str]:
    """``PreparedEvent(event).paths()``, without preparing the event: its Target's and Source's internal paths
    (not UPDATE_USER_META's Source, sent without it), empty ones left out."""
    paths = []
    source = event.get("Source") if event.get("Type") != "UPDATE_USER_META" else None
    for node in (event.get("Target"), source):
        if node:
            path = internal_path(node.get("Path") or "")
            if path:
                paths.append(path)
    return paths


# -- the handler --------------------------------------------------------------------------------


Groups = list[tuple[Workspace, Collection[Session]]]  # each workspace view seeing the event, with its recipients


def with_entries(frame: dict[str, Any], entries: dict[str, str]) -> dict[str, Any]:
    """``frame`` with a user's own MetaStore ``entries`` merged into its Target (cleaned as every MetaStore is;
    ``EventWorkspaceId`` stays the view's)."""
    target = frame["Target"]
    meta = {**target["MetaStore"], **clean_meta_store(entries)}
    meta[WORKSPACE_META_KEY] = target["MetaStore"][WORKSPACE_META_KEY]
    return {**frame, "Target": {**target, "MetaStore": meta}}


class NodeHandler:
    """Handler of the tree and meta topics (one instance may serve both; sharing it is best).

    ``batch_window`` 0 disables merging; ``silent_rate`` 0 disables the silent
    budget (one handler serves both node topics, so the budget is global);
    ``user_meta`` (a node-metadata backend) adds each recipient's own metadata to
    the Target, waiting at most ``user_meta_timeout`` seconds (``wsgw.events.usermeta``).
    Counters: ``delivered`` (frames handed to sessions), ``merged`` (events
    folded into a pending merge), ``silent_dropped``, ``user_meta_lookups`` (by outcome).
    ``observe_merge`` (settable): called with each merged event's delay, as ``NodeBatcher.observe``.
    """

    def __init__(
        self,
        table: SessionTable,
        clock: IReactorTime,
        batch_window: float = 1.0,
        silent_rate: float = 20.0,
        silent_burst: float = 10.0,
        user_meta: INodeMetaSource | None = None,
        user_meta_timeout: float = 0.5,
    ) -> None:
        self._table = table
        self._silent = TokenBucket(silent_rate, silent_burst, clock) if silent_rate > 0 else None
        self._batcher = NodeBatcher(clock, batch_window, self._deliver) if batch_window > 0 else None
        self._user_meta = None
        if user_meta is not None:
            self._user_meta = UserMeta(user_meta, clock, user_meta_timeout, self._logins, self._send)
        self.delivered = 0
        self.merged = 0
        self.silent_dropped = 0

    @property
    def observe_merge(self) -> Callable[[float], object] | None:
        """Called with the seconds each merged event spent from its first event's receipt to its fan-out
        (``NodeBatcher.observe``); None (the default, and always without a merge window): not measured."""
        return self._batcher.observe if self._batcher is not None else None

    @observe_merge.setter
    def observe_merge(self, observe: Callable[[float], object] | None) -> None:
        if self._batcher is not None:
            self._batcher.observe = observe

    @property
    def pending(self) -> int:
        """Nodes whose merge window is open."""
        return len(self._batcher) if self._batcher is not None else 0

    @property
    def user_meta_lookups(self) -> Counter[str]:
        """Node-metadata lookups by outcome (``wsgw.events.usermeta.OUTCOMES``); none without a backend."""
        return self._user_meta.outcomes if self._user_meta is not None else Counter()

    @property
    def user_meta_waiting(self) -> int:
        """Node events held for the node-metadata backend (or behind their node's earlier ones)."""
        return self._user_meta.waiting if self._user_meta is not None else 0

    def handle(self, event: object) -> None:
        """Validate ``event`` (any value: what is not a node event raises MalformedEvent), then merge it, or deliver
        it (after any pending merge of its nodes)."""
        event = validate(event)
        kind = event_type(event)
        if kind == "READ":
            return
        batcher = self._batcher
        if batcher is not None:
            key = merge_key(event) if kind in MERGEABLE else None
            if key is not None:
                if batcher.add(key, event):
                    self.merged += 1
                return
            # A DELETE (or move...) never overtakes the merge of its node.
            for name in ("Target", "Source") if len(batcher) else ():
                node = event.get(name)
                uuid = node.get("Uuid") if node else None
                if uuid and uuid in batcher:
                    batcher.flush_node(uuid)
        self._deliver(event)

    def flush(self) -> Deferred[None]:
        """Deliver every pending merge now (shutdown); fires once no event waits for the node-metadata backend
        either (within its timeout)."""
        if self._batcher is not None:
            self._batcher.flush()
        return self._user_meta.idle() if self._user_meta is not None else succeed(None)

    def _deliver(self, event: dict[str, Any]) -> None:
        if event.get("Silent") and self._silent is not None and not self._silent.take():
            self.silent_dropped += 1  # counted, not logged: this is the flood path
            return
        if self._user_meta is None:
            paths = event_paths(event)  # (as _groups does first: an event nobody sees ends here, in fewer calls)
            views = self._table.views_for_paths(paths) if paths else None
            if views:
                self._send(event, None, views)
        else:
            self._user_meta.deliver(event)

    def _groups(self, event: dict[str, Any], views: dict[Workspace, set[Session]] | None = None
                ) -> tuple[PreparedEvent | None, Groups, Policy | None]:
        """The event prepared (None when no view sees its paths: nothing is prepared for nobody), the sessions
        that get it now by workspace view, and the READ policy that chose them (UPDATE_USER_META only).
        ``views``: the table's views for the event's paths, when already looked up."""
        if views is None:
            paths = event_paths(event)
            views = self._table.views_for_paths(paths) if paths else None
        if not views:
            return None, [], None
        prepared = PreparedEvent(event)
        if prepared.kind != "UPDATE_USER_META":
            return prepared, list(views.items()), None
        source = event.get("Source") or {}
        policy = read_policy((source.get("MetaStore") or {}).get(POLICIES_META_KEY))
        if not policy[0]:
            return prepared, [], policy  # nobody is allowed
        groups: Groups = []
        for ws, sessions in views.items():
            allowed = [s for s in sessions if s.access is not None and subjects_allowed(policy, s.access.subjects)]
            if allowed:
                groups.append((ws, allowed))
        return prepared, groups, policy

    def _logins(self, event: dict[str, Any]) -> list[str]:
        return [s.access.login for _, sessions in self._groups(event)[1] for s in sessions if s.access is not None]

    def _send(self, event: dict[str, Any], entries: dict[str, dict[str, str]] | None,
              views: dict[Workspace, set[Session]] | None = None) -> None:
        prepared, groups, policy = self._groups(event, views)
        if prepared is None:
            return
        optimistic = bool(event.get("Optimistic"))
        for ws, recipients in groups:
            shaped = prepared.shape(ws)
            if shaped is None:
                continue
            scope = InView(ws, policy)
            if entries and "Target" in shaped:
                recipients = self._send_own_entries(shaped, scope, recipients, entries, optimistic)
            if recipients:
                self.delivered += fan_out(recipients, prepared.encode(shaped), scope, paced=True, optimistic=optimistic,
                                          what="node event")

    def _send_own_entries(self, shaped: dict[str, Any], scope: InView, recipients: Collection[Session],
                          entries: dict[str, dict[str, str]], optimistic: bool) -> list[Session]:
        """Send their own copy to the recipients whose login has entries; return the others."""
        plain: list[Session] = []
        by_login: dict[str, list[Session]] = {}
        for session in recipients:
            login = session.access.login if session.access is not None else ""
            if entries.get(login):
                by_login.setdefault(login, []).append(session)
            else:
                plain.append(session)
        for login, sessions in by_login.items():
            frame = encode(with_entries(shaped, entries[login]))
            self.delivered += fan_out(sessions, frame, scope, paced=True, optimistic=optimistic, what="node event")
        return plain
