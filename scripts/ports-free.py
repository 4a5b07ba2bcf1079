"""``make run``'s first step: are the addresses it will listen on free? One line naming the first busy one, exit 1.

Usage: ports-free.py HOST:PORT ...  (an IPv6 host without brackets: ``::1:5050``). Run before the banner is
printed, so a busy port is not announced with a token first; the daemon itself still says the same if the
port is taken between this check and its start.
"""

from __future__ import annotations

import socket
import sys


def main(addresses: list[str]) -> int:
    for address in addresses:
        host, _, port = address.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            socket.create_server((host, int(port)), family=family).close()
        except OSError as e:
            print(f"make run: cannot listen on {host} port {port}: {e.strerror} "
                  "(choose others: make run PORT=... ADMIN_PORT=...)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
