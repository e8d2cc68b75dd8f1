"""qa25 F2: ``kvgate epp``'s metrics port (``/metrics``, ``/readyz``, ``/v1/pool/aggregate`` which every
global gateway / hub EPP fetches every ``refresh_s``) has none of the slow-client deadlines the other HTTP
doors have: a request head trickled one header line a second is held open for as long as the client
likes (seen: still open after 25 s), where ``kvgate serve``'s data and admin ports answer 408 and close
at ``headerTimeoutSeconds`` (10 s, docs/gateway.md "Slow and stalled clients"). Nor is there a connection
cap (aiohttp's ``AppRunner``, extproc/metrics.py:188), so such connections pile up to the fd limit the
gRPC port shares.

The test starts the real ``kvgate epp`` (loopback, ports 0: the ones it bound read from its ready line;
killed at the end) and trickles a head; it expects the port to end it (408 or close) within 15 s of its
first byte."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import start_lines
from kvgate.lifeline import die_with_parent_argv

LIMIT_S = 15.0  # serve's headerTimeoutSeconds is 10 s


def _epp(out: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The EPP and its metrics port."""
    argv = [
        sys.executable, "-m", "kvgate.cli", "epp", "--endpoints", "127.0.0.1:9", "--model", "m",
        "--host", "127.0.0.1", "--port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--plaintext",
    ]  # fmt: skip
    with out.open("wb") as f:
        proc = subprocess.Popen(die_with_parent_argv(argv), stdout=f, stderr=subprocess.STDOUT)
    try:
        return proc, start_lines.ports(out, start_lines.EPP, proc)[2]
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise


def test_a_trickled_head_on_the_epp_metrics_port_is_ended(tmp_path: Path) -> None:
    proc, metrics = _epp(tmp_path / "epp.log")
    try:
        s = socket.create_connection(("127.0.0.1", metrics), timeout=5)
        s.settimeout(0.2)
        s.sendall(b"GET /v1/pool/aggregate HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        ended = False
        i = 0
        while time.monotonic() - start < LIMIT_S + 1:
            try:
                if s.recv(4096) is not None:  # b"" (closed) or an answer (408): the port ended the head
                    ended = True
                    break
            except TimeoutError:
                pass
            except OSError:
                ended = True
                break
            try:
                s.sendall(b"X-a%d: b\r\n" % i)
            except OSError:
                ended = True
                break
            i += 1
            time.sleep(0.8)
        took = time.monotonic() - start
        s.close()
        assert ended and took <= LIMIT_S, f"trickled head still open after {took:.1f} s ({i} header lines)"
    finally:
        proc.kill()
        proc.wait(30)


async def test_the_metrics_port_refuses_connections_over_its_cap() -> None:
    """fixqa25: the port's connection cap (``maxConnections``, here 2): a third connection gets 503 and
    is closed, while the two held ones stay; one closed, a new one is answered. Real HTTP on loopback."""
    from kvgate.extproc.metrics import EppMetrics
    from kvgate.httpfront.server import FrontLimits

    listener, port = await EppMetrics().serve("127.0.0.1", 0, limits=FrontLimits(max_connections=2))
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(2):
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            held.append(w)
        deadline = time.monotonic() + 30
        while len(listener.front.connections) < 2:  # (both accepted before the third)
            assert time.monotonic() < deadline, "held connections never accepted"
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(r.read(), 10)  # (closed after the answer)
        w.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        held.pop().close()
        deadline = time.monotonic() + 30
        while len(listener.front.connections) > 1:
            assert time.monotonic() < deadline, "closed connection never left"
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(r.read(), 10)
        w.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for w in held:
            w.close()
        await listener.cleanup()
