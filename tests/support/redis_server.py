"""A private, throwaway redis-server for tests that must stop, restart or password-protect Redis.

    with RedisServer(password="s3cret") as server:
        endpoint = server.endpoint      # "tcp:127.0.0.1:<port>"
        server.kill()                   # crash it (SIGKILL)
        server.start()                  # same port again

``start()`` returns once the server logs that it accepts connections (bounded
by ``timeout``); the port is chosen free once and kept across restarts. The
server runs without persistence, as a child process stopped by its pid. The binary
is the ``redis-server`` found on the PATH (``redis_server_binary()``).

The Redis the tests share is one setting, ``WSGW_TEST_REDIS`` (``host:port``,
default ``127.0.0.1:6379``): ``shared_address()`` and ``shared_endpoint()`` read
it when called, since tests/conftest.py sets it when it starts a private server
for the run (after the test modules are imported); nothing may copy it at import.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from types import TracebackType

_READY = b"Ready to accept connections"
SHARED_VARIABLE = "WSGW_TEST_REDIS"
SHARED_DEFAULT = "127.0.0.1:6379"


def redis_server_binary() -> str | None:
    """The ``redis-server`` on the PATH, or None."""
    return shutil.which("redis-server")


def shared_address() -> tuple[str, int]:
    """(host, port) of the Redis the tests share: ``WSGW_TEST_REDIS``, default 127.0.0.1:6379."""
    value = os.environ.get(SHARED_VARIABLE) or SHARED_DEFAULT
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{SHARED_VARIABLE}={value!r}: expected host:port, e.g. {SHARED_DEFAULT}")
    return host, int(port)


def shared_endpoint() -> str:
    """The shared Redis as a client endpoint string, ``tcp:host:port``."""
    host, port = shared_address()
    return f"tcp:{host}:{port}"


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a Redis on ``host:port`` answers PING within ``timeout`` seconds (a password-protected one
    answers NOAUTH, which counts as no)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server child process on 127.0.0.1 and a fixed port."""

    def __init__(self, password: str | None = None, port: int | None = None, timeout: float = 10.0) -> None:
        self.password = password
        self.port = port if port is not None else free_port()
        self._timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: list[bytes] = []

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait (bounded) until it is ready to accept connections."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on the PATH (Debian/Ubuntu: apt install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--loglevel", "notice"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._process = process
        assert process.stdout is not None
        fd = process.stdout.fileno()
        output = b""
        deadline = time.monotonic() + self._timeout
        while _READY not in output:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(remaining, 0))
            chunk = os.read(fd, 65536) if readable else b""
            if not chunk:  # timeout or EOF (the server exited)
                self.kill()
                process.stdout.close()
                raise RuntimeError(f"redis-server on port {self.port} did not start: {output.decode(errors='replace')}")
            output += chunk
        self._output = [output]
        # keep draining the log so the server never blocks on a full pipe
        threading.Thread(target=self._drain, args=(process,), daemon=True).start()

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self._output.append(line)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM) and wait for it to exit."""
        self._end(kill=False)

    def kill(self) -> None:
        """Crash the server (SIGKILL) and wait for it to exit."""
        self._end(kill=True)

    def freeze(self) -> None:
        """Suspend the server (SIGSTOP): connections stay open but nothing answers, like a dead peer."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def _end(self, kill: bool) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.send_signal(signal.SIGCONT)  # a frozen server could not act on SIGTERM
                process.terminate()
            try:
                process.wait(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self._timeout)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
