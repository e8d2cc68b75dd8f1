"""How long another client's honest big body waits behind one client's hostile parses (session-23 closing
note: bodies over 1 MiB, or of much structure, queued behind every hostile parse on the one parse thread).
A tree's door (``parse_stall.py --door``: ``kvgate serve`` or ``serve --clusters``) in front of ``kvgate
bench gateway-overhead``'s instant backend; per K: one client (source address 127.0.0.2) sends K hostile
8 MiB bodies (``emptymsg``, unrouted: a 404 after ~1 s of parse each) over K connections; ``--after`` (1 s)
later, once their bodies are read, another client (127.0.0.3) sends an honest 1.5 MiB chat body (one
prompt: over 1 MiB, so parsed on the thread); the honest body's status and latency, and the hostile ones'.

    PYTHONPATH=src python scripts/parse_turns.py SRC PORT [--ks 1,4,8] [--after 1.0]
                                                [--door serve|clusters]

``SRC``: the ``src`` directory of the tree whose door runs (this tree's or another checkout's, for a
same-run baseline); ``PORT``: the backend's port, the door's is PORT + 1. Timed: under the live lock.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parse_stall as ps

from kvgate import lifeline

CHAT = b"/v1/chat/completions"


def _send(port: int, source: str, body: bytes, out: list[tuple[str, int, float]], key: str) -> None:
    s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    t0 = time.monotonic()
    s.sendall(ps._request(body, CHAT))
    status = ps._answer(s, bytearray())
    out.append((key, status, time.monotonic() - t0))
    s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="the src directory of the tree whose door runs")
    p.add_argument("port", type=int, help="the backend's port (the door's: PORT + 1)")
    p.add_argument("--ks", default="1,4,8", help="hostile bodies per round, comma-separated")
    p.add_argument(
        "--after", type=float, default=1.0, help="seconds from the hostile sends to the honest one"
    )
    p.add_argument("--door", choices=("serve", "clusters"), default="serve")
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(a.src)}
    py = sys.executable
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv([py, "-m", "kvgate.bench.gateway_overhead", "--_backend", str(a.port)]),
        env=env, stdout=subprocess.PIPE,
    )  # fmt: skip
    gw = a.port + 1
    _, hostile = ps._big("emptymsg", 8 << 20)
    hostile = hostile.replace(b'"model":"m"', b'"model":"unrouted"', 1)
    _, honest = ps._big("chat", 3 << 19)
    with tempfile.TemporaryDirectory() as tmp:
        gateway = subprocess.Popen(
            lifeline.die_with_parent_argv([py, "-m", "kvgate.cli", *ps._door_argv(a, tmp)]), env=env
        )
        try:
            assert backend.stdout is not None and backend.stdout.readline().strip() == b"ready"
            ps._wait_ready(gw)
            for k in (int(x) for x in a.ks.split(",")):
                out: list[tuple[str, int, float]] = []
                ts = [threading.Thread(target=_send, args=(gw, "127.0.0.2", hostile, out, "hostile"))
                      for _ in range(k)]  # fmt: skip
                for t in ts:
                    t.start()
                time.sleep(a.after)
                h = threading.Thread(target=_send, args=(gw, "127.0.0.3", honest, out, "honest"))
                h.start()
                for t in (*ts, h):
                    t.join()
                (got,) = [(st, round(dt * 1e3)) for key, st, dt in out if key == "honest"]
                hs = sorted(round(dt * 1e3) for key, _, dt in out if key == "hostile")
                print(f"K={k}: honest {len(honest) / 1e6:.2f} MB chat {got} (status, ms); hostile ms {hs}",
                      flush=True)  # fmt: skip
                time.sleep(1.0)
        finally:
            for proc in (gateway, backend):
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
