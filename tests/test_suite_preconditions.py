"""The two commands on a fresh machine (issue 14): the suite checks its preconditions before any test and says in
one line what is missing, uses a private redis-server when no Redis answers, bounds its waits, stops on Ctrl-C;
`make test` goes on without apt-get. Each case runs pytest or make in a child process, bounded."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError

from tests.support import daemon as daemon_support
from tests.support.daemon import new_prefix, start_daemon
from tests.support.redis_server import SHARED_VARIABLE, free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LIMIT = 120.0  # seconds any child run may take before the test fails


def run_pytest(args: list[str], path: str, redis: str, timeout: float = LIMIT) -> tuple[subprocess.CompletedProcess[str], float]:
    """pytest in a child process from the repository root, with PATH=``path`` and WSGW_TEST_REDIS=``redis``."""
    env = {**os.environ, "PATH": path, SHARED_VARIABLE: redis, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    done = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def dead_redis() -> str:
    """An address on loopback where nothing answers."""
    return f"127.0.0.1:{free_port()}"


def test_no_redis_and_no_redis_server_stop_the_run_at_once_with_one_line(tmp_path: Path) -> None:
    """Nothing answers on WSGW_TEST_REDIS and no redis-server is on the PATH: the run stops before its first test,
    within seconds, with exit status 4 and one line on stderr saying what is missing and how to get it."""
    done, took = run_pytest(["tests/test_integration.py"], str(tmp_path), dead_redis())
    assert done.returncode == 4, done.stdout + done.stderr
    assert took < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ERROR: wsgw tests: redis-server is not on the PATH")
    assert "apt install redis-server" in lines[0] and "does not answer" in lines[0]
    assert "passed" not in done.stdout and "failed" not in done.stdout


@pytest.mark.skipif(redis_server_binary() is None, reason="needs redis-server on the PATH")
def test_without_a_redis_a_private_redis_server_from_the_path_serves_the_run(tmp_path: Path) -> None:
    """Nothing answers on WSGW_TEST_REDIS, redis-server is on the PATH (wherever it is: here a link in a
    directory of its own): a private server is started, said in one line, and a test of two daemons sharing
    Redis passes on it."""
    (tmp_path / "redis-server").symlink_to(redis_server_binary() or "")
    test = "tests/test_integration.py::test_two_instances_on_one_redis_deliver_to_their_own_sessions"
    done, _ = run_pytest([test], str(tmp_path), dead_redis())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "using a private redis-server on 127.0.0.1:" in done.stdout
    assert "1 passed" in done.stdout


def test_unit_tests_need_neither_redis_nor_redis_server(tmp_path: Path) -> None:
    """`make test-unit` (-m unit) runs without any Redis: the preconditions are only checked for other tests."""
    done, _ = run_pytest(["-m", "unit", "tests/test_frames.py", "tests/test_flow.py"], str(tmp_path), dead_redis())
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


POLLING = '''
import pytest
import pytest_twisted

from tests.support.daemon import healthz
from tests.support.wsclient import connect

pytestmark = pytest.mark.unit


@pytest_twisted.ensureDeferred
async def test_polls_forever(gateway):
    daemon = await gateway(redis=None)
    await connect(daemon.port)
    polls = 0
    while await healthz(daemon.port) == 200:
        polls += 1
        if polls == 1:  # one poll answered: the test is parked in the reactor from here on
            print("WAITING", flush=True)
'''


def test_ctrl_c_stops_a_test_that_polls_on_the_reactor(tmp_path: Path) -> None:
    """SIGINT while a test polls a daemon (embedded bus) ends the run (pytest's KeyboardInterrupt report) within
    seconds: the interrupt is not logged by the reactor's loop and ignored, and the process does not then wait
    forever at exit for the reactor's thread pool, left running when the poll's next answer came during the
    reactor's shutdown."""
    (tmp_path / "test_polling.py").write_text(POLLING)
    args = [PYTHON, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "tests.conftest",
            "--rootdir", str(tmp_path), str(tmp_path / "test_polling.py")]
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        assert child.stdout is not None
        output = b""
        deadline = time.monotonic() + LIMIT
        while b"WAITING" not in output:
            chunk = child.stdout.read1(4096)  # type: ignore[attr-defined]
            assert chunk and time.monotonic() < deadline, output.decode(errors="replace")
            output += chunk
        child.send_signal(signal.SIGINT)
        rest, _ = child.communicate(timeout=20)
        output += rest
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == 2, output.decode(errors="replace")
    assert b"KeyboardInterrupt" in output


@pytest_twisted.ensureDeferred
async def test_start_daemon_gives_up_when_redis_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway fixture's start waits a bounded time for Redis (CONNECT_TIMEOUT), then fails and stops the
    daemon, instead of waiting on whenConnected() forever."""
    monkeypatch.setattr(daemon_support, "CONNECT_TIMEOUT", 0.5)
    started = reactor.seconds()
    starting: Deferred[object] = Deferred.fromCoroutine(start_daemon(new_prefix(), redis=f"tcp:127.0.0.1:{free_port()}"))
    starting.addTimeout(5, reactor)  # the bound of this test, should start_daemon wait forever
    with pytest.raises(TimeoutError):
        await starting
    assert reactor.seconds() - started < 4


def test_make_test_runs_the_tests_when_the_browser_cannot_be_installed(tmp_path: Path) -> None:
    """With no chromium, no apt-get and no sudo on the PATH, `make install-browser` fails saying what to install,
    and `make test` says the browser test will be skipped, then runs pytest (here a stand-in in a stand-in venv)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pytest_stub = venv / "bin" / "pytest"
    pytest_stub.write_text("#!/bin/sh\necho \"STAND-IN PYTEST $*\"\n")
    pytest_stub.chmod(0o755)
    (venv / ".installed").touch()  # newer than setup.cfg: `make install` has nothing to do
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "sh", make):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / os.path.basename(tool)).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    browser = subprocess.run([make, "-C", str(ROOT), f"VENV={venv}", "install-browser"], env=env,
                             capture_output=True, text=True, timeout=LIMIT)
    assert browser.returncode != 0
    assert "install-browser: no apt-get: install chromium and chromedriver" in browser.stdout
    done = subprocess.run([make, "-C", str(ROOT), f"VENV={venv}", "test"], env=env,
                          capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "make test: no chromium: the browser test will be skipped" in done.stdout
    assert "STAND-IN PYTEST -q -p no:randomly" in done.stdout


def test_make_run_on_a_busy_port_says_so_in_one_line_before_any_banner() -> None:
    """`make run` with its port taken: one line naming the address and the make variables, no token banner
    announcing a daemon that will not start, no traceback; exit status not 0."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs make")
    with socket.create_server(("127.0.0.1", 0)) as taken, socket.create_server(("127.0.0.1", 0)) as other:
        port, admin = taken.getsockname()[1], other.getsockname()[1]
        other.close()
        done = subprocess.run([make, "-C", str(ROOT), "--no-print-directory", f"PORT={port}",
                               f"ADMIN_PORT={admin}", "run"], capture_output=True, text=True, timeout=LIMIT)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"make run: cannot listen on 127.0.0.1 port {port}: Address already in use" in output
    assert "make run PORT=... ADMIN_PORT=..." in output
    assert "A token for user" not in output and "Traceback" not in output
