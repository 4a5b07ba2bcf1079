"""GatewayService: wires the configured parts together, starts them in order and shuts them down by design.

Start: bus, the chat's presence sweep, the revocations' load (subscribes wait
for it, PROTOCOL.md §3.1), then listeners (a port that cannot be bound aborts
startup with ListenFailed, one line; under twistd, DaemonService logs it and
exits with status 1, no traceback).
Stop (SIGTERM under systemd): stop accepting, flush pending node merges,
close every socket with 1000 ``server shutting down``, wait for them (bounded
by ``shutdown_timeout``), then stop the bus.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable, Generator
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsgw import __version__
from wsgw.auth.nodemeta import HttpNodeMeta
from wsgw.auth.resolvers import ClaimsResolver, HttpResolver
from wsgw.auth.tokens import TokenVerifier
from wsgw.bus.memory import MemoryBus
from wsgw.bus.redis import RedisBus
from wsgw.chat import model as chat_model
from wsgw.chat.memory_store import MemoryChatStore
from wsgw.chat.redis_store import RedisChatStore
from wsgw.chat.service import ChatService
from wsgw.config import Config, ConfigError
from wsgw.control import ControlHandler, MemoryRevocationStore, Operator, RevocationLoader
from wsgw.dispatch import Dispatcher
from wsgw.events import activity, idm, nodes, tasks
from wsgw.events.endpoint import EventsEndpoint
from wsgw.frames import CLOSE_NORMAL
from wsgw.gateway import Gateway
from wsgw.gcpolicy import GcPolicy
from wsgw.instances import InstanceRegistry, InstanceStore, MemoryInstances, instance_id
from wsgw.interfaces import IAccessResolver, IChatStore, IRevocationStore
from wsgw.internals.twisted import clear_exit_signal
from wsgw.logs import LineBudget
from wsgw.reauth import Reauthorizer
from wsgw.redis.connection import RedisCommands, RedisLink
from wsgw.redis.instances import RedisInstances
from wsgw.redis.revocations import RedisRevocationStore
from wsgw.reload import reload
from wsgw.revocations import Revocation, Revocations
from wsgw.web.inbound import InboundPolicy
from wsgw.web.info import summary
from wsgw.web.listener import GuardedSite, ListenerGuard, public_cap
from wsgw.web.metrics import Delivering, Metrics, MetricsView
from wsgw.web.outbound import WriteBatch
from wsgw.web.protocols import GatewayFactory
from wsgw.web.site import make_admin_site, make_site


class ListenFailed(Exception):
    """A listen endpoint could not be bound; the message is one line: the address, the listener, the setting
    that names it and the reason (``cannot listen on 127.0.0.1:5050 (public listener, [server] listen or
    twistd --listen): Address already in use``)."""


FREEZE_INTERVAL = 0.25  # seconds between checks for promoted objects to freeze (wsgw.gcpolicy)
SETTINGS = {"public listener": "[server] listen or twistd --listen",
            "operator listener": "[admin] listen or twistd --admin-listen"}


def bind(endpoint: Any, factory: Any, listener: str) -> IListeningPort:
    """``endpoint.listen(factory)``'s port, bound now; ListenFailed (one line naming the address, ``listener`` and
    the setting naming it) when the address cannot be bound. TCP, SSL, UNIX and systemd endpoints listen
    synchronously, so the outcome is known on return."""
    ports: list[IListeningPort] = []
    failures: list[Failure] = []
    endpoint.listen(factory).addCallbacks(ports.append, failures.append)
    if failures:
        error = failures[0].value
        if isinstance(error, CannotListenError):
            reason = getattr(error.socketError, "strerror", None) or error.socketError
            raise ListenFailed(f"cannot listen on {error.interface or '*'}:{error.port} ({listener}, "
                               f"{SETTINGS[listener]}): {reason}")
        failures[0].raiseException()
    if not ports:
        raise ListenFailed(f"{listener}: the endpoint did not listen at once ({type(endpoint).__name__})")
    return ports[0]


def address_of(port: IListeningPort) -> str:
    """``host:port`` (``[host]:port`` for IPv6, RFC 3986) of a listening port, or its UNIX path (its repr would
    name the class)."""
    host = port.getHost()
    if not hasattr(host, "port"):
        name = getattr(host, "name", host)
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    address = str(getattr(host, "host", ""))
    return f"[{address}]:{host.port}" if ":" in address else f"{address}:{host.port}"


class GatewayService(MultiService):
    """The whole daemon as one twisted service."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        clock: IReactorTime = reactor
        self.log_budget = LineBudget(clock, config.peer_lines_per_minute)
        self.redis_commands: RedisCommands | None = None
        self.bus: MemoryBus | RedisBus
        store: IChatStore
        self.write_batch = WriteBatch()  # each socket's frames of one read from the bus leave in one write
        if config.redis:
            self.bus = RedisBus(reactor, config.redis, config.topics, password=config.redis_password,
                                db=config.redis_db, batch=self.write_batch)
            self.redis_commands = RedisCommands(reactor, config.redis, password=config.redis_password,
                                                db=config.redis_db, role="chat store",
                                                reply_timeout=config.store_timeout)
            store = RedisChatStore(self.redis_commands, prefix=config.chat_key_prefix,
                                   max_in_doubt=config.max_changes_in_doubt)
        else:
            self.bus = MemoryBus(config.topics)
            store = MemoryChatStore()
        self.chat_store = store
        self.revocation_store: IRevocationStore = MemoryRevocationStore() if self.redis_commands is None else \
            RedisRevocationStore(self.redis_commands, config.revocation_prefix)
        self.verifier = verifier = TokenVerifier(
            clock, algorithms=config.algorithms, hmac_secret=config.hmac_secret,
            public_key_pem=config.public_key_pem, oidc_issuer=config.oidc_issuer or None,
            audience=config.audience or None, issuer=config.issuer or None, leeway=config.leeway,
        )
        resolver: IAccessResolver
        if config.resolver == "http":
            resolver = HttpResolver(clock, config.access_url, cache_ttl=config.access_cache_ttl,
                                    refusal_ttl=config.access_refusal_ttl, timeout=config.access_timeout,
                                    max_requests=config.access_max_requests, log_budget=self.log_budget)
        else:
            resolver = ClaimsResolver()
        self.gateway = Gateway(clock, verifier, resolver, auth_timeout=config.auth_timeout, leeway=config.leeway,
                               max_queued_bytes=config.max_queued_bytes,
                               max_waiting_frames=max(1, int(config.inbound_burst)),
                               max_sockets_per_user=config.max_connections_per_user, log_budget=self.log_budget,
                               revocations=Revocations(clock, config.max_token_lifetime, config.leeway))
        table = self.gateway.table
        self.chat = ChatService(
            clock, store, lambda payload: self.bus.publish("chat", payload),
            history_cap=config.history_cap, history_on_join=config.history_on_join,
            presence_timeout=config.presence_timeout,
            max_message_chars=config.max_message_chars,
            offload=lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args),
            log_budget=self.log_budget,
            max_queued_frames=max(1, int(config.inbound_burst)),
            max_queued_bytes=max(1, int(config.inbound_burst)) * config.max_frame_chat,
            close=lambda session, code, reason: self.gateway.close(session, code, reason),
            max_rooms_per_user=config.max_rooms_per_user,
            max_store_calls=config.max_store_calls,
            max_edits_per_message=config.max_edits_per_message, max_history_page=config.max_history_page,
            max_rooms_per_socket=config.max_rooms_per_socket, max_history_bytes=max(1, config.max_queued_bytes // 4),
            table=table,
        )
        self.events = EventsEndpoint(table, clock, pacing_rate=config.pacing_rate, pacing_burst=config.pacing_burst,
                                     pacing_max_delay=config.pacing_max_delay)
        user_meta = HttpNodeMeta(clock, config.node_meta_url, config.node_meta_token) if config.node_meta_url else None
        self.nodes = nodes.NodeHandler(table, clock, batch_window=config.batch_window,
                                       silent_rate=config.silent_rate, silent_burst=config.silent_burst,
                                       user_meta=user_meta, user_meta_timeout=config.node_meta_timeout)
        self.reauth = Reauthorizer(self.gateway, resolver, clock, max_requests=config.access_max_requests,
                                   remember=self._remember, timeout=config.access_timeout)
        task_handler, idm_handler = tasks.TaskHandler(table), idm.IdmHandler(table, self.reauth.handle)
        self.control = ControlHandler(self.gateway, config.publish_token, clock, self.log_budget)  # PROTOCOL §3.1
        ready = None if self.redis_commands is None else self.redis_commands.whenConnected
        self.revocation_loader = RevocationLoader(clock, self.revocation_store, self.gateway, ready=ready,
                                                  timeout=config.store_timeout, apply=self.control.enforce)
        self._catch_up = LoopingCall(self._revocations_catch_up)  # after a bus reconnect: the messages missed
        self._catch_up.clock = clock
        activity_handler = activity.ActivityHandler(table)
        self.dispatcher = Dispatcher({
            "tree": self.nodes, "meta": self.nodes, "tasks": task_handler, "idm": idm_handler,
            "activity": activity_handler, "chat": self.chat, "control": self.control,
        })
        validators = {
            "tree": nodes.validate, "meta": nodes.validate, "tasks": tasks.validate, "idm": idm.validate,
            "activity": activity.validate, "chat": chat_model.validate,
        }
        cap, self._cap_reason = public_cap(config.max_connections, config.admin_max_connections,
                                           resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.public_guard = ListenerGuard(clock, "public", max_sockets=cap, per_ip=config.max_connections_per_ip,
                                          deadline=config.handshake_timeout)
        self.admin_guard = ListenerGuard(clock, "operator", max_sockets=config.admin_max_connections,
                                         deadline=config.handshake_timeout)
        deliveries: dict[str, Delivering] = {"nodes": self.nodes, "tasks": task_handler, "idm": idm_handler, "activity": activity_handler,
                      "chat": self.chat}
        self.metrics = Metrics(MetricsView(
            gateway=self.gateway, dispatcher=self.dispatcher, nodes=self.nodes, chat=self.chat, deliveries=deliveries,
            bus=self.bus, redis_links=self._redis_links, listeners=(self.public_guard, self.admin_guard),
            access=resolver if isinstance(resolver, HttpResolver) else None, log_budget=self.log_budget,
            chat_store=store if isinstance(store, RedisChatStore) else None, control=self.control,
            reauth=self.reauth, pacing=self.events,
        ), config.topics, clock)
        self.bus.listen(self.metrics.timed(self.dispatcher))
        self.gc = GcPolicy(clock, self.metrics.registry)  # pauses timed while running; freezing: DaemonService
        self.bus.setServiceParent(self)
        if self.redis_commands is not None:
            self.redis_commands.setServiceParent(self)
        policy = InboundPolicy(config.inbound_rate, config.inbound_burst, config.allowed_origins)
        common: dict[str, Any] = dict(ping_interval=config.ping_interval, pong_timeout=config.pong_timeout,
                                      policy=policy, guard=self.public_guard,
                                      handshake_timeout=config.handshake_timeout, log_budget=self.log_budget,
                                      batch=self.write_batch)
        self.factories = (
            GatewayFactory(self.gateway, self.events, reactor, clock, max_frame=config.max_frame_ws, **common),
            GatewayFactory(self.gateway, self.chat, reactor, clock, max_frame=config.max_frame_chat, **common),
        )
        self.site = make_site(
            *self.factories,
            self.problem,
            self.public_guard,
            live_page=config.live_page, access_log=config.access_log, log_budget=self.log_budget,
        )
        self.ports: list[IListeningPort] = []
        self.admin_ports: list[IListeningPort] = []
        instances: InstanceStore = MemoryInstances(clock) if self.redis_commands is None else \
            RedisInstances(self.redis_commands, clock, config.instance_prefix)
        self.instances = InstanceRegistry(  # the heartbeat of this instance, and GET /info (issue 14)
            clock, instances, instance_id(config.instance_name), __version__, config.heartbeat,
            totals=lambda: (sum(self.dispatcher.received.values()), sum(h.delivered for h in deliveries.values())),
            snapshot=lambda: summary(self.gateway.census(), self.chat.rooms_active, self.gateway.closes,
                                     self.bus.state, self.bus.connected, self.addresses()),
            ready=ready)
        published = {topic: check for topic, check in validators.items() if topic in config.topics}
        self.operator = None if config.publish_token is None else Operator(
            clock, self.bus, self.revocation_store, self.gateway.revocations, config.publish_token)
        self.admin_site = make_admin_site(self.metrics, self.bus, self.problem, published, config.publish_token,
                                          self.admin_guard, access_log=config.access_log, log_budget=self.log_budget,
                                          operator=self.operator, registry=self.instances,
                                          page=config.operator_page, channels=config.topics)

    def startService(self) -> None:
        """Start the bus and the chat's presence sweep, then listen; a port that cannot be bound raises here,
        so startup fails."""
        super().startService()
        self.gc.watch()
        for notice in self.config.notices:
            self._log.warn("{notice}", notice=notice)
        self.chat.start()
        self.revocation_loader.start()  # subscribes wait for the revocations (PROTOCOL.md §3.1)
        if isinstance(self.bus, RedisBus):
            self._catch_up.start(1.0, now=False)
        self.ports = self._listen(self.config.listen, self.site, "listening", "public listener")
        lowered = 0 < self.public_guard.max_sockets < self.config.max_connections
        (self._log.warn if lowered else self._log.info)(
            "public listener: at most {cap} open sockets ({why}), {per_ip} per address; {timeout} s to send a "
            "request or complete a WebSocket handshake", cap=self.public_guard.max_sockets, why=self._cap_reason,
            per_ip=self.public_guard.per_ip or "no cap", timeout=self.public_guard.deadline)
        what = "operator listener (/metrics, /publish, /revoke, /info" + (", operator page at /)" if
                                                                          self.config.operator_page else ")")
        self.admin_ports = self._listen(self.config.admin_listen, self.admin_site, what, "operator listener")
        self.instances.start()

    def addresses(self) -> list[str]:
        """The addresses listened on: public ones, then the operator listener's (``host:port``, or a UNIX path)."""
        return [address_of(port) for port in self.ports + self.admin_ports]

    def reload(self, config: Config) -> Config:
        """Apply what can change live of ``config`` (SIGHUP; ``wsgw.reload``); returns the configuration now in
        force (also ``self.config``)."""
        return reload(self, config)

    def _listen(self, descriptions: tuple[str, ...], site: GuardedSite, what: str,
                listener: str) -> list[IListeningPort]:
        ports: list[IListeningPort] = []
        for description in descriptions:
            endpoint = serverFromString(self._reactor, description)
            factory = site.behind_tls() if isinstance(endpoint, SSL4ServerEndpoint) else site
            ports.append(bind(endpoint, factory, listener))
            self._log.info("{what} on {address}", what=what, address=address_of(ports[-1]))
        return ports

    def _revocations_catch_up(self) -> None:
        if isinstance(self.bus, RedisBus):
            self.revocation_loader.catch_up(self.bus.links[0].reconnects)

    def _remember(self, revocation: Revocation) -> None:
        """Keep a revocation the claims rules derived from an IDM event (PROTOCOL.md §3.1) where a restarted
        instance finds it; every instance got the event and saves the same entry (saving is idempotent)."""
        d = self.revocation_store.save(revocation, self.gateway.revocations.expires(revocation))
        d.addErrback(lambda f: self._log.warn("could not keep {what} {key} revoked in the store: {error}",
                                              what=revocation.kind, key=revocation.key, error=f.getErrorMessage()))

    def problem(self) -> str | None:
        """Why the daemon cannot serve now, for /healthz: the bus down, or a Redis connection not set up or not
        answering its PINGs (``RedisLink.trouble``); None when it can."""
        if not self.bus.connected:
            return f"bus {self.bus.state}"
        for link in self._redis_links():
            trouble = link.trouble
            if trouble is not None:
                return f"Redis {link.role} {trouble}"
        return None

    def _redis_links(self) -> list[RedisLink]:
        """The Redis connections (bus subscriber, bus publisher, chat store commands), for metrics."""
        links: list[RedisLink] = list(self.bus.links) if isinstance(self.bus, RedisBus) else []
        if self.redis_commands is not None:
            links.append(self.redis_commands)
        return links

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        self._log.info("shutting down: closing {n} sockets", n=len(self.gateway.table))
        ports, self.ports = self.ports + self.admin_ports, []
        self.admin_ports = []
        yield DeferredList([maybeDeferred(port.stopListening) for port in ports])
        removed = self.instances.stop()  # gone from every /info at once, not after the record's TTL
        yield removed.addTimeout(min(2.0, self.config.shutdown_timeout), self._reactor).addErrback(lambda _: None)
        self.revocation_loader.stop()
        if self._catch_up.running:
            self._catch_up.stop()
        flushed = self.nodes.flush()  # pending merges, and the events waiting for the node-metadata backend
        flushed.addTimeout(self.config.node_meta_timeout + 1.0, self._reactor)
        yield flushed.addErrback(lambda _: self._log.warn("node events still waiting for their metadata: dropped"))
        self.gateway.close_all(CLOSE_NORMAL, "server shutting down")
        drained = self.gateway.when_empty()
        drained.addTimeout(self.config.shutdown_timeout, self._reactor)
        try:
            yield drained
        except Exception:
            self._log.warn("{n} sockets still open after {t} s: dropping them",
                           n=len(self.gateway.table), t=self.config.shutdown_timeout)
            self.gateway.abort_all()
            gone = self.gateway.when_empty()  # aborted connections are reported lost on the next reactor turns
            gone.addTimeout(1.0, self._reactor)
            yield gone.addErrback(lambda _: None)
        chat_done = self.chat.stop()  # presence removals of the closed sockets, before the bus stops
        chat_done.addTimeout(self.config.shutdown_timeout, self._reactor)
        try:
            yield chat_done
        except Exception:
            self._log.warn("chat presence updates still pending after {t} s: dropping them",
                           t=self.config.shutdown_timeout)
        yield super().stopService()
        self.gc.stop()
        # twistd re-raises the signal that stopped the reactor (exit status 143 for SIGTERM); a designed
        # shutdown that got this far is a success, so let it exit 0 as operators and systemd expect.
        clear_exit_signal(self._reactor)
        self._log.info("shutdown complete")


class DaemonService(GatewayService):
    """GatewayService as twistd runs it (wsgw/tap.py): a port that cannot be bound is logged as one line and
    the process exits with status 1, instead of twistd's traceback (issue 14).

    SIGHUP reloads, never kills (issue 14): ``reread`` (the config file read again with the same command-line
    options) is applied by ``hangup`` in the reactor thread; a file that does not validate is one error line and
    the configuration in force stays. twistd itself does nothing on SIGHUP (its default action ended the
    process): the handler installed at start replaces it, and stays installed during shutdown (a SIGHUP then
    does nothing)."""

    def __init__(self, config: Config, reactor: Any, reread: Callable[[], Config] | None = None) -> None:
        super().__init__(config, reactor)
        self._reread = reread

    def startService(self) -> None:
        try:
            super().startService()
        except ListenFailed as e:
            self._log.critical("{message}", message=str(e))
            raise SystemExit(1) from None
        if self.config.gc_freeze:  # the process is the daemon's own: its heap may be frozen (wsgw.gcpolicy)
            self.gc.start_freezing(FREEZE_INTERVAL)
        if self._reread is not None:
            signal.signal(signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.hangup))

    def hangup(self) -> None:
        """Re-read the configuration and apply it (``reload``); a ConfigError is logged as one line, and the
        configuration in force is kept. Does nothing once the service stopped."""
        if not self.running or self._reread is None:
            return
        self._log.info("SIGHUP: reloading the configuration")
        try:
            config = self._reread()
        except ConfigError as e:
            self._log.error("reload refused, the configuration in force is kept: {error}", error=str(e))
            return
        try:
            self.reload(config)
        except Exception:  # noqa: BLE001 - a bug here must not end the daemon
            self._log.failure("reload failed midway; the daemon keeps running")

    def stopService(self) -> Deferred[None]:
        self._reread = None  # a SIGHUP during the shutdown does nothing
        return super().stopService()  # type: ignore[no-any-return]
