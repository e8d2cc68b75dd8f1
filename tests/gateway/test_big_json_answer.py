"""s17-qa H1: a non-streamed answer larger than ``Proxy.whole_max`` is relayed as it arrives, never held
whole (before: read whole, parts and their join together, uncapped: 3 x 48 MiB answers raised the
gateway's peak RSS by ~240 MiB; 100 in flight would OOM it).

The RSS test runs ``kvgate serve`` as its own process (its peak RSS is the measure); the others run the
gateway in-process with ``whole_max`` lowered, against a raw server that answers what each test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.conftest import error_codes, make_config, running_gateway

METRICS = (
    b'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 0\n'
    b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 0\n'
    b'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.0\n'
)
USAGE = b'"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}'


def answer_body(pad: int, model: str = "m") -> bytes:
    return (
        b'{"id":"x","object":"text_completion","model":' + orjson.dumps(model) + b',"choices":[{"index":0,'
        b'"text":"' + b"x" * pad + b'","finish_reason":"length"}],' + USAGE
    )


def _resp(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%b" % (
        status,
        ctype,
        len(body),
        body,
    )


# Writes the answer to a request for a path.
PathAnswer = Callable[[str, asyncio.StreamWriter], Awaitable[None]]


async def serve_keepalive(answer: PathAnswer) -> asyncio.Server:
    """A raw HTTP/1.1 server on a loopback port: on each connection, request after request (its body read
    and dropped), ``answer(path, writer)`` writes the answer; one that closes (or aborts) the writer ends
    the connection. A client that goes ends it quietly."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in rest if x)}
                n = int(hdrs.get("content-length", "0"))
                if n:
                    await r.readexactly(n)
                await answer(line.split(" ")[1], w)
                if w.is_closing():
                    return
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class RawServer:
    """A model server on a raw socket: ``/metrics`` and ``/health`` answer; a generation request gets
    ``body`` in ``piece``-byte writes (``pause`` seconds apart), of which only the first ``cut_after``
    bytes when that is set (then the connection is aborted)."""

    def __init__(
        self, body: bytes, *, piece: int = 256 * 1024, cut_after: int | None = None, pause: float = 0.0
    ) -> None:
        self.body, self.piece, self.cut_after, self.pause = body, piece, cut_after, pause
        self.hits = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _answer(self, path: str, w: asyncio.StreamWriter) -> None:
        if path.startswith("/metrics"):
            w.write(_resp(200, METRICS, b"text/plain"))
        elif path == "/health":
            w.write(_resp(200, b""))
        else:
            self.hits += 1
            raw = _resp(200, self.body)
            end = len(raw) if self.cut_after is None else len(raw) - len(self.body) + self.cut_after
            for i in range(0, end, self.piece):
                w.write(raw[i : min(i + self.piece, end)])
                await w.drain()
                if self.pause:
                    await asyncio.sleep(self.pause)
            if self.cut_after is not None:
                w.transport.abort()

    async def start(self) -> RawServer:
        self._server = await serve_keepalive(self._answer)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def post(port: int, body: dict[str, Any]) -> tuple[int, bytes, bytes]:
    """(status, head, de-chunked body); a body cut mid-way raises ``IncompleteReadError``."""
    raw = orjson.dumps(body)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(raw), raw)
    )
    try:
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" not in head.lower():
            return status, head, await r.read()
        out = bytearray()
        while True:
            size = int((await r.readuntil(b"\r\n"))[:-2], 16)
            data = await r.readexactly(size + 2)
            if not size:
                return status, head, bytes(out)
            out += data[:-2]
    finally:
        w.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[RawServer]]:
    started: list[RawServer] = []
    yield started
    for s in started:
        await s.stop()


async def _server(servers: list[RawServer], body: bytes, **kw: Any) -> RawServer:
    s = await RawServer(body, **kw).start()
    servers.append(s)
    return s


