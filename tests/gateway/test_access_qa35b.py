"""qa35b (outside QA of ``kvgate serve``), adapted from its reproductions: real HTTP on loopback, an
in-process ``GatewayServer`` in front of a real aiohttp backend, raw-socket clients, state-based waits.

F1: a stream its client read to ``data: [DONE]`` and then closed (the openai SDK's ``Stream`` does) was
counted ``client_gone``, its usage not observed, when the upstream's chunked end had not come yet.
F2: a stream its client left mid-way was logged with ``-`` for the generated request id and ``bytes=0``.
F3: the front's own refusals (401, 413, 408) on a data route left no access line; 413 and 408 carried no
``x-request-id``. F4: a client's ``x-request-id`` holding spaces forged the fields of its line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.backend import Backend
from gateway.conftest import AccessSink, make_config, request_errors, running_gateway, until
from kvgate.gateway.server import GatewayServer

pytestmark = pytest.mark.asyncio

WAIT_S = 30.0
CMPL = b'{"model":"m","prompt":"hi","max_tokens":3,"stream":true}'


@asynccontextmanager
async def _gateway(
    extra: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[Backend, GatewayServer, int]]:
    b = await Backend("b", **kw).start()
    try:
        cfg = make_config([b.address], extra={"accessLog": True, **(extra or {})})
        async with running_gateway(cfg) as gw:
            yield b, gw, gw.port
    finally:
        await b.stop()


async def _open(
    port: int, head: bytes, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(head + body)
    await w.drain()
    return r, w


def _post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: x", "content-type: application/json", *extra,
             f"content-length: {len(body)}", "", ""]  # fmt: skip
    return "\r\n".join(lines).encode() + body


async def _read_until(r: asyncio.StreamReader, done: Any) -> bytes:
    buf = b""
    async with asyncio.timeout(WAIT_S):
        while not done(buf):
            data = await r.read(65536)
            assert data, buf
            buf += data
    return buf


def _tokens_observed(gw: GatewayServer) -> float:
    return sum(
        s.value
        for metric in gw.metrics.registry.collect()
        for s in metric.samples
        if s.name == "inference_objective_output_tokens_count"
    )


def _ended(gw: GatewayServer) -> bool:
    return gw.proxy is not None and gw.proxy.inflight == 0


async def test_a_stream_closed_by_its_client_after_done_is_complete(access_sink: AccessSink) -> None:
    """F1: the upstream writes ``[DONE]``, then its chunked end only when the test lets it; the client reads
    to ``[DONE]`` and closes meanwhile. Before the fix: ``client_gone`` +1, no usage observed, 499."""
    async with _gateway(tokens=3) as (b, gw, port):
        b.after_done = asyncio.Event()
        tokens0 = _tokens_observed(gw)
        r, w = await _open(port, _post("/v1/completions", CMPL, "x-request-id: qa35b-done"))
        await _read_until(r, lambda buf: b"data: [DONE]\n\n" in buf)
        await asyncio.wait_for(b.done_sent.wait(), WAIT_S)  # (the upstream holds its chunked end)
        w.close()
        await until(lambda: _ended(gw), WAIT_S, "the request ended (its handler cancelled)")
        b.after_done.set()
        await until(access_sink.lines, WAIT_S, "the stream's access line")
        errors = {k: v for k, v in request_errors(gw).items() if v}
        assert errors == {}, errors  # (before: {("m", "m", "client_gone"): 1.0})
        assert _tokens_observed(gw) == tokens0 + 1  # (its usage observed)
    line = access_sink.lines()[-1]
    assert line.startswith("qa35b-done POST /v1/completions 200 "), line  # (before: 499)


@pytest.mark.parametrize("client_id", [None, "qa35b-own-id"])
async def test_a_stream_left_mid_way_keeps_its_id_and_bytes(
    access_sink: AccessSink, client_id: str | None
) -> None:
    """F2: the client reads the head and 3 events, then closes: its line has the id it got and the bytes."""
    async with _gateway(tokens=400) as (b, gw, port):
        b.pause_after = 3  # (the stream waits there: the client's close comes mid-stream, whatever the load)
        extra = [f"x-request-id: {client_id}"] if client_id else []
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":400,"stream":true}'
        r, w = await _open(port, _post("/v1/chat/completions", body, *extra))
        buf = await _read_until(
            r, lambda buf: b"\r\n\r\n" in buf and buf.split(b"\r\n\r\n", 1)[1].count(b"data: ") >= 3
        )
        await asyncio.wait_for(b.paused.wait(), WAIT_S)
        w.close()
        await until(lambda: _ended(gw), WAIT_S, "the request ended")
        b.resume.set()
        await until(access_sink.lines, WAIT_S, "the stream's access line")
    head = buf.split(b"\r\n\r\n", 1)[0].decode()
    rid = next(
        x.split(":", 1)[1].strip() for x in head.split("\r\n") if x.lower().startswith("x-request-id:")
    )
    if client_id:
        assert rid == client_id
    line = access_sink.lines()[-1]
    assert line.startswith(f"{rid} POST /v1/chat/completions 499 "), (rid, line)  # (before: "- POST ...")
    assert int(line.rsplit("bytes=", 1)[1]) > 0, line  # (before: bytes=0)


_KEYED = (
    "POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-a\r\nx-request-id: qa35b-{}\r\n"
)
REFUSALS = {
    "401": _post("/v1/completions", b'{"model":"m","prompt":"hi","max_tokens":2}', "x-request-id: qa35b-401"),
    "413": _KEYED.format(413).encode() + b"content-length: 200000\r\n\r\n{",  # (over maxBodyBytes)
    "408": _KEYED.format(408).encode() + b"content-length: 100\r\n\r\n{",  # (its body never all sent)
}


@pytest.mark.parametrize("status", sorted(REFUSALS))
async def test_a_front_refusal_on_a_data_route_is_logged_with_its_id(
    access_sink: AccessSink, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """F3: 401 (no key, refused from its head), 413 (over maxBodyBytes), 408 (its body not in
    bodyTimeoutSeconds): each answer carries the request id and leaves its line."""
    monkeypatch.setenv("QA35B_KEYS", "sk-a=tenant-a")
    extra = {
        "auth": {"apiKeysEnv": "QA35B_KEYS"},
        "limits": {"maxBodyBytes": 100000, "bodyTimeoutSeconds": 1},
    }
    async with _gateway(extra) as (_, _gw, port):
        r, w = await _open(port, REFUSALS[status])
        got = await _read_until(r, lambda buf: b"\r\n\r\n" in buf)
        w.close()
        assert got.startswith(f"HTTP/1.1 {status} ".encode()), got
        assert f"\r\nx-request-id: qa35b-{status}\r\n".encode() in got.lower(), got  # (before: none, 413/408)
        await until(access_sink.lines, WAIT_S, "the refusal's access line")
    line = access_sink.lines()[-1]
    assert line.startswith(f"qa35b-{status} POST /v1/completions {status} model=- endpoint=- attempts=0 "), (
        line
    )


async def test_a_request_id_with_spaces_cannot_forge_the_lines_fields(access_sink: AccessSink) -> None:
    """F4: the id is one field whatever the client sends (a space percent-encoded): the positions the docs
    give (id, method, path, status, model=, endpoint=) are the gateway's."""
    forged = "abc POST /v1/chat/completions 200 model=m endpoint=10.9.9.9:8000 attempts=1 ms=1.0 bytes=1"
    async with _gateway() as (_, _gw, port):
        body = b'{"model":"nope","prompt":"x","max_tokens":1}'
        r, w = await _open(port, _post("/v1/completions", body, f"x-request-id: {forged}"))
        got = await _read_until(r, lambda buf: b"\r\n\r\n" in buf)
        w.close()
        assert got.startswith(b"HTTP/1.1 404 "), got
        assert f"x-request-id: {forged}\r\n".encode() in got  # (the answer keeps the client's id as sent)
        await until(access_sink.lines, WAIT_S, "the access line")
    fields = access_sink.lines()[-1].split(" ")
    assert fields[0] == forged.replace(" ", "%20"), fields
    assert fields[1:6] == ["POST", "/v1/completions", "404", "model=-", "endpoint=-"], fields
