"""The node-metadata backend (PROTOCOL.md §4.1, ``[access] node_meta_url``): each user's metadata of a node.

Cells re-reads a node event's Target in each recipient's context, so that the
user's bookmark and user meta come back in the frame; the stock client replaces
a node's whole metadata with the frame's Target. The gateway has no tree
service: it asks this backend once per event, for every recipient login at once.

Request: ``POST <url>``, ``Content-Type: application/json``,
``Authorization: Bearer <token>`` when a token file is configured, body
``{"Node":{"Uuid":"n1","Path":"pydiods1/team/plan.md"},"Logins":["alice","bob"]}``.
Answer: ``200`` with an object mapping logins to MetaStore entries (values
JSON-encoded strings, as in MetaStore), e.g.
``{"alice":{"bookmark":"true","usermeta-tags":"\\"urgent\\""},"bob":{}}``; a login
left out gets nothing merged. Any other status, or an answer that is not such
an object, is a failure (the event then goes out as published); an entry of a
login that is not an object of strings is left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from wsgw.auth.http import TreqClient
from wsgw.frames import encode
from wsgw.interfaces import INodeMetaSource


class NodeMetaError(Exception):
    """The backend answered something other than 200 and a JSON object."""


@implementer(INodeMetaSource)
class HttpNodeMeta:
    """``lookup`` POSTs to ``url``; ``client`` is the HTTP client (a TreqClient on ``clock`` by default); the
    caller bounds the time (cancelling the Deferred abandons the request)."""

    def __init__(self, clock: IReactorTime, url: str, token: bytes | None = None, *,
                 client: Any = None, max_bytes: int = 1 << 20) -> None:
        self._url = url
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = "Bearer " + token.decode("utf-8")
        self._client = client if client is not None else TreqClient(clock, max_bytes=max_bytes)

    def lookup(self, node: Mapping[str, str], logins: Sequence[str]) -> Deferred[dict[str, dict[str, str]]]:
        body = encode({"Node": dict(node), "Logins": list(logins)})  # a lone surrogate goes escaped
        d: Deferred[Any] = self._client.post(self._url, body, self._headers)
        return d.addCallback(_entries)


def _entries(status_body: tuple[int, bytes]) -> dict[str, dict[str, str]]:
    status, body = status_body
    if status != 200:
        raise NodeMetaError(f"HTTP {status}")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise NodeMetaError("not JSON") from None
    if not isinstance(answer, dict):
        raise NodeMetaError("not a JSON object")
    return {
        login: entries for login, entries in answer.items()
        if isinstance(entries, dict) and all(isinstance(v, str) for v in entries.values())
    }
