"""qa33b-F1: a request pipelined behind an answer in flight, received before SIGTERM, got no answer at all:
the drain closed the connection after the first answer (the client saw its end, then EOF on an outstanding
POST it cannot safely retry). docs/gateway.md "Graceful shutdown": a request on a kept-alive connection
during the drain is answered 503 "gateway is shutting down" with ``Retry-After: 1`` and ``Connection:
close``. Now the first answer goes out whole (its head without ``Connection: close``: an answer follows),
then that 503, then the close.

A real ``kvgate serve`` (one process and ``--workers 2``, ports 0 read back from its start line) in front of
the in-process test backend, which holds the first answer (a streamed one after its first event, a whole one
before it is sent) until the drain has begun: every step waits on a state, none on a sleep."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

import start_lines
from gateway import drain_kit
from gateway.backend import Backend
from gateway.conftest import serve_ready
from kvgate.scheduling.types import DrainEvictedError

pytestmark = pytest.mark.asyncio


def _post(body: dict[str, object]) -> bytes:
    raw = orjson.dumps(body)
    return b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%b" % (len(raw), raw)


def _answers(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The HTTP/1.1 answers in ``data`` (a connection's whole output): status, header fields (lower-case
    names), body (de-chunked); an answer cut short ends the list."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        if fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, sep, data = data.partition(b"\r\n")
                if not sep:
                    return out
                size = int(size_line, 16)
                if len(data) < size + 2:
                    return out
                body, data = body + data[:size], data[size + 2 :]
                if size == 0:
                    break
        else:
            n = int(fields.get(b"content-length", b"0"))
            if len(data) < n:
                return out
            body, data = data[:n], data[n:]
        out.append((int(lines[0].split(b" ")[1]), fields, body))
    return out


def _gateway_read_all(port: int, client_port: int) -> bool:
    """The gateway's side of the connection from ``client_port`` has nothing unread in the kernel (its
    ``rx_queue`` in ``/proc/net/tcp``): every byte the client sent is in the gateway's hands."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            local, remote, queues = cols[1], cols[2], cols[4]
            if int(local.rsplit(":", 1)[1], 16) == port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return int(queues.split(":")[1], 16) == 0
    return False


async def _until(cond, what: str, within_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, f"not within {within_s:g}s: {what}"
        await asyncio.sleep(0.02)


def _serve(cfg: Path, log: Path, workers: int) -> subprocess.Popen[bytes]:
    """``kvgate serve --config cfg`` (warnings shown), its output into ``log``."""
    argv = [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg), "--log-level", "WARNING"]
    if workers > 1:
        argv += ["--min-ready-workers", str(workers)]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    with log.open("wb") as out:  # (the child keeps its own copy of the descriptor)
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_pipelined_request_received_before_sigterm_gets_the_drains_503(
    tmp_path: Path, stream: bool, workers: int
) -> None:
    b = await Backend("b", tokens=4).start()
    if stream:
        b.pause_after = 0  # the stream waits after its first event until ``resume``
    else:
        b.answer_gate = asyncio.Event()  # the whole answer waits until the gate opens
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: 0, adminPort: 0, workers: {workers}}}\n"
        "limits: {drainTimeoutSeconds: 60}\n"
        f"pools: [{{name: p, endpoints: ['{b.address}'], models: [m], policy: round-robin}}]\n"
    )
    log = tmp_path / "serve.log"
    proc = _serve(cfg, log, workers)
    writer: asyncio.StreamWriter | None = None
    try:
        port, admin = await start_lines.ports_async(log, start_lines.SERVE, proc)
        async with aiohttp.ClientSession() as s:
            await serve_ready(s, admin, proc, log)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = {"model": "m", "prompt": "long", "max_tokens": 4, "stream": stream}
        writer.write(_post(first) + _post({"model": "m", "prompt": "short", "max_tokens": 2}))
        await writer.drain()
        got = b""
        async with asyncio.timeout(30):
            if stream:  # the stream's head and first event are out (a head without Connection: close)
                while b"data: " not in got:
                    chunk = await reader.read(65536)
                    assert chunk, got
                    got += chunk
            else:
                await b.arrived.wait()  # the first request is at the model server, its answer held
        client_port = writer.get_extra_info("sockname")[1]
        await _until(lambda: _gateway_read_all(port, client_port), "the gateway read both requests")
        proc.send_signal(signal.SIGTERM)
        await drain_kit._refused(port, within_s=30)  # the drain began (in every worker)
        if stream:
            b.resume.set()
        else:
            assert b.answer_gate is not None
            b.answer_gate.set()
        async with asyncio.timeout(30):
            while chunk := await reader.read(65536):
                got += chunk
        answers = _answers(got)
        assert [a[0] for a in answers] == [200, 503], got[-600:]  # (before: [200], then EOF)
        (_, head1, body1), (_, head2, body2) = answers
        if stream:
            assert body1.endswith(b"data: [DONE]\n\n"), body1[-200:]
        else:
            assert orjson.loads(body1)["choices"][0]["text"].startswith("b-0"), body1
        # An answer follows: the first must not say Connection: close (RFC 9112 9.6), the 503 does.
        assert head1.get(b"connection", b"").lower() != b"close", head1
        assert head2.get(b"connection", b"").lower() == b"close", head2
        assert head2.get(b"retry-after") == DrainEvictedError.retry_after.encode(), head2
        assert orjson.loads(body2)["error"]["message"] == "gateway is shutting down", body2
        assert len(b.received) == 1, "the pipelined request reached the model server during the drain"
        await _until(lambda: proc.poll() is not None, "the gateway exited")
        assert proc.returncode == 0, log.read_text()[-800:]
        assert drain_kit.unclean(log) == [], log.read_text()[-800:]
    finally:
        if writer is not None:
            writer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await b.stop()