# --- process: the gateway's peak RSS does not grow with the answer's size -------------------------------


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _serve(tmp_path: Path, config: str) -> tuple[Any, int]:
    (tmp_path / "gw.yaml").write_text(config)
    err = (tmp_path / "stderr").open("wb")
    # --port 0: the process binds and says which (a port picked here could be taken before it binds)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--config", str(tmp_path / "gw.yaml"),
        "--port", "0", "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    line = b""
    with contextlib.suppress(TimeoutError):
        while b"listening on" not in line:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line:
                break
    m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        await proc.wait()
        raise AssertionError((line, (tmp_path / "stderr").read_text()[-500:]))
    port = int(m[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.returncode is None, (tmp_path / "stderr").read_text()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = await r.read()
            w.close()
            if b" 200 " in data.split(b"\r\n", 1)[0]:
                return proc, port
        except OSError:
            pass
        await asyncio.sleep(0.2)
    proc.kill()
    raise AssertionError("kvgate serve not ready in 30 s")


SIZE = 48 * 1024 * 1024
IN_FLIGHT = 3


async def test_big_answers_are_relayed_not_held_whole(tmp_path, servers):
    backend = await _server(servers, answer_body(SIZE), piece=1 << 20)
    proc, port = await _serve(
        tmp_path,
        f"pools:\n  - name: p\n    policy: round-robin\n    endpoints: ['{backend.address}']\n"
        "    models: [m]\nlimits:\n  idleTimeoutSeconds: 120\n  requestTimeoutSeconds: 300\n",
    )
    try:
        before = _peak_rss_kib(proc.pid)
        results = await asyncio.wait_for(
            asyncio.gather(*(post(port, {"model": "m", "prompt": "x"}) for _ in range(IN_FLIGHT))), 240
        )
        assert [(s, len(b)) for s, _, b in results] == [(200, len(answer_body(SIZE)))] * IN_FLIGHT
        grew_mib = (_peak_rss_kib(proc.pid) - before) / 1024
        # Relayed as it comes: at most WHOLE_BODY_MAX (4 MiB) and a few buffers per request; held whole
        # (before): ~2 x 48 MiB per request.
        assert grew_mib < 48, f"gateway peak RSS grew {grew_mib:.0f} MiB for {IN_FLIGHT} x 48 MiB answers"
    finally:
        proc.kill()
        await proc.wait()


# --- in-process: what a relayed answer keeps (usage, model name, error rules) --------------------------


def _cfg(*servers: RawServer, models: tuple[str, ...] = ("m",), extra: dict[str, Any] | None = None) -> Any:
    return make_config([s.address for s in servers], models=models, extra=extra)


async def test_a_relayed_answer_keeps_its_usage_and_is_chunked(servers):
    body = answer_body(300_000)
    s = await _server(servers, body, piece=64 * 1024)
    async with running_gateway(_cfg(s)) as gw:
        gw.proxy.whole_max = 100_000
        status, head, got = await post(gw.port, {"model": "m", "prompt": "x"})
        assert (status, got) == (200, body)
        assert b"transfer-encoding: chunked" in head.lower()  # relayed: no Content-Length known
        samples = {
            x.name: x.value
            for fam in gw.metrics.registry.collect()
            for x in fam.samples
            if x.name in ("inference_objective_input_tokens_sum", "inference_objective_output_tokens_sum")
        }
        # Its usage was read from its tail (3 prompt, 5 completion tokens).
        assert sorted(samples.values()) == [3.0, 5.0], samples
        assert gw.proxy.held.used == 0


async def test_a_small_answer_is_still_sent_whole(servers):
    body = answer_body(1000)
    s = await _server(servers, body, piece=100)
    async with running_gateway(_cfg(s)) as gw:
        status, head, got = await post(gw.port, {"model": "m", "prompt": "x"})
        assert (status, got) == (200, body)
        assert b"content-length: %d" % len(body) in head.lower()
        assert gw.proxy.held.used == 0


async def test_a_relayed_answer_gets_its_model_name_put_back(servers):
    # The rule routes "alias" to "m": the server answers "m", the client asked "alias". The model name
    # straddles the gateway's first piece boundary (piece of 40 bytes).
    body = answer_body(300_000)
    s = await _server(servers, body, piece=40)
    extra = {
        "rewrites": [
            {"matches": [{"model": {"type": "Exact", "value": "alias"}}], "targets": [{"modelRewrite": "m"}]}
        ]
    }
    async with running_gateway(_cfg(s, extra=extra)) as gw:
        gw.proxy.whole_max = 1000
        status, _, got = await post(gw.port, {"model": "alias", "prompt": "x"})
        assert (status, got) == (200, body.replace(b'"model":"m"', b'"model":"alias"', 1))


async def test_a_budget_spent_relays_even_small_answers(servers):
    body = answer_body(20_000)
    s = await _server(servers, body, piece=4096, pause=0.005)
    async with running_gateway(_cfg(s)) as gw:
        gw.proxy.held.limit = 8192  # (as if other answers held the rest)
        status, head, got = await post(gw.port, {"model": "m", "prompt": "x"})
        assert (status, got) == (200, body)
        assert b"transfer-encoding: chunked" in head.lower()
        assert gw.proxy.held.used == 0


async def test_a_cut_before_the_bound_is_retried_after_it_the_client_sees_it_cut(servers):
    body = answer_body(300_000)
    early = await _server(servers, body, piece=8192, cut_after=10_000)  # cut while still held
    good = await _server(servers, body, piece=8192)
    async with running_gateway(_cfg(early, good, extra={"limits": {"maxAttempts": 2}})) as gw:
        gw.proxy.whole_max = 100_000
        for _ in range(2):  # round-robin: one of the two starts on the early-cut server, is retried
            status, _, got = await post(gw.port, {"model": "m", "prompt": "x"})
            assert (status, got) == (200, body)
        assert early.hits >= 1
        late = await _server(servers, body, piece=8192, cut_after=200_000)  # cut after bytes went out
        gw_cfg = _cfg(late)
    async with running_gateway(gw_cfg) as gw:
        gw.proxy.whole_max = 100_000
        with pytest.raises(asyncio.IncompleteReadError):
            await post(gw.port, {"model": "m", "prompt": "x"})
        await asyncio.sleep(0.05)
        assert error_codes(gw.metrics.registry) == {"stream_cut": 1.0}
        assert gw.proxy.held.used == 0


def test_piece_rewriter_across_every_split():
    from kvgate.gateway.bigbody import PieceRewriter  # (here: the module imports on the code before it)

    body = answer_body(50, model="served")
    want = body.replace(b'"model":"served"', b'"model":"client"', 1)
    for cut in range(1, len(body)):
        rw = PieceRewriter("served", "client", window=1 << 20)
        assert rw.feed(body[:cut]) + rw.feed(body[cut:]) + rw.finish() == want, cut
    rw = PieceRewriter("served", "client", window=10)  # past the window: as sent
    assert b"".join([rw.feed(body[:20]), rw.feed(body[20:]), rw.finish()]) == body


def _scan(body: bytes, cuts: list[int]) -> tuple[int, int] | None:
    from kvgate.openai.usage import BodyUsageScanner

    sc = BodyUsageScanner()
    at = 0
    for c in [*cuts, len(body)]:
        sc.feed(body[at:c])
        at = c
    u = sc.usage()
    return None if u is None else (u.prompt_tokens, u.completion_tokens)  # (as ``_pair``)


def test_body_usage_scanner_any_place_any_split():
    """review s17-bigbody M1: usage read wherever it stands (vLLM's chat answer: before MiBs of
    ``prompt_logprobs``), with the body split anywhere; a ``"usage"`` token text, an escaped one in
    content, a nested non-usage ``usage`` key, are not taken."""
    import random

    from kvgate.openai.usage import usage_from_body

    def _pair(u: Any) -> tuple[int, int] | None:
        return None if u is None else (u.prompt_tokens, u.completion_tokens)

    assert _pair(usage_from_body(answer_body(10))) is not None
    plp = b",".join(b'{"%d":{"logprob":-1.2,"decoded_token":"usage"}}' % i for i in range(2000))
    bodies = {
        b'{"choices":[{"text":"say \\"usage\\": {\\"prompt_tokens\\":1}"}],'
        b'"x":{"usage":[1]},"usage" : {"prompt_tokens":7,"completion_tokens":2},'
        b'"prompt_logprobs":[null,' + plp + b"]}": (7, 2),
        answer_body(10): _pair(usage_from_body(answer_body(10))),
        b'{"a":"\\\\","usage":{"prompt_tokens":3,"completion_tokens":4}}': (3, 4),
        b'{"prompt_logprobs":[' + plp + b'],"usage":{"prompt_tokens":5,"completion_tokens":6}}': (5, 6),
        b'{"t":"usage","x":"\\"usage\\":{\\"prompt_tokens\\":1}"}': None,
    }
    rng = random.Random(17)
    for body, want in bodies.items():
        assert _scan(body, []) == want, body[:80]
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 12))))
            assert _scan(body, cuts) == want, (body[:80], cuts)
        assert _scan(body, list(range(1, len(body), 7))) == want
