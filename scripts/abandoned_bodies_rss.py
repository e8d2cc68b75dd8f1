"""The gateway's memory while clients send big bodies and leave during slow parses (review s23-rev-gw23 F1,
its ``cancelled_bodies_rss.py``). A tree's ``kvgate serve`` (one process, round robin, ``--kv-events off``,
default limits: ``maxBufferedBytes`` 1 GiB) in front of ``kvgate bench gateway-overhead``'s instant
backend; 3 connections keep hostile 8 MiB bodies coming (``emptymsg``, unrouted: a 404 after ~1 s of
parse on the parse thread), 4 others send plain 8 MiB bodies (unrouted) and close 50 ms after each send.
Prints the gateway's RSS before and its peak over SECONDS (default 10), and how many bodies were left.
gw23 handed every big body to the parse thread's executor queue, where a left body stayed until the
thread reached it; fixgw23's waiting list drops it when its client leaves.

    PYTHONPATH=src python scripts/abandoned_bodies_rss.py SRC PORT [SECONDS]

``SRC``: the ``src`` directory of the tree whose gateway runs (this tree's or another checkout's, for a
same-run baseline); ``PORT``: the backend's port, the gateway's is PORT + 1. Timed: run it under the live
lock, not as a test.
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


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _unrouted(shape: str) -> bytes:
    _, body = ps._big(shape, 8 << 20)
    return ps._request(unrouted(body), b"/v1/chat/completions")


def main() -> None:
    usage_or_exit(__doc__, 2)
    src, port = sys.argv[1], int(sys.argv[2])
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    gw = port + 1
    stop = threading.Event()
    left = [0]
    with tree_gateway(src, port) as gateway:
        hostile, plain = _unrouted("emptymsg"), _unrouted("chat")

        def busy() -> None:
            while not stop.is_set():
                s = socket.create_connection(("127.0.0.1", gw))
                try:
                    s.sendall(hostile)
                    ps._answer(s, bytearray())
                except OSError:
                    pass
                s.close()

        def leave() -> None:
            while not stop.is_set():
                s = socket.create_connection(("127.0.0.1", gw))
                try:
                    s.sendall(plain)
                    left[0] += 1
                    stop.wait(0.05)  # (the front reads it whole and starts the handler)
                except OSError:
                    pass
                s.close()

        base = peak = _rss_mib(gateway.pid)
        threads = [threading.Thread(target=busy) for _ in range(3)]
        threads += [threading.Thread(target=leave) for _ in range(4)]
        for t in threads:
            t.start()
        end = time.monotonic() + secs
        while time.monotonic() < end:
            stop.wait(0.5)
            peak = max(peak, _rss_mib(gateway.pid))
        stop.set()
        for t in threads:
            t.join()
        print(
            f"{src}: RSS idle {base:.0f} MiB, peak {peak:.0f} MiB over {secs:.0f} s; "
            f"{left[0]} 8 MiB bodies sent and left",
            flush=True,
        )


if __name__ == "__main__":
    main()
