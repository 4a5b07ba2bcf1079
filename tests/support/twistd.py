"""The real daemon as operators run it: ``twistd --nodaemon wsgw ...`` as a child process, its log watched."""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.daemon import SECRET, channels
from tests.support.redis_server import shared_endpoint

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Twistd(ProcessProtocol):
    """Collects the daemon's log; ``logged(text)`` fires when it appears, ``ended`` with (exit code, signal)."""

    def __init__(self) -> None:
        self.output = b""
        self._waiting: list[tuple[bytes, Deferred[None]]] = []
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def logged(self, text: bytes, timeout: float = 30) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        d.addTimeout(timeout, reactor)
        self.childDataReceived(0, b"")
        return d

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        for text, d in list(self._waiting):
            if text in self.output:
                self._waiting.remove((text, d))
                d.callback(None)

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        for _, d in self._waiting:
            d.errback(RuntimeError("twistd exited:\n" + self.output.decode(errors="replace")))
        self._waiting.clear()
        self.ended.callback((reason.value.exitCode, reason.value.signal))


PRLIMIT = "/usr/bin/prlimit"


def spawn(args: list[str], env_extra: dict[str, str] | None = None,
          open_files: int | None = None, twistd_args: tuple[str, ...] = (),
          cwd: str | None = None) -> tuple[Twistd, object]:
    """Start ``twistd --nodaemon *twistd_args wsgw *args`` in directory ``cwd`` (default: this one);
    ``open_files`` sets its RLIMIT_NOFILE (through prlimit)."""
    proto = Twistd()
    env = {**os.environ, "WSGW_HMAC_SECRET": SECRET, **(env_extra or {})}
    argv = [TWISTD, "--nodaemon", "--pidfile=", *twistd_args, "wsgw", *args]
    if open_files is not None:
        argv = [PRLIMIT, f"--nofile={open_files}:{open_files}", *argv]
    transport = reactor.spawnProcess(proto, argv[0], argv, env=env, path=cwd)
    return proto, transport


def spawn_instance(directory: str, prefix: str, port: int, chat: str = "") -> tuple[Twistd, object]:
    """twistd running one gateway instance of the deployment ``prefix`` (its channels and chat keys, as
    ``tests.support.daemon.start_daemon`` names them) on the real Redis, listening on 127.0.0.1:``port``;
    ``chat`` is extra ``[chat]`` INI lines. The config is written to ``directory``/wsgw-<port>.ini."""
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    path = os.path.join(directory, f"wsgw-{port}.ini")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"[server]\nredis = {shared_endpoint()}\n[topics]\n{topics}\n[delivery]\nbatch_window = 0\n[admin]\nlisten =\n"
                f"[chat]\nkey_prefix = {prefix}:chat:\n{chat}\n")
    return spawn(["--config", path, "--listen", f"tcp:{port}:interface=127.0.0.1"])
