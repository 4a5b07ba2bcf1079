"""Baseline: a minimal Autobahn/Twisted broadcast server, the framework's own ceiling.

Every message on the Redis channel goes to every connected client with
``sendMessage``; a client's ``subscribe`` frame carries an HS256 token,
verified with PyJWT (signature and ``exp``, the secret from
``WSGW_HMAC_SECRET``, as the Node and Go baselines do): answered
``subscribed``, or an error frame and close 4001; a ``JOIN`` frame puts the client in the one chat room, and
any other client frame is relayed to the room's members (the chat scenario).
No rules, no indexes, no queues: what bare Autobahn costs.

    WSGW_HMAC_SECRET=... python bench/baselines/autobahn_broadcast.py --port 8001 --redis-port 6379 --channel C [--channel C2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource

import jwt
import txredisapi
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

SECRET = os.environ.get("WSGW_HMAC_SECRET", "")


class Broadcast(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)
        self.factory.room.discard(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        head = payload[:24].replace(b" ", b"")
        if head.startswith(b'{"@type":"subscribe"'):
            self.subscribe(payload)
        elif head.startswith(b'{"@type":"JOIN"'):
            self.factory.room.add(self)
        else:
            for member in list(self.factory.room):
                member.sendMessage(payload)


    def subscribe(self, payload: bytes) -> None:
        try:
            claims = jwt.decode(str(json.loads(payload).get("jwt") or ""), SECRET, algorithms=["HS256"])
        except (ValueError, AttributeError, jwt.InvalidTokenError) as e:
            self.sendMessage(json.dumps({"@type": "error", "error": f"invalid token: {e}"},
                                        separators=(",", ":")).encode())
            self.sendClose(4001, "invalid token")
            return
        self.sendMessage(json.dumps({"@type": "subscribed", "user": claims.get("name"),
                                     "exp": claims.get("exp")}, separators=(",", ":")).encode())


class BroadcastFactory(WebSocketServerFactory):
    protocol = Broadcast

    def __init__(self) -> None:
        super().__init__()
        self.clients: set[Broadcast] = set()
        self.room: set[Broadcast] = set()

    def broadcast(self, payload: bytes) -> None:
        for client in list(self.clients):
            client.sendMessage(payload)


class Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: str, channel: str, message: bytes | str) -> None:
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.factory.ws.broadcast(message)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.subscribe([c.encode() for c in self.factory.channels])


class SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = Subscriber


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--channel", action="append", required=True)
    args = p.parse_args()
    if not SECRET:
        p.error("WSGW_HMAC_SECRET is not set")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ws = BroadcastFactory()
    ws.setProtocolOptions(autoPingInterval=30, autoPingTimeout=60, openHandshakeTimeout=10)
    sub = SubscriberFactory()
    sub.charset = None  # messages stay bytes
    sub.ws = ws
    sub.channels = args.channel
    TCP4ClientEndpoint(reactor, "127.0.0.1", args.redis_port).connect(sub)
    reactor.listenTCP(args.port, ws, backlog=4096, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
