"""The build (metadata in setup.cfg): the per-event modules compiled with mypyc when it can be, pure Python otherwise.

``WSGW_MYPYC`` chooses (README "Compiled modules"): ``auto`` (the default) compiles the modules of ``COMPILED``
when mypyc imports (pyproject.toml's build requirements bring it) and builds a wheel as pure Python when mypyc
is missing or the C compiler fails (no compiler, no Python headers: every compiled file is then removed, so
no module is half there); ``1`` makes either an error; ``0`` never compiles. An editable install (``make
install``) is never compiled: a compiled module next to its source would shadow every later edit of it.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The per-event path (issue 13, goal 2; bench/RESULTS.md "mypyc"), type-checked by `make lint` (the core strictly).
COMPILED = [
    "wsgw/bus/reads.py", "wsgw/cells.py", "wsgw/dispatch.py", "wsgw/flow.py", "wsgw/frames.py", "wsgw/pacing.py", "wsgw/sessions.py",
    "wsgw/events/batching.py", "wsgw/events/metastore.py", "wsgw/events/nodecheck.py", "wsgw/events/nodes.py",
    "wsgw/web/timing.py", "wsgw/web/outbound.py", "wsgw/internals/direct.py", "wsgw/internals/loop.py",
    # the connect path (issue 13, goal 3; bench/RESULTS.md "Connect path", part 4)
    "wsgw/access.py", "wsgw/gateway.py", "wsgw/web/upgrade.py", "wsgw/web/inbound.py",
    "wsgw/revocations.py", "wsgw/events/endpoint.py", "wsgw/internals/pyjwt.py",
]


class OptionalBuildExt(build_ext):
    """build_ext that, unless WSGW_MYPYC=1, falls back to pure Python when any extension fails to build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - CompileError, LinkError, a missing compiler...
            if _mode() == "1":
                raise
            print(f"wsgw: mypyc build failed ({e}): the modules stay pure Python", file=sys.stderr)
            for ext in self.extensions:
                for path in (self.get_ext_fullpath(ext.name),
                             os.path.join(self.build_lib, self.get_ext_filename(ext.name))):
                    if os.path.exists(path):
                        os.remove(path)
            self.extensions = []


def _mode() -> str:
    mode = os.environ.get("WSGW_MYPYC", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"WSGW_MYPYC={mode!r}: auto, 0 or 1")
    return mode


def _ext_modules() -> list[object]:
    mode = _mode()
    if mode == "0" or (mode == "auto" and {"editable_wheel", "develop"} & set(sys.argv)):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if mode == "1":
            raise
        print("wsgw: mypyc is not installed: the modules stay pure Python", file=sys.stderr)
        return []
    try:
        return list(mypycify(COMPILED, opt_level="3"))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - mypy's errors end in SystemExit
        if mode == "1":
            raise
        print(f"wsgw: mypyc refused the modules ({e}): they stay pure Python", file=sys.stderr)
        return []


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
