"""What one big request body's parse costs the gateway's other clients (session-22 closing note: parsing
was not moved off the event loop). A tree's ``kvgate serve`` (one process, round robin, ``--kv-events
off``) in front of ``kvgate bench gateway-overhead``'s instant backend; a prober keeps one small completion
(~70 bytes) in flight at a time on a kept-alive connection, and after a calm second one big body is sent
on another connection. Per shape: the probes' p50 and max before the big body, the max from when it was
sent to 0.5 s after its answer (the stall other clients see: its read, parse, relay and the parse's
release), and the big request's status and time.

    PYTHONPATH=src python scripts/parse_stall.py SRC PORT [--bytes 8388608] [--shapes chat,chains64,...]
                                                [--unrouted] [--door serve|clusters|epp]

``SRC``: the ``src`` directory of the tree whose gateway runs (this tree's or another checkout's, for a
same-run baseline); ``PORT``: the backend's port, the gateway's is PORT + 1. Shapes: ``chat`` (one user
message of plain words filling ``--bytes``: an honest big prompt), and ``hostile_body_cost.py``'s
(``emptymsg``, ``chains64``, ...; each fills ``--bytes``). ``--unrouted``: the big body names a model no
pool serves (a 404 after its whole parse), so the backend's own read of it (the probes' backend too) is
not in the figure: the gateway's stall alone.

``--door``: which door runs in front of the backend. ``serve`` (the default, above); ``clusters``: ``kvgate
serve --clusters`` over one Parent-mode cluster whose gateway is the backend itself; ``epp``: ``kvgate epp``
(round robin over the backend, plaintext gRPC on PORT + 1), driven as Envoy drives it (``Exchange``: request
headers, the body in 16 KiB messages): a probe is one small request's stream up to its pick, the big body's
time is its stream's up to its body coming back; each runs on a thread and event loop of its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable

import orjson

from kvgate import lifeline

SMALL = b'{"model":"m","prompt":"Say hello to the benchmark","max_tokens":8}'
WORDS = ("the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant")


def _request(body: bytes, path: bytes = b"/v1/completions") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _fill(s: socket.socket, buf: bytearray, until: Callable[[], bool]) -> None:
    while not until():
        got = s.recv(1 << 16)
        if not got:
            raise ConnectionError("closed")
        buf += got


def _answer(s: socket.socket, buf: bytearray) -> int:
    """Read one answer from ``s`` (keep-alive; a Content-Length body or a chunked one: ``serve
    --clusters`` relays); its status."""
    _fill(s, buf, lambda: b"\r\n\r\n" in buf)
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).lower()
    status = int(bytes(buf[9:12]))
    del buf[: end + 4]
    if b"transfer-encoding: chunked" in head:
        while True:
            _fill(s, buf, lambda: b"\r\n" in buf)
            line = buf.index(b"\r\n")
            size = int(bytes(buf[:line]).split(b";")[0], 16)
            need = line + 2 + size + 2
            _fill(s, buf, lambda need=need: len(buf) >= need)  # type: ignore[misc]
            del buf[:need]
            if size == 0:
                return status
    i = head.index(b"content-length:")
    length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
    _fill(s, buf, lambda: len(buf) >= length)
    del buf[:length]
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


def _http_probe(port: int, probes: list[tuple[float, float]], stop: threading.Event) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    req = _request(SMALL)
    while not stop.is_set():
        t0 = time.monotonic()
        s.sendall(req)
        assert _answer(s, buf) == 200
        probes.append((t0, time.monotonic()))
    s.close()


def _http_big(port: int, path: bytes, body: bytes) -> int:
    big = socket.create_connection(("127.0.0.1", port))
    big.sendall(_request(body, path))
    status = _answer(big, bytearray())
    big.close()
    return status


def _epp_headers(path: bytes) -> dict[str, str]:
    return {":method": "POST", ":path": path.decode(), "content-type": "application/json"}


async def _epp_send(port: int, path: bytes, body: bytes) -> int:
    """One request's stream to the EPP, as Envoy sends it; 200 when its pick (and body) came back, else
    the ImmediateResponse's status."""
    from kvgate.extproc.testing import Exchange, channel, pb_grpc

    async with channel(f"127.0.0.1:{port}") as ch, Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
        out = await ex.send_request(_epp_headers(path), body)
        return out.status or (200 if out.destination else 0)


