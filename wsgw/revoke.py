"""``wsgw-disconnect`` and ``wsgw-revoke``: the operator's /disconnect and /revoke from a shell (PROTOCOL.md §3.1).

    wsgw-disconnect --login alice [--reason "account under review"]
    wsgw-revoke --login alice [--before 1767225600]
    wsgw-revoke --jti 4f1c...

Both read the daemon's own settings (``--config``, the same INI file, as
``wsgw-publish``) and POST the request to the operator listener (its first
``[admin] listen`` endpoint) with the ``[admin] publish_token_file`` token: the
instance that takes it sends it to every instance over the bus. They print one
line and exit 0 once the gateway accepted it (202), 1 when it refused it or
could not be reached (the gateway's reason on standard error), 2 for a bad
command line or configuration. The token is never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import treq
from twisted.web.client import Agent

from wsgw.config import Config, ConfigError
from wsgw.publish import TIMEOUT, FixedEndpoint, PublishError, client_endpoint, load_config, run_once


class OperatorError(Exception):
    """The request was not accepted; the message says why."""


async def operator_request(reactor: Any, config: Config, op: str, body: dict[str, Any],
                           timeout: float = TIMEOUT) -> str:
    """POST ``body`` to ``/<op>`` on the operator listener of ``config``; a one-line report once accepted,
    OperatorError otherwise."""
    if not config.admin_listen:
        raise OperatorError(f"{config.source}: no [admin] listen: there is no operator listener to ask")
    if config.publish_token is None:
        raise OperatorError(f"{config.source}: /{op} needs [admin] publish_token_file (the operator token)")
    listen = config.admin_listen[0]
    try:
        client, host = client_endpoint(listen, timeout)
    except PublishError as e:
        raise OperatorError(str(e)) from None
    agent = Agent.usingEndpointFactory(reactor, FixedEndpoint(reactor, client))
    headers: dict[bytes | str, list[bytes | str]] = {b"authorization": [b"Bearer " + config.publish_token],
                                                     b"content-type": [b"application/json"]}
    try:
        response = await treq.post(f"http://{host}/{op}".encode(), data=json.dumps(body).encode(), headers=headers,
                                   agent=agent, timeout=timeout)
        text = await response.content()
    except Exception as e:
        raise OperatorError(f"the operator listener ({listen}) did not answer: {e}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"error": text.decode("utf-8", "replace")[:200]}
    if response.code != 202:
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise OperatorError(f"the gateway answered {response.code}: {error}")
    named = ", ".join(f"{k} {v}" for k, v in body.items() if k in ("login", "sub", "jti"))
    return f"{op} of {named} accepted by {listen}: every instance applies it"


def _parser(op: str, prog: str) -> argparse.ArgumentParser:
    what = ("Close every socket of a user with 4003, on every instance (stores nothing: a reconnect is admitted)."
            if op == "disconnect" else
            "Refuse a user's tokens issued before a time (or one token, by jti) on every instance, closing the "
            "sockets holding one, until they would have expired anyway.")
    parser = argparse.ArgumentParser(prog=prog, description=what + " Goes through the operator "
                                     "listener's POST /" + op + " with the [admin] publish_token_file token.")
    parser.add_argument("-c", "--config", help="the daemon's INI file (default: built-in defaults)")
    parser.add_argument("--login", help="the user's login (the token's name claim)")
    parser.add_argument("--sub", help="the user's id (the token's sub claim)")
    if op == "disconnect":
        parser.add_argument("--reason", help="told to the client: 'access revoked: <reason>'")
    else:
        parser.add_argument("--jti", help="one token's id (its jti claim)")
        parser.add_argument("--before", type=float, metavar="UNIX",
                            help="tokens issued before this time (unix seconds) are refused (default: now)")
    return parser


def main(argv: Sequence[str] | None = None, op: str = "revoke", prog: str = "") -> int:
    """``wsgw-<op>`` (``prog``, e.g. ``wsgw revoke``, names it in messages): exit 0 accepted, 1 refused or
    unreachable, 2 bad command line or configuration."""
    prog = prog or f"wsgw-{op}"
    parser = _parser(op, prog)
    args = parser.parse_args(argv)
    body = {k: v for k in ("login", "sub", "jti", "reason", "before") if (v := getattr(args, k, None)) is not None}
    if not any(k in body for k in ("login", "sub", "jti")):
        parser.error("name someone: --login or --sub" + (" or --jti" if op == "revoke" else ""))
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return run_once(prog, lambda reactor: operator_request(reactor, config, op, body), OperatorError)


def disconnect_main(argv: Sequence[str] | None = None, prog: str = "wsgw-disconnect") -> int:
    """The ``wsgw-disconnect`` console script."""
    return main(argv, "disconnect", prog)


def revoke_main(argv: Sequence[str] | None = None, prog: str = "wsgw-revoke") -> int:
    """The ``wsgw-revoke`` console script."""
    return main(argv, "revoke", prog)


if __name__ == "__main__":
    sys.exit(revoke_main())
