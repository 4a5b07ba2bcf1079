"""``[server] workers = N`` (N > 1): the twistd process becomes a supervisor of N gateway processes.

Each worker is a whole gateway (``wsgw.service.DaemonService``: its own bus
subscriber, chat store connection, sessions, timers) on the shared Redis, so
it delivers every event to its own sockets and chat rooms span workers, as
several instances on one Redis do (README "Scaling out"). The supervisor
serves no WebSocket and reads no bus; it owns:

- **The listening sockets** (wsgw/workers/sockets.py). It binds every
  ``[server] listen`` endpoint's address at start, as a single process would
  (the same endpoint strings, the same one-line error for an address in use),
  and hands the workers their listening sockets as inherited file descriptors
  (``spawnProcess`` ``childFDs``); each worker adopts them with
  ``reactor.adoptStreamPort`` (the way Twisted documents) and wraps TLS itself.
  ``tcp:``, ``tcp6:`` (``[::]``, IPv4 and IPv6) and ``ssl:`` get one
  ``SO_REUSEPORT`` socket per worker, so the kernel spreads connections evenly;
  ``unix:`` and ``systemd:`` sockets (one socket, made before the daemon) are
  shared by every worker. The supervisor never accepts a connection.
- **The operator listener** (``[admin] listen``, wsgw/workers/operator.py):
  one ``/metrics`` merging the workers' (wsgw/workers/aggregate.py),
  ``/healthz`` over every worker, and ``/publish``, ``/disconnect``, ``/revoke``
  passed to a running worker. In the supervisor rather than in worker 0, so it
  answers while any worker is down or restarting.
- **Their lives.** A worker that ends while the supervisor runs (a crash,
  SIGKILL, the OOM killer) is started again on the same addresses after a delay:
  ``FIRST_DELAY`` s, doubled for each exit in a row within ``STABLE_AFTER`` s of
  its start, at most ``MAX_DELAY`` s, so a crash loop costs one start every 30
  s, not a spinning CPU. Its sockets' clients reconnect (to any worker); the
  other workers and their clients see nothing. SIGTERM or SIGINT to the
  supervisor: it closes its operator listener and the shared listening sockets
  it holds, sends SIGTERM to every worker, which stops accepting and shuts down
  as a single process does (its sockets closed with 1000 ``server shutting down`` within
  ``shutdown_timeout``), waits for them (``shutdown_timeout`` + 5 s, then
  SIGKILL), and exits 0. SIGHUP re-reads the configuration (the supervisor
  applies ``[log]`` format and level and ``[admin] max_connections``) and is
  passed to every worker, which reloads as a single process does
  (wsgw/reload.py). A worker whose supervisor is gone (SIGKILL) notices within a
  second and shuts down the same way.
- **Their logs.** A worker writes its log events as JSON (Twisted's
  ``eventAsJSON``) on its standard output; the supervisor re-emits each into its
  own log, with the field ``worker`` (its slot, 0 to N-1) and ``worker <slot>``
  in the text line's system, so the supervisor's format, level and destination
  apply to every line. A line that is not such an event (standard error, a
  crash before logging started) is logged as a warning naming the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from wsgw.config import Config, ConfigError, worker_count
from wsgw.internals.twisted import clear_exit_signal
from wsgw.logs import set_live_logs
from wsgw.service import SETTINGS, ListenFailed, address_of, bind
from wsgw.web.listener import ListenerGuard
from wsgw.workers.operator import WorkersView, make_supervisor_site
from wsgw.workers.sockets import Listener

FIRST_DELAY = 0.5  # seconds before a crashed worker is started again
MAX_DELAY = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long before it ended starts again after FIRST_DELAY
MAX_LINE = 1 << 20  # bytes of one log line of a worker; a longer one is passed on cut


class WorkerProcess(ProcessProtocol):
    """One worker process: its log lines relayed, its end reported to the supervisor."""

    def __init__(self, supervisor: Supervisor, slot: int, started: float) -> None:
        self._supervisor = supervisor
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        if len(self._partial[childFD]) > MAX_LINE:
            lines.append(self._partial[childFD])
            self._partial[childFD] = b""
        for line in lines:
            self._supervisor.relay(self.slot, childFD, line)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except (ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._supervisor.relay(self.slot, fd, rest)
        self._supervisor.ended(self, reason.value.exitCode, reason.value.signal)


def _how(code: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by signal {signum} ({name})"
    return f"exited with status {code}"


class Supervisor(MultiService):
    """The twistd service of ``[server] workers`` = ``count`` > 1 (the module docstring). ``config_path`` and
    ``overrides`` are how twistd was given the configuration (each worker reads it the same way); ``reread``
    reads it again (SIGHUP)."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any, count: int, config_path: str | None,
                 overrides: Mapping[str, str], reread: Callable[[], Config] | None = None) -> None:
        super().__init__()
        self.config = config
        self.count = count
        self._reactor = reactor
        self._path = config_path
        self._overrides = dict(overrides)
        self._reread = reread
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: Counter[int] = Counter()
        self._quick_exits: Counter[int] = Counter()
        self._pending: dict[int, IDelayedCall] = {}
        self._listeners: list[Listener] = []
        self._admin_ports: list[IListeningPort] = []
        self._when_none: list[Deferred[bool]] = []
        self._stopping = False
        self._run_dir = ""
        # the directory twistd was started in (its --rundir is entered later): workers start there, so the paths
        # the configuration names (secret files...) are the ones the supervisor read
        self._cwd = os.getcwd()
        self.admin_guard = ListenerGuard(reactor, "operator", max_sockets=config.admin_max_connections,
                                         deadline=config.handshake_timeout)
        self.view = WorkersView(reactor, self, self.admin_guard)
        self.admin_site = make_supervisor_site(self.view, self.admin_guard, access_log=config.access_log)

    # -- the pool, as the operator Site sees it

    def alive(self) -> list[tuple[int, int]]:
        return [(slot, w.pid) for slot, w in sorted(self._workers.items()) if w.pid is not None]

    def restarts(self) -> Mapping[int, int]:
        return self._restarts

    def socket_path(self, slot: int) -> str:
        return os.path.join(self._run_dir, f"worker-{slot}.sock")

    # -- start

    def startService(self) -> None:
        super().startService()
        try:
            for description in self.config.listen:
                listener = Listener(self._reactor, description)
                self._listeners.append(listener)
                self._log.info("listening on {address} ({how}, {count} workers)", address=listener.address,
                               count=self.count, how="a SO_REUSEPORT socket per worker" if listener.per_worker
                               else "one socket shared by the workers")
            for description in self.config.admin_listen:
                endpoint = serverFromString(self._reactor, description)
                site = self.admin_site.behind_tls() if isinstance(endpoint, SSL4ServerEndpoint) else self.admin_site
                self._admin_ports.append(bind(endpoint, site, "operator listener"))
                self._log.info("operator listener (/metrics, /publish, /revoke) of {count} workers on {address}",
                               count=self.count, address=address_of(self._admin_ports[-1]))
        except ListenFailed as e:
            self._log.critical("{message}", message=str(e))
            raise SystemExit(1) from None
        self._run_dir = tempfile.mkdtemp(prefix="wsgw-workers-", dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        try:
            for slot in range(self.count):
                self._spawn(slot)
        except OSError as e:
            self._log.critical("cannot listen for the workers ({listener}, {setting}): {error}",
                               listener="public listener", setting=SETTINGS["public listener"], error=str(e))
            raise SystemExit(1) from None
        signal.signal(signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.hangup))

    def _spawn(self, slot: int) -> None:
        path = self.socket_path(slot)
        for stale in (path, path + ".lock"):
            if os.path.lexists(stale):
                os.unlink(stale)
        escaped = path.replace("\\", "\\\\").replace(":", "\\:")
        overrides = {**self._overrides, "server.workers": "1", "admin.listen": f"unix:{escaped}:mode=600:lockfile=0"}
        if self.config.instance_name:  # each worker is an instance of the registry (GET /info): one name each
            overrides["operator.instance_name"] = f"{self.config.instance_name}/worker-{slot}"
        argv = [sys.executable, "-m", "wsgw.workers", "--slot", str(slot), "--listeners", str(len(self._listeners)),
                "--overrides", json.dumps(overrides)]
        if self._path is not None:
            argv += ["--config", self._path]
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        own: list[socket.socket] = []
        try:
            for k, listener in enumerate(self._listeners):
                fds[3 + k], mine = listener.for_worker()
                if mine is not None:
                    own.append(mine)
            env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
            worker = WorkerProcess(self, slot, self._reactor.seconds())
            self._reactor.spawnProcess(worker, sys.executable, argv, env=env, path=self._cwd, childFDs=fds)
        finally:
            for sock in own:  # the worker holds its own sockets now: they close when it ends
                sock.close()
        self._workers[slot] = worker
        self._log.info("worker {worker} started (pid {pid})", worker=slot, pid=worker.pid)

    # -- logs

    def relay(self, slot: int, fd: int, line: bytes) -> None:
        """One line a worker wrote on ``fd`` (1: a JSON log event, 2: standard error) into the supervisor's log."""
        if not line.strip():
            return
        text = line.decode("utf-8", "replace")
        if fd == 1 and text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict) and "log_time" in event:
                level, namespace = event.get("log_level"), event.get("log_namespace", "-")
                event["worker"] = slot
                event["log_system"] = f"worker {slot}" if namespace == "log_legacy" else \
                    f"worker {slot} {namespace}#{getattr(level, 'name', 'info')}"
                globalLogPublisher(event)
                return
        self._log.warn("worker {worker}: {line}", worker=slot, line=text.rstrip())

    # -- ends and restarts

    def ended(self, worker: WorkerProcess, code: int | None, signum: int | None) -> None:
        slot = worker.slot
        if worker.pid is not None:
            self.view.aggregate.ended(slot, worker.pid)
        if self._workers.get(slot) is worker:
            del self._workers[slot]
        uptime = self._reactor.seconds() - worker.started
        if self._stopping:
            self._log.info("worker {worker} (pid {pid}) {how}", worker=slot, pid=worker.pid, how=_how(code, signum))
            if not self._workers:
                waiting, self._when_none = self._when_none, []
                for d in waiting:
                    d.callback(True)
            return
        self._quick_exits[slot] = self._quick_exits[slot] + 1 if uptime < STABLE_AFTER else 0
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** self._quick_exits[slot])
        self._log.warn("worker {worker} (pid {pid}) {how} after {uptime:.1f} s: starting it again in {delay:g} s",
                       worker=slot, pid=worker.pid, how=_how(code, signum), uptime=uptime, delay=delay)
        self._pending[slot] = self._reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: int) -> None:
        del self._pending[slot]
        if self._stopping:
            return
        self._restarts[slot] += 1
        try:
            self._spawn(slot)
        except OSError as e:
            self._quick_exits[slot] += 1
            delay = min(MAX_DELAY, FIRST_DELAY * 2 ** self._quick_exits[slot])
            self._log.error("worker {worker} could not be given its listening sockets: {error}; trying again in "
                            "{delay:g} s", worker=slot, error=str(e), delay=delay)
            self._pending[slot] = self._reactor.callLater(delay, self._restart, slot)

    # -- reload

    def hangup(self) -> None:
        """SIGHUP: re-read the configuration, apply what the supervisor holds, pass the signal to every worker (each
        reloads itself). A file that does not validate is one error line; nothing is passed on then."""
        if not self.running or self._stopping or self._reread is None:
            return
        self._log.info("SIGHUP: reloading the configuration, and the workers'")
        try:
            new = self._reread()
        except ConfigError as e:
            self._log.error("reload refused, the configuration in force is kept: {error}", error=str(e))
            return
        set_live_logs(new.log_format, new.log_level)
        self.admin_guard.max_sockets = new.admin_max_connections
        if worker_count(new) != self.count:
            self._log.warn("reload: [server] workers changed to {count}: needs a restart, NOT applied",
                           count=worker_count(new))
        for worker in list(self._workers.values()):
            worker.signal("HUP")

    # -- stop

    def _no_workers(self, timeout: float) -> Deferred[bool]:
        """Fires True once no worker runs, False after ``timeout`` seconds."""
        d: Deferred[bool] = Deferred()
        if not self._workers:
            d.callback(True)
            return d
        self._when_none.append(d)
        def expire() -> None:
            if not d.called:
                self._when_none.remove(d)
                d.callback(False)

        timer = self._reactor.callLater(timeout, expire)

        def done(result: bool) -> bool:
            if timer.active():
                timer.cancel()
            return result

        return d.addCallback(done)

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        self._stopping = True
        self._reread = None
        self._log.info("shutting down: stopping {count} workers", count=len(self._workers))
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        closing = [maybeDeferred(port.stopListening) for port in self._admin_ports]
        closing += [maybeDeferred(listener.close) for listener in self._listeners]
        self._admin_ports, self._listeners = [], []
        yield DeferredList(closing)
        for worker in list(self._workers.values()):
            worker.signal("TERM")
        grace = self.config.shutdown_timeout + self.config.node_meta_timeout + 5.0
        if not (yield self._no_workers(grace)):
            self._log.warn("{count} workers still running {grace:g} s after SIGTERM: killing them",
                           count=len(self._workers), grace=grace)
            for worker in list(self._workers.values()):
                worker.signal("KILL")
            yield self._no_workers(5.0)
        shutil.rmtree(self._run_dir, ignore_errors=True)
        yield super().stopService()
        clear_exit_signal(self._reactor)
        self._log.info("shutdown complete")
