"""``wsgw``: the operator's one command; the daemon itself is still started by ``twistd wsgw``.

    wsgw check-config FILE [--listen ... --redis ... --admin-listen ... --embedded]
    wsgw sample-config > /etc/wsgw/wsgw.ini
    wsgw sample-unit > /etc/systemd/system/wsgw.service
    wsgw version
    wsgw token LOGIN [--issuer ISS --audience AUD --lifetime SECONDS ...]   (also wsgw-token)
    wsgw publish TOPIC FILE|- [--config FILE ...]                         (also wsgw-publish)
    wsgw disconnect|revoke --login LOGIN [--config FILE ...]              (also wsgw-disconnect, wsgw-revoke)

``check-config`` loads FILE through the daemon's own options (``wsgw.tap.Options``: the INI keys, the secret
files and the environment, the endpoint strings), so it refuses what ``twistd wsgw --config FILE`` refuses, with
the same one line, and exits 2; else it prints the effective settings, one ``[section] key = value`` line per
key (a list as ``a, b``), then where each secret comes from (``<from file …>``, ``<redacted> (from $VAR)`` or
``<none>``: a secret is never printed), and exits 0. The other subcommands are the existing commands (same
options, output and exit codes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from wsgw import devtoken, publish, revoke
from wsgw.config import Config, _count_or_auto

# subcommand -> (the existing main it runs, its one-line help)
_EXISTING: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "token": (lambda argv: devtoken.main(argv, prog="wsgw token"),
              "mint a development token signed with the HMAC secret (wsgw-token)"),
    "publish": (lambda argv: publish.main(argv, prog="wsgw publish"), "put one event on the gateway's bus (wsgw-publish)"),
    "disconnect": (lambda argv: revoke.disconnect_main(argv, prog="wsgw disconnect"), "close every socket of a user, on every instance (wsgw-disconnect)"),
    "revoke": (lambda argv: revoke.revoke_main(argv, prog="wsgw revoke"), "refuse a user's tokens issued before a time, or one token (wsgw-revoke)"),
}

# Config attribute of a secret -> (section, what it is, the INI key naming its file, the environment variable)
_SECRETS = {
    "hmac_secret": ("auth", "hmac secret", "hmac_secret_file", "WSGW_HMAC_SECRET"),
    "public_key_pem": ("auth", "public key", "public_key_file", None),
    "redis_password": ("server", "redis password", "redis_password_file", "WSGW_REDIS_PASSWORD"),
    "publish_token": ("admin", "publish token", "publish_token_file", None),
    "node_meta_token": ("access", "node meta token", "node_meta_token_file", None),
}


def _value(value: Any) -> str:
    """A setting as an operator reads it: lists as ``a, b``, booleans as yes/no, numbers without a trailing .0
    (``auto`` counts are named by ``settings``)."""
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings(config: Config) -> list[str]:
    """The effective settings of ``config``: ``[section] key = value`` for every INI key in declaration order,
    then one line per secret saying where it comes from; no secret's value appears."""
    lines = []
    for field in attrs.fields(Config):
        if (ini := field.metadata.get("ini")) is not None:
            value = getattr(config, field.name)
            auto = ini[2] is _count_or_auto and value == 0  # max_connections = auto is held as 0
            lines.append(f"[{ini[0]}] {ini[1]} = {'auto' if auto else _value(value)}")
    for attr, (section, what, file_key, variable) in _SECRETS.items():
        path = getattr(config, file_key)
        if getattr(config, attr) is None:
            where = "<none>"
        elif path:
            where = f"<from file {path}>"
        else:
            where = f"<redacted> (from ${variable})"
        lines.append(f"[{section}] {what} = {where}")
    return lines


def check_config(args: argparse.Namespace) -> int:
    """``wsgw check-config``: 0 and the settings on standard output, or 2 and one line on standard error."""
    from twisted.python import usage

    from wsgw.tap import Options

    argv = ["--config", args.file]
    for listen in args.listen:
        argv += ["--listen", listen]
    if args.redis is not None:
        argv += ["--redis", args.redis]
    if args.admin_listen is not None:
        argv += ["--admin-listen", args.admin_listen]
    if args.embedded:
        argv.append("--embedded")
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"wsgw check-config: {e}", file=sys.stderr)
        return 2
    config: Config = options["wsgw_config"]
    print(f"# {config.source}: valid; the effective settings (secrets are never shown)")
    for notice in config.notices:
        print(f"# notice: {notice}")
    print("\n".join(settings(config)))
    return 0


def sample_config(args: argparse.Namespace) -> int:
    """``wsgw sample-config``: the annotated sample (etc/wsgw.ini, packaged as wsgw/wsgw.ini) on standard output."""
    sys.stdout.write(importlib.resources.files("wsgw").joinpath("wsgw.ini").read_text(encoding="utf-8"))
    return 0


def sample_unit(args: argparse.Namespace) -> int:
    """``wsgw sample-unit``: the systemd unit (etc/wsgw.service, packaged as wsgw/wsgw.service) on standard output."""
    sys.stdout.write(importlib.resources.files("wsgw").joinpath("wsgw.service").read_text(encoding="utf-8"))
    return 0


def version(args: argparse.Namespace) -> int:
    """``wsgw version``: the installed distribution's version."""
    print(f"wsgw {importlib.metadata.version('wsgw')}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgw", description="Operate a wsgw gateway (the daemon itself: twistd wsgw --config FILE).")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = commands.add_parser("check-config", help="validate a config file as the daemon does and print the "
                                                     "effective settings, secrets redacted (exit 2 if invalid)")
    check.add_argument("file", metavar="FILE", help="the daemon's INI file")
    check.add_argument("-l", "--listen", action="append", default=[], help="as twistd wsgw --listen (repeatable)")
    check.add_argument("-r", "--redis", help="as twistd wsgw --redis")
    check.add_argument("--admin-listen", help="as twistd wsgw --admin-listen")
    check.add_argument("--embedded", action="store_true", help="as twistd wsgw --embedded")
    check.set_defaults(run=check_config)
    commands.add_parser("sample-config", help="print the annotated sample configuration").set_defaults(
        run=sample_config)
    commands.add_parser("sample-unit", help="print the systemd unit (README: systemd)").set_defaults(run=sample_unit)
    commands.add_parser("version", help="print the version").set_defaults(run=version)
    for name, (_, what) in _EXISTING.items():
        commands.add_parser(name, help=what, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``wsgw`` console script: 0 done, 1 refused by the gateway, 2 bad command line or configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _EXISTING:  # their own parsers take the rest, --help included
        return _EXISTING[args[0]][0](args[1:])
    namespace = _parser().parse_args(args)
    result: int = namespace.run(namespace)
    return result


if __name__ == "__main__":
    sys.exit(main())
