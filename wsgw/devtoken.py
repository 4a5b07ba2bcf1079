"""``wsgw token`` (alias ``wsgw-token``): mint a development token signed with the HMAC secret, for `make run` and demos."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

DEFAULT_MAX_LIFETIME = 86400  # seconds: [auth] max_token_lifetime by default


def main(argv: Sequence[str] | None = None, prog: str = "wsgw-token", now: Callable[[], float] = time.time) -> int:
    """``wsgw-token`` (and ``wsgw token``): the token on standard output, its claims on standard error; exit 0.

    ``now``: the current Unix time in seconds. ``iat`` and ``exp`` are NumericDates (RFC 7519 §2, §4.1.4, §4.1.6),
    wall-clock time by definition, so the process's clock (``time.time``) is right; it is read here, in the
    command's entry point, and nowhere below it."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("login", help="the user's login (the 'name' claim)")
    parser.add_argument("--secret-file", help="HMAC secret file (default: $WSGW_HMAC_SECRET)")
    parser.add_argument("--profile", default="standard", choices=["anon", "shared", "standard", "admin"])
    parser.add_argument("--roles", default="", help="comma separated role ids")
    parser.add_argument("--workspace", action="append", default=[], metavar="UUID:SLUG:ROOTPATH",
                        help="a workspace the user can see (repeatable); default: personal-files on "
                             "pydiods1/personal/<login>")
    parser.add_argument("--lifetime", "--ttl", dest="ttl", type=int, default=3600, metavar="SECONDS",
                        help="seconds until the token expires (at most the daemon's [auth] max_token_lifetime, 86400 "
                             "by default)")
    parser.add_argument("--issuer", help="the iss claim (the daemon's [auth] issuer, when it sets one)")
    parser.add_argument("--audience", help="the aud claim (the daemon's [auth] audience, when it sets one)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error(f"--lifetime {args.ttl}: must be more than 0 seconds (the daemon refuses an expired token)")
    if args.ttl > DEFAULT_MAX_LIFETIME:
        print(f"{prog}: warning: a lifetime over {DEFAULT_MAX_LIFETIME} s is refused by a daemon with the default "
              "[auth] max_token_lifetime", file=sys.stderr)
    if any(spec.count(":") < 2 for spec in args.workspace):
        parser.error("--workspace takes UUID:SLUG:ROOTPATH")
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    elif os.environ.get("WSGW_HMAC_SECRET"):
        secret = os.environ["WSGW_HMAC_SECRET"].encode()
    else:
        parser.error("give --secret-file or set WSGW_HMAC_SECRET")
    specs = args.workspace or [f"ws-personal-{args.login}:personal-files:pydiods1/personal/{args.login}"]
    workspaces = []
    for spec in specs:
        uuid, slug, root = spec.split(":", 2)
        workspaces.append({"uuid": uuid, "slug": slug, "roots": [{"uuid": f"root-{uuid}", "path": root}]})
    issued = int(now())
    claims: dict[str, Any] = {  # iat: a token minted after an operator's /revoke is not revoked (PROTOCOL.md §3.1)
        "name": args.login,
        "sub": f"uuid-{args.login}",
        "profile": args.profile,
        "roles": args.roles,
        "workspaces": workspaces,
        "iat": issued,
        "exp": issued + args.ttl,
    }
    if args.issuer:
        claims["iss"] = args.issuer
    if args.audience:
        claims["aud"] = args.audience
    sys.stdout.write(jwt.encode(claims, secret, algorithm="HS256") + "\n")
    sys.stderr.write(json.dumps(claims, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
