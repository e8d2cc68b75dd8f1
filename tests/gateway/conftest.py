"""Gateway test fixtures: real backends and a real gateway on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.backend import Backend
from kvgate.config.gateway import GatewayConfig, parse_gateway_config
from kvgate.gateway.pools import Pool, build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.gateway.shared_responses import SharedResponses
from kvgate.gateway.upstream import UpstreamResponse


def make_config(
    addresses: list[str],
    *,
    models: tuple[str, ...] = ("m",),
    policy: str = "round-robin",
    extra: dict[str, Any] | None = None,
    adapters: tuple[str, ...] = (),
) -> GatewayConfig:
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {
                "name": "p",
                "endpoints": addresses,
                "models": list(models),
                "adapters": list(adapters),
                "policy": policy,
            }
        ],
        "health": {"ejectBaseSeconds": 0.2, "ejectMaxSeconds": 1.0, "probeTimeoutSeconds": 0.5},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_gateway_config(raw)


def make_pools(cfg: GatewayConfig) -> list[Pool]:
    """Each pool with kvgate's real picker (``build_director`` with the pool's policy)."""
    return [build_pool(p) for p in cfg.pools]


@asynccontextmanager
async def running_gateway(cfg: GatewayConfig, *, scrape: bool = False) -> AsyncIterator[GatewayServer]:
    gw = GatewayServer(cfg, make_pools(cfg), scrape=scrape)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(drain_timeout=1.0)


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def make(n: int = 2, **kw: Any) -> list[Backend]:
        out = [await Backend(f"b{i}", **kw).start() for i in range(len(started), len(started) + n)]
        started.extend(out)
        return out

    yield make
    for b in started:
        await b.stop()


def base_url(gw: GatewayServer) -> str:
    return f"http://127.0.0.1:{gw.port}"


async def until(cond: Callable[[], object], within_s: float = 10.0, what: str = "") -> None:
    """Wait for what a background task or callback does (polled: a fixed short sleep before the assert
    flakes on a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, f"not reached within {within_s}s: {what}"
        await asyncio.sleep(0.01)


class AccessSink:
    """Stands for stderr in the access-log tests (``access.stderr``): what was written, in how many writes."""

    def __init__(self) -> None:
        self.text = ""
        self.writes = 0

    def write(self, text: str) -> int:
        self.text += text
        self.writes += 1
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        """The access lines written so far, past their ``... INFO kvgate.access:`` stamp."""
        return [x.split("kvgate.access: ", 1)[1] for x in self.text.splitlines()]


class PipeSink(AccessSink):
    """An ``AccessSink`` that is a real pipe (review s25-rev-gw25 L4): with a file descriptor, ``Lines`` takes
    the production path, its writer thread; a reader thread of the test's drains the pipe into ``text``
    (so poll it: ``until``). ``write`` is never called (the writer writes the descriptor)."""

    def __init__(self) -> None:
        super().__init__()
        self._r, self._w = os.pipe()
        self._reader = threading.Thread(target=self._read, name="test-pipe-sink", daemon=True)
        self._reader.start()

    def fileno(self) -> int:
        return self._w

    def write(self, text: str) -> int:
        raise AssertionError(f"written on the caller's thread: {text!r}")

    def _read(self) -> None:
        while chunk := os.read(self._r, 1 << 16):
            self.text += chunk.decode()

    def close(self) -> None:
        os.close(self._w)
        self._reader.join(30)
        os.close(self._r)


S = TypeVar("S")


@contextmanager
def _access_to(sink: S, monkeypatch: pytest.MonkeyPatch) -> Iterator[S]:
    """The access log on (``kvgate.access`` at INFO) with its lines to ``sink``; the level put back after."""
    from kvgate.gateway import access

    monkeypatch.setattr(access, "stderr", lambda: sink)
    log = logging.getLogger("kvgate.access")
    old = log.level
    log.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        log.setLevel(old)


@pytest.fixture
def access_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipeSink]:
    """As ``access_sink``, its lines to a real pipe through the writer thread (``PipeSink``)."""
    sink = PipeSink()
    try:
        with _access_to(sink, monkeypatch):
            yield sink
    finally:
        sink.close()


