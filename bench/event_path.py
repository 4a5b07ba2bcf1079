"""The daemon's per-event Python path in process, without sockets or wake-ups (issue 13, goal 2).

    python bench/event_path.py                      # N = 1,000 sessions, 1,000 workspaces, reads of 5 events
    python bench/event_path.py --n 10000 --profile one-ws

Builds the real ``GatewayService`` from the bench's config (nothing listens,
nothing connects), subscribes N sessions (session i in workspace i % W, as
the selective phases do) whose flows write nowhere, and hands the bus
20,000 of the bench's events (``loadgen.node_event``) in reads of ``--batch``
messages, as the subscriber connection does: ``floor`` events under a root
nobody has, ``one-ws`` events to a random one of the W workspaces. Prints
the thread CPU µs per event, best of ``--reps``; ``--profile`` prints
cProfile's top functions for one case.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("WSGW_HMAC_SECRET", "bench-secret-of-at-least-32-bytes-long")

import loadgen  # noqa: E402
import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--profile", choices=["floor", "one-ws"], default=None)
    args = p.parse_args()

    from twisted.internet import reactor

    from wsgw.access import Access, Root, Workspace
    from wsgw.config import config_from_string
    from wsgw.service import GatewayService
    from wsgw.sessions import Session
    from wsgw.testing import RecordingConnection

    svc = GatewayService(config_from_string(run.gateway_ini(1, 1, "ep", pacing=False)), reactor)
    table = svc.gateway.table
    written = [0]

    def write(payload: bytes) -> None:
        written[0] += 1

    for i in range(args.n):
        g = i % args.workspaces
        ws = Workspace(f"ws-sel-{g}", f"sel{g}", (Root(f"r-ws-sel-{g}", f"pydiods1/sel/w{g}", f"k{g}"),))
        session = Session(RecordingConnection())
        session.flow._write = write  # type: ignore[attr-defined]
        table.add(session)
        table.subscribe(session, Access(f"u{i}", f"u{i}", "standard", frozenset(), (ws,)))
    channel = svc.bus._topics["tree"].encode()
    rnd = random.Random(4)
    cases = {
        "floor": [(channel, loadgen.node_event(i, "pydiods1/nobody")) for i in range(20000)],
        "one-ws": [(channel, loadgen.node_event(i, f"pydiods1/sel/w{rnd.randrange(args.workspaces)}"))
                   for i in range(20000)],
    }

    def feed(events: list[tuple[bytes, bytes]]) -> None:
        for k in range(0, len(events), args.batch):
            svc.bus._messages(events[k:k + args.batch])

    for name, events in cases.items():
        best = float("inf")
        for _ in range(args.reps):
            written[0] = 0
            t = time.thread_time()
            feed(events)
            best = min(best, time.thread_time() - t)
        print(f"{name}: {best / len(events) * 1e6:.1f} µs/event of thread CPU, {written[0] / len(events):.1f} "
              f"frames/event (N = {args.n:,}, {args.workspaces:,} workspaces, reads of {args.batch})")
    if args.profile:
        sys.path[:] = [d for d in sys.path if os.path.abspath(d or ".") != HERE]  # bench/profile.py shadows it
        sys.modules.pop("profile", None)
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        feed(cases[args.profile])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
