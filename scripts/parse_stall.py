"""What one big request body's parse costs the gateway's other clients (session-22 closing note: parsing
was not moved off the event loop). A tree's ``kvgate serve`` (one process, round robin, ``--kv-events
off``) in front of ``kvgate bench gateway-overhead``'s instant backend; a prober keeps one small completion
(~70 bytes) in flight at a time on a kept-alive connection, and after a calm second one big body is sent
on another connection. Per shape: the probes' p50 and max before the big body, the max from when it was
sent to 0.5 s after its answer (the stall other clients see: its read, parse, relay and the parse's
release), and the big request's status and time.

    PYTHONPATH=src python scripts/parse_stall.py SRC PORT [--bytes 8388608] [--shapes chat,chains64,...]
                                                [--unrouted]

``SRC``: the ``src`` directory of the tree whose gateway runs (this tree's or another checkout's, for a
same-run baseline); ``PORT``: the backend's port, the gateway's is PORT + 1. Shapes: ``chat`` (one user
message of plain words filling ``--bytes``: an honest big prompt), and ``hostile_body_cost.py``'s
(``emptymsg``, ``chains64``, ...; each fills ``--bytes``). ``--unrouted``: the big body names a model no
pool serves (a 404 after its whole parse), so the backend's own read of it (the probes' backend too) is
not in the figure: the gateway's stall alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import orjson

from kvgate import lifeline

SMALL = b'{"model":"m","prompt":"Say hello to the benchmark","max_tokens":8}'
WORDS = ("the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant")


def _request(body: bytes, path: bytes = b"/v1/completions") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _answer(s: socket.socket, buf: bytearray) -> int:
    """Read one Content-Length answer from ``s`` (keep-alive); its status."""
    while b"\r\n\r\n" not in buf:
        got = s.recv(1 << 16)
        if not got:
            raise ConnectionError("closed")
        buf += got
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).lower()
    i = head.index(b"content-length:")
    length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
    while len(buf) < end + 4 + length:
        got = s.recv(1 << 16)
        if not got:
            raise ConnectionError("closed")
        buf += got
    status = int(bytes(buf[9:12]))
    del buf[: end + 4 + length]
    return status


def _big(shape: str, size: int) -> tuple[bytes, bytes]:
    """(path, body) of ``shape`` filling ``size`` bytes."""
    if shape == "chat":
        words = " ".join(WORDS[i % len(WORDS)] for i in range(size // 6))[: size - 80]
        body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": words}]}
        return b"/v1/chat/completions", orjson.dumps(body)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hostile_body_cost import _raw

    return b"/v1/chat/completions", _raw(shape, size)


def _wait_ready(port: int, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway on {port} not ready within {within_s}s")
        time.sleep(0.1)


def _one_shape(port: int, shape: str, size: int, unrouted: bool = False) -> str:
    path, body = _big(shape, size)
    if unrouted:
        body = body.replace(b'"model":"m"', b'"model":"unrouted"', 1)
    probes: list[tuple[float, float]] = []
    stop = threading.Event()

    def probe() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        buf = bytearray()
        req = _request(SMALL)
        while not stop.is_set():
            t0 = time.monotonic()
            s.sendall(req)
            assert _answer(s, buf) == 200
            probes.append((t0, time.monotonic()))
        s.close()

    t = threading.Thread(target=probe)
    t.start()
    time.sleep(1.0)
    big = socket.create_connection(("127.0.0.1", port))
    b0 = time.monotonic()
    big.sendall(_request(body, path))
    status = _answer(big, bytearray())
    b1 = time.monotonic()
    big.close()
    time.sleep(0.5)
    stop.set()
    t.join()
    calm = [e - s for s, e in probes if e < b0]
    during = [e - s for s, e in probes if e >= b0]  # (to 0.5 s after its answer: its parse freed too)
    return (
        f"{shape:9s} body {len(body) / 1e6:5.2f} MB -> {status} in {(b1 - b0) * 1e3:6.0f} ms; probes calm "
        f"p50 {statistics.median(calm) * 1e3:5.2f} ms max {max(calm) * 1e3:6.1f} ms; during: "
        f"{len(during)} probes, max {max(during, default=0) * 1e3:7.1f} ms"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="the src directory of the tree whose gateway runs")
    p.add_argument("port", type=int, help="the backend's port (the gateway's: PORT + 1)")
    p.add_argument("--bytes", type=int, default=8 << 20, help="each big body's size (default 8 MiB)")
    p.add_argument("--shapes", default="chat,emptymsg,chains64", help="comma-separated")
    p.add_argument("--unrouted", action="store_true", help="the big body names a model no pool serves (404)")
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(a.src)}
    py = sys.executable
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv([py, "-m", "kvgate.bench.gateway_overhead", "--_backend", str(a.port)]),
        env=env, stdout=subprocess.PIPE,
    )  # fmt: skip
    gw_port = a.port + 1
    gateway = subprocess.Popen(
        lifeline.die_with_parent_argv([
            py, "-m", "kvgate.cli", "serve", "--endpoints", f"127.0.0.1:{a.port}", "--model", "m",
            "--policy", "round-robin", "--kv-events", "off", "--port", str(gw_port), "--log-level", "WARNING",
        ]),
        env=env,
    )  # fmt: skip
    try:
        assert backend.stdout is not None and backend.stdout.readline().strip() == b"ready"
        _wait_ready(gw_port)
        for shape in a.shapes.split(","):
            print(_one_shape(gw_port, shape, a.bytes, a.unrouted), flush=True)
    finally:
        for proc in (gateway, backend):
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
