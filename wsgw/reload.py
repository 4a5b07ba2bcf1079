"""SIGHUP: the configuration file re-read and applied while the daemon runs (issue 14); it never stops the daemon.

``reload(service, new)`` compares ``new`` (the file re-read with the same
command-line options, ``wsgw.tap``) with what is in force (``service.config``)
and applies, each through the owning object's own setter:

- ``[log] format``, ``level`` (``wsgw.logs.set_live_logs``; not when twistd logs
  through ``--logger`` or ``--syslog``), ``peer_lines_per_minute``;
- ``[auth] hmac_secret_file``, ``public_key_file``, and the content of those
  files (``TokenVerifier.rekey``): a token signed with the new secret is
  accepted from now on, one signed with the previous one refused, with no
  grace period; the sockets already subscribed stay open (they were verified);
- ``[admin] publish_token_file`` and its content (``/publish``, ``/disconnect``,
  ``/revoke`` and the control channel's mac, PROTOCOL.md §3.1), when a token was
  configured at start (turning the operator pages on needs a restart);
- ``[websocket] allowed_origins`` (the next handshakes), ``inbound_rate``,
  ``inbound_burst`` (the flood limit of the sockets opened from now on; the
  queues sized from ``inbound_burst`` at start keep their size),
  ``max_connections_per_ip`` and ``[server] max_connections``, ``[admin]
  max_connections`` (the next accepts);
- ``[delivery] pacing_rate``, ``pacing_burst``, ``pacing_max_delay``: the
  sockets opened from now on; those open keep their pacing.

Every other setting that changed (listen addresses, Redis, topics, chat,
access backend...) is logged, one line each, as needing a restart and not
applied; ``service.config`` becomes what is in force: the old values of those.
Each applied setting is logged as one line (without a secret's value).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from wsgw.config import _KEYS, Config
from wsgw.logs import set_live_logs
from wsgw.web.inbound import InboundPolicy
from wsgw.web.listener import public_cap
from wsgw.web.site import set_operator_token

if TYPE_CHECKING:
    from wsgw.service import GatewayService

_log = Logger()

# a secret read from a file: the Config attribute holding it -> the one holding its file's name
SECRETS = {"hmac_secret": "hmac_secret_file", "public_key_pem": "public_key_file", "publish_token": "publish_token_file",
           "redis_password": "redis_password_file", "node_meta_token": "node_meta_token_file"}


def _logs(service: GatewayService, new: Config) -> str | None:
    if not set_live_logs(new.log_format, new.log_level):
        return "twistd logs through --logger or --syslog here, or this is not twistd"
    return None


def _budget(service: GatewayService, new: Config) -> str | None:
    service.log_budget.per_minute = new.peer_lines_per_minute
    return None


def _keys(service: GatewayService, new: Config) -> str | None:
    try:
        service.verifier.rekey(new.hmac_secret, new.public_key_pem)
    except ValueError as e:
        return str(e)
    return None


def _operator_token(service: GatewayService, new: Config) -> str | None:
    if service.config.publish_token is None and new.publish_token is not None:
        return "the operator pages were off at start: turning them on needs a restart"
    set_operator_token(service.admin_site, new.publish_token)
    service.control.set_token(new.publish_token)
    if service.operator is not None and new.publish_token is not None:
        service.operator.set_token(new.publish_token)
    return None


def _inbound(service: GatewayService, new: Config) -> str | None:
    policy = InboundPolicy(new.inbound_rate, new.inbound_burst, new.allowed_origins)
    for factory in service.factories:
        factory.policy = policy
    return None


def _pacing(service: GatewayService, new: Config) -> str | None:
    service.events.set_pacing(new.pacing_rate, new.pacing_burst, new.pacing_max_delay)
    return None


def _caps(service: GatewayService, new: Config) -> str | None:
    cap, _ = public_cap(new.max_connections, new.admin_max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    service.public_guard.max_sockets = cap
    service.public_guard.per_ip = new.max_connections_per_ip
    service.admin_guard.max_sockets = new.admin_max_connections
    return None


Apply = Callable[["GatewayService", Config], "str | None"]
"""Applies some settings of the new Config; returns None, or why they could not be (the old ones stay)."""

LIVE: tuple[tuple[tuple[str, ...], Apply, str], ...] = (
    (("log_format", "log_level"), _logs, "from now on"),
    (("peer_lines_per_minute",), _budget, "from now on"),
    (("hmac_secret_file", "hmac_secret", "public_key_file", "public_key_pem"), _keys,
     "tokens are verified with the new keys from now on, no grace for the old ones; open sockets stay"),
    (("publish_token_file", "publish_token"), _operator_token,
     "the operator token is the new one from now on (requests and control messages)"),
    (("allowed_origins", "inbound_rate", "inbound_burst"), _inbound, "the next handshakes and sockets"),
    (("pacing_rate", "pacing_burst", "pacing_max_delay"), _pacing, "sockets opened from now on"),
    (("max_connections", "admin_max_connections", "max_connections_per_ip"), _caps, "the next accepts"),
)
"""The settings applied live: (Config attributes, how, to what), as the module docstring lists them."""

_NAMES = {attr: f"[{section}] {key}" for (section, key), (attr, _, _) in _KEYS.items()}


def _name(attr: str) -> str:
    """``[section] key`` of a Config attribute (a secret: the key naming its file, ``(its content)``)."""
    if attr in SECRETS:
        return f"{_NAMES[SECRETS[attr]]} (the file's content)"
    return _NAMES[attr]


def _shown(config: Config, attr: str) -> str:
    return "[redacted]" if attr in SECRETS else repr(getattr(config, attr))


def changed(old: Config, new: Config) -> list[str]:
    """The Config attributes (settings, and the secrets read from files) that differ."""
    attrs_ = [attr for attr, *_ in _KEYS.values()] + list(SECRETS)
    return [attr for attr in attrs_ if getattr(old, attr) != getattr(new, attr)]


def reload(service: GatewayService, new: Config) -> Config:
    """Apply ``new`` to ``service`` as the module docstring says; log a line per setting, applied or not; set and
    return ``service.config``, the configuration now in force."""
    old = service.config
    differ = changed(old, new)
    kept: dict[str, Any] = {}
    live: set[str] = set()
    for attributes, apply, scope in LIVE:
        live.update(attributes)
        touched = [a for a in attributes if a in differ]
        if not touched:
            continue
        why = apply(service, new)
        for attr in touched:
            if why is None:
                _log.info("reload: {setting} applied ({scope}): {value}", setting=_name(attr), scope=scope,
                          value=_shown(new, attr))
            else:
                _log.error("reload: {setting} NOT applied, the old one stays: {why}", setting=_name(attr), why=why)
                kept[attr] = getattr(old, attr)
    for attr in differ:
        if attr not in live:
            _log.warn("reload: {setting} changed to {value}: needs a restart, NOT applied", setting=_name(attr),
                      value=_shown(new, attr))
            kept[attr] = getattr(old, attr)
    service.config = attrs.evolve(new, **kept)
    _log.info("reloaded {source}: {applied} settings applied, {kept} not", source=new.source,
              applied=len(differ) - len(kept), kept=len(kept))
    return service.config