@pytest.fixture
def access_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[AccessSink]:
    """The access log on (``kvgate.access`` at INFO when the proxy is built), its lines to a sink."""
    with _access_to(AccessSink(), monkeypatch) as sink:
        yield sink


async def serve_ready(
    s: Any, admin: int, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Until a ``kvgate serve`` child's admin ``/readyz`` answers 200 (at most 60 s); ``proc``: it must not
    exit meanwhile (``log``: its output's tail said then)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if proc is not None:
            assert proc.poll() is None, f"kvgate serve exited: {_tail(log)}"
        assert loop.time() < deadline, "kvgate serve never became ready"
        await asyncio.sleep(0.05)


def _tail(log: Path | None) -> str:
    return log.read_text()[-800:] if log is not None else ""


ERRORS = "inference_objective_request_error_total"
ERROR_LABELS = ("model_name", "target_model_name", "error_code")


def labelled_counts(registry: Any, sample: str, *labels: str, zeros: bool = False) -> dict[Any, float]:
    """The values of the samples named ``sample`` (a counter's ``..._total``) in ``registry``, by the
    values of ``labels`` (one label: its value; several: a tuple); the 0s only with ``zeros``."""
    return {
        (s.labels[labels[0]] if len(labels) == 1 else tuple(s.labels[k] for k in labels)): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == sample and (zeros or s.value)
    }


def error_counts(registry: Any) -> dict[tuple[str, str, str], float]:
    """``(model_name, target_model_name, error_code)`` -> ``inference_objective_request_error_total``, the
    counts that are not 0 (the same metric in the three doors)."""
    return labelled_counts(registry, ERRORS, *ERROR_LABELS)


def error_codes(registry: Any) -> dict[str, float]:
    """``error_code`` -> ``inference_objective_request_error_total`` over the model labels, the counts
    that are not 0."""
    out: dict[str, float] = {}
    for (_, _, code), value in error_counts(registry).items():
        out[code] = out.get(code, 0.0) + value
    return out


def request_errors(gw: GatewayServer) -> dict[tuple[str, str, str], float]:
    """``error_counts`` of a gateway, the 0s included."""
    return labelled_counts(gw.metrics.registry, ERRORS, *ERROR_LABELS, zeros=True)


async def _close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@asynccontextmanager
async def closing_backend_gateway(*, drain_timeout: float = 1.0) -> AsyncIterator[tuple[GatewayServer, int]]:
    """A started gateway (model ``m``, maxBodyBytes 1000) and the port of its one endpoint, a server that
    closes every connection; the gateway stopped and the server closed after."""
    server = await asyncio.start_server(_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = parse_gateway_config(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "pools": [{"name": "p", "endpoints": [f"127.0.0.1:{port}"], "models": ["m"]}],
            "limits": {"maxBodyBytes": 1000},
        }
    )
    gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools], scrape=False)
    await gw.start()
    try:
        yield gw, port
    finally:
        await gw.stop(drain_timeout=drain_timeout)
        server.close()


async def read_body(resp: UpstreamResponse) -> bytes:
    """An upstream response's whole body, read chunk by chunk (the proxy reads ``read_now`` or, bounded,
    ``read_chunk`` itself; the upstream client has no unbounded whole-body read)."""
    parts = []
    while chunk := await resp.read_chunk():
        parts.append(chunk)
    return b"".join(parts)


@pytest.fixture
def shared_views() -> Iterator[tuple[SharedResponses, SharedResponses, SharedResponses]]:
    """A shared Responses table for 2 workers (real shared memory): (its owner, worker 0's view, worker 1's);
    closed (the segment unlinked) after the test."""
    owner = SharedResponses.create(2, f"kvgate_test_rsp_{os.getpid()}")
    w0 = SharedResponses.attach(owner.shm.name, 2, 0)
    w1 = SharedResponses.attach(owner.shm.name, 2, 1)
    yield owner, w0, w1
    w0.close()
    w1.close()
    owner.close()