def _epp_probe(port: int, probes: list[tuple[float, float]], stop: threading.Event) -> None:
    import asyncio

    async def run() -> None:
        from kvgate.extproc.testing import Exchange, channel, pb_grpc

        async with channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.ExternalProcessorStub(ch)
            while not stop.is_set():
                t0 = time.monotonic()
                async with Exchange(stub) as ex:
                    out = await ex.send_request(_epp_headers(b"/v1/completions"), SMALL)
                assert out.destination, out
                probes.append((t0, time.monotonic()))

    asyncio.run(run())


def _one_shape(port: int, shape: str, size: int, unrouted: bool = False, door: str = "serve") -> str:
    path, body = _big(shape, size)
    if unrouted:
        body = body.replace(b'"model":"m"', b'"model":"unrouted"', 1)
    probes: list[tuple[float, float]] = []
    stop = threading.Event()
    t = threading.Thread(target=_epp_probe if door == "epp" else _http_probe, args=(port, probes, stop))
    t.start()
    time.sleep(1.0)
    b0 = time.monotonic()
    if door == "epp":
        import asyncio

        status = asyncio.run(_epp_send(port, path, body))  # (on a loop of its own: the probe has its own)
    else:
        status = _http_big(port, path, body)
    b1 = time.monotonic()
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
    p.add_argument("--door", choices=("serve", "clusters", "epp"), default="serve",
                   help="kvgate serve, kvgate serve --clusters, or kvgate epp (default serve)")  # fmt: skip
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(a.src)}
    py = sys.executable
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv([py, "-m", "kvgate.bench.gateway_overhead", "--_backend", str(a.port)]),
        env=env, stdout=subprocess.PIPE,
    )  # fmt: skip
    gw_port = a.port + 1
    with tempfile.TemporaryDirectory() as tmp:
        gateway = subprocess.Popen(
            lifeline.die_with_parent_argv([py, "-m", "kvgate.cli", *_door_argv(a, tmp)]), env=env
        )
        try:
            assert backend.stdout is not None and backend.stdout.readline().strip() == b"ready"
            if a.door == "epp":
                _wait_epp(gw_port)
            else:
                _wait_ready(gw_port)
            for shape in a.shapes.split(","):
                print(_one_shape(gw_port, shape, a.bytes, a.unrouted, a.door), flush=True)
        finally:
            for proc in (gateway, backend):
                proc.kill()
                proc.wait()
    return 0


def _door_argv(a: argparse.Namespace, tmp: str) -> list[str]:
    gw_port = a.port + 1
    common = ["--port", str(gw_port), "--log-level", "WARNING"]
    if a.door == "serve":
        return ["serve", "--endpoints", f"127.0.0.1:{a.port}", "--model", "m", "--policy", "round-robin",
                "--kv-events", "off", *common]  # fmt: skip
    if a.door == "clusters":
        path = os.path.join(tmp, "clusters.yaml")
        with open(path, "w") as f:
            f.write(f"clusters:\n- name: c0\n  gateway: 127.0.0.1:{a.port}\n")
        return [
            "serve",
            "--clusters",
            path,
            "--cluster-policy",
            "round-robin",
            "--host",
            "127.0.0.1",
            *common,
        ]
    return ["epp", "--endpoints", f"127.0.0.1:{a.port}", "--model", "m", "--policy", "round-robin",
            "--plaintext", "--host", "127.0.0.1", "--grpc-health-port", str(gw_port + 1),
            "--metrics-port", str(gw_port + 2), *common]  # fmt: skip


def _wait_epp(port: int, within_s: float = 60.0) -> None:
    """Until the EPP picks (its endpoint scraped ready)."""
    import asyncio

    deadline = time.monotonic() + within_s
    while True:
        try:
            if asyncio.run(_epp_send(port, b"/v1/completions", SMALL)) == 200:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"EPP on {port} not picking within {within_s}s")
        time.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
