"""twistd plugin options and makeService: parses and wires, does no work."""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import ILogObserver
from twisted.python import usage

from wsgw.config import ConfigError, check_endpoints, config_from_file
from wsgw.logs import observer_for_twistd, use_live_logs_for_twistd


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the wsgw WebSocket gateway. Addresses are Twisted endpoint strings; everything else is read from "
        "the INI file given with --config (see etc/wsgw.ini). Secrets come from files or the environment "
        "(WSGW_HMAC_SECRET, WSGW_REDIS_PASSWORD), never from the command line."
    )
    optParameters = [
        ["config", "c", None, "INI configuration file (see etc/wsgw.ini)."],
        ["redis", "r", None, "Redis client endpoint, e.g. tcp:127.0.0.1:6379 (default: the embedded bus)."],
        ["workers", "w", None, "Worker processes serving the same listeners: a number or auto (the CPUs this "
                               "process may use); more than 1 needs Redis (default: [server] workers, 1)."],
        ["admin-listen", None, None, "Operator listener endpoint (/metrics, /publish), e.g. "
                                     "tcp:5051:interface=127.0.0.1; empty: none (default: [admin] listen)."],
    ]
    optFlags = [
        ["embedded", None, "Use the embedded in-process bus even if the config names a Redis."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen endpoint, e.g. tcp6:5050 or ssl:5443:privateKey=key.pem (repeatable; default tcp6:5050)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        overrides: dict[str, str] = {}
        if self["listen"]:
            overrides["server.listen"] = "\n".join(self["listen"])
        if self["redis"] is not None:
            overrides["server.redis"] = self["redis"]
        if self["workers"] is not None:
            overrides["server.workers"] = self["workers"]
        if self["admin-listen"] is not None:
            overrides["admin.listen"] = self["admin-listen"]
        if self["embedded"]:
            overrides["server.redis"] = ""
        self["wsgw_overrides"] = overrides  # SIGHUP re-reads the same file with the same options (wsgw.reload)
        try:
            self["wsgw_config"] = config = config_from_file(self["config"], overrides)
            check_endpoints(config)  # a mistyped endpoint: one line naming it, not a traceback at start
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        # twistd's --logger hook, before twistd reads it: the format and level, changeable on SIGHUP
        use_live_logs_for_twistd(getattr(self, "parent", None), config.log_format, config.log_level)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from wsgw.config import worker_count
    from wsgw.internals.twisted import run_natively
    from wsgw.service import DaemonService

    run_natively(reactor)  # the reactor's iteration compiled (wsgw.internals.loop), before twistd runs it
    path, overrides, config = options["config"], options["wsgw_overrides"], options["wsgw_config"]
    # SIGHUP reads the files again after twistd's --rundir changed the directory: the ones read now
    here = os.getcwd()
    count = worker_count(config)
    if count > 1:  # the supervisor of ``count`` gateway processes (README "Workers")
        from wsgw.workers.supervisor import Supervisor

        return Supervisor(config, reactor, count, path, overrides, reread=lambda: config_from_file(path, overrides, here))
    return DaemonService(config, reactor, reread=lambda: config_from_file(path, overrides, here))


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory (set by ``wsgw.logs.use_live_logs_for_twistd``): twistd calls it with no
    argument, after installing the reactor; the reactor is imported here, at the entry point, and passed on."""
    from twisted.internet import reactor

    return observer_for_twistd(reactor)  # type: ignore[arg-type]
