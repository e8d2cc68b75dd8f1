"""How long an honest big body waits behind hostile parses (review s23-rev-gw23 F3, its
``honest_big_wait.py``). A tree's ``kvgate serve`` (one process, round robin, ``--kv-events off``) in front
of ``kvgate bench gateway-overhead``'s instant backend; per K (0, 1, 4): K hostile 8 MiB bodies
(``emptymsg``, unrouted: a 404 after ~1 s of parse each) from K connections, 0.3 s later an honest ~100 KB
chat body (one prompt: over 64 KiB) and 50 ms after it a small completion; each one's status and latency.

    PYTHONPATH=src python scripts/honest_big_wait.py SRC PORT

``SRC``: the ``src`` directory of the tree whose gateway runs (this tree's or another checkout's, for a
same-run baseline); ``PORT``: the backend's port, the gateway's is PORT + 1. Timed: under the live lock.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parse_stall as ps
from script_usage import usage_or_exit
from tree_gateway import tree_gateway, unrouted


def _send(port: int, path: bytes, body: bytes, out: list[tuple[str, int, float]], key: str) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    s.sendall(ps._request(body, path))
    status = ps._answer(s, bytearray())
    out.append((key, status, time.monotonic() - t0))
    s.close()


def main() -> None:
    usage_or_exit(__doc__, 2)
    src, port = sys.argv[1], int(sys.argv[2])
    gw = port + 1
    chat = b"/v1/chat/completions"
    with tree_gateway(src, port):
        hostile = unrouted(ps._big("emptymsg", 8 << 20)[1])
        _, honest = ps._big("chat", 100_000)
        for k in (0, 1, 4):
            out: list[tuple[str, int, float]] = []
            ts = [threading.Thread(target=_send, args=(gw, chat, hostile, out, "hostile")) for _ in range(k)]
            for t in ts:
                t.start()
            time.sleep(0.3)
            h = threading.Thread(target=_send, args=(gw, chat, honest, out, "honest"))
            p = threading.Thread(target=_send, args=(gw, b"/v1/completions", ps.SMALL, out, "small"))
            h.start()
            time.sleep(0.05)
            p.start()
            for t in (*ts, h, p):
                t.join()
            got = {key: (st, round(dt * 1e3)) for key, st, dt in out if key != "hostile"}
            hs = sorted(round(dt * 1e3) for key, _, dt in out if key == "hostile")
            print(
                f"K={k}: honest 100 KB chat {got['honest']} small {got['small']} (status, ms);"
                f" hostile ms {hs}",
                flush=True,
            )
            time.sleep(1.0)


if __name__ == "__main__":
    main()
