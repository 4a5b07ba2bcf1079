"""One worker process of ``[server] workers`` (started by wsgw/workers/supervisor.py, never by hand).

``python -m wsgw.workers --slot S --listeners K --overrides JSON [--config FILE]``:
the configuration is read as twistd read it (the same file, the same
command-line overrides, plus ``server.workers = 1`` and ``admin.listen`` on
the worker's private UNIX socket); file descriptors 3 to 3+K-1 are the
supervisor's listening sockets, in the order of ``[server] listen``. The worker
is a ``DaemonService`` (the whole gateway; SIGHUP reloads it, SIGTERM and
SIGINT shut it down as a single process shuts down) whose public listener
adopts those sockets (``reactor.adoptStreamPort``; an ``ssl:`` endpoint's TLS
is wrapped here) instead of binding. Log events go to standard output as JSON
(``eventAsJSON``), for the supervisor to write with its own observer.
It shuts down by itself once its supervisor is gone (its parent changed).
Exit status: 0 after a shutdown, 1 when it could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from typing import IO, Any

from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import LogEvent, Logger, eventAsJSON, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory

import wsgw.logs
from wsgw.config import ConfigError, config_from_file
from wsgw.internals.twisted import run_natively, tls_context_factory
from wsgw.logs import LiveLogs, tidied
from wsgw.service import DaemonService, address_of
from wsgw.web.listener import GuardedSite

FIRST_FD = 3
_log = Logger()


class ForwardedLogs(LiveLogs):
    """The worker's log observer: events at or above ``level`` as JSON lines (``eventAsJSON``) to ``out``, for the
    supervisor; ``format`` is the supervisor's business (it changes on SIGHUP, and is ignored here)."""

    def __init__(self, out: IO[str], level: str) -> None:
        super().__init__(out, "text", level)
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        event = tidied(event)
        level = event.get("log_level")
        if level is not None and not wsgw.logs.writes(level):
            return
        try:
            self._out.write(eventAsJSON(event) + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass  # the supervisor is gone: the orphan check ends this process


class WorkerService(DaemonService):
    """A DaemonService whose public listener adopts the supervisor's sockets ``fds`` (one per ``[server] listen``
    endpoint, in order)."""

    def __init__(self, config: Any, reactor: Any, reread: Any, fds: list[int]) -> None:
        super().__init__(config, reactor, reread)
        self._fds = fds

    def _listen(self, descriptions: tuple[str, ...], site: GuardedSite, what: str,
                listener: str) -> list[IListeningPort]:
        if listener != "public listener":
            return super()._listen(descriptions, site, what, listener)
        ports: list[IListeningPort] = []
        for description, fd in zip(descriptions, self._fds, strict=True):
            factory: Any = site
            if description.startswith("ssl:"):
                endpoint = serverFromString(self._reactor, description)
                assert isinstance(endpoint, SSL4ServerEndpoint)
                factory = TLSMemoryBIOFactory(tls_context_factory(endpoint), False, site.behind_tls())
            probe = socket.socket(fileno=fd)
            family = probe.family
            probe.detach()
            ports.append(self._reactor.adoptStreamPort(fd, family, factory))
            os.close(fd)  # adoptStreamPort took a duplicate
            self._log.info("{what} on {address} (the supervisor's socket)", what=what, address=address_of(ports[-1]))
        return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsgw.workers")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listeners", type=int, required=True)
    parser.add_argument("--overrides", required=True)
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    # the supervisor passes SIGHUP on at any time: before the service installs its handler, a reload is moot (the
    # configuration is being read now), and the default action would end the process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    overrides: dict[str, str] = json.loads(args.overrides)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    try:
        config = config_from_file(args.config, overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    observer = ForwardedLogs(out, config.log_level)
    wsgw.logs.live_logs = observer  # SIGHUP's [log] level applies here (wsgw.logs.set_live_logs)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    # This is the worker process's entry point (``python -m wsgw.workers``, as wsgw.tap.makeService is twistd's):
    # the one place the process takes the global reactor, here in main (importing this module does not), and
    # passes it on to everything it starts.
    from twisted.internet import reactor

    service = WorkerService(config, reactor, lambda: config_from_file(args.config, overrides),
                            list(range(FIRST_FD, FIRST_FD + args.listeners)))
    status = [0]

    def start() -> None:
        try:
            service.startService()
        except SystemExit as e:  # a port that cannot be bound, logged by DaemonService
            status[0] = int(e.code or 1)
            reactor.stop()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - logged, and the supervisor starts it again later
            _log.failure("worker {slot} could not start", slot=args.slot)
            status[0] = 1
            reactor.stop()  # type: ignore[attr-defined]

    parent = os.getppid()

    def orphaned() -> None:
        if os.getppid() != parent:
            _log.warn("worker {slot}: the supervisor is gone, shutting down", slot=args.slot)
            watch.stop()
            reactor.stop()  # type: ignore[attr-defined]

    watch = LoopingCall(orphaned)
    watch.clock = reactor  # type: ignore[assignment]
    watch.start(1.0, now=False)
    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown",  # type: ignore[attr-defined]
                                  lambda: service.stopService() if service.running else None)
    run_natively(reactor)
    reactor.run()  # type: ignore[attr-defined]
    return status[0]


