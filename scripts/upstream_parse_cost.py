"""CPU to parse one upstream response: this tree's ``kvgate.gateway.upstream`` against another's.

    PYTHONPATH=src python scripts/upstream_parse_cost.py --base-src <other checkout>/src [--rounds 15]

Both modules are loaded side by side in one process (``upstream.py`` imports only the standard library
and httptools) and fed the same bytes through ``_Conn.data_received``, rounds interleaved, so load on
a shared machine hits both alike; the minimum over rounds is printed per shape, with the ratio
(this tree / base). Shapes: a vLLM-like non-streamed completion (4 headers, Content-Length) in one
read and in two (head, then body); an SSE stream (chunked) of 16 events, one read each. The body
pieces are taken off the connection after each read, as the proxy's relay does; no socket, no event
loop: this isolates the parser from the rest of the data path (kvgate bench gateway-overhead measures
that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

_BODY = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " hello", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15},
    }
).encode()
_WHOLE = (
    b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 01:30:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: %d\r\ncontent-type: application/json\r\n\r\n" % len(_BODY)
) + _BODY
_EVENT = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":0,"model":"m","choices":[{"index":0,'
    b'"text":" hello","logprobs":null,"finish_reason":null}]}\n\n'
)
_SSE = [
    b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 01:30:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n",
    *[b"%x\r\n%s\r\n" % (len(_EVENT), _EVENT)] * 16,
    b"0\r\n\r\n",
]
SHAPES = {
    "non-streamed, 1 read": [_WHOLE],
    "non-streamed, head + body reads": [_WHOLE[: -len(_BODY)], _WHOLE[-len(_BODY) :]],
    "SSE, 16 events, 1 read each": _SSE,
}


class _Transport:
    def abort(self) -> None:
        raise AssertionError("aborted")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _load(src: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, src / "kvgate" / "gateway" / "upstream.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def _conn(mod: ModuleType) -> Any:
    conn = mod._Conn(mod.UpstreamPool(1.0, 1.0), "x:1")
    conn.transport = _Transport()
    return conn


def _per_response_us(conn: Any, pieces: list[bytes], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        conn.busy = True  # (as ``request`` sets it; an attribute the older parser ignores)
        for piece in pieces:
            conn.data_received(piece)
            conn.body.clear()
            conn.buffered = 0
        if not conn.done or conn.error is not None:
            raise AssertionError(f"not parsed: {conn.error!r}")
        conn.reset()
    return (time.perf_counter() - t) / n * 1e6


class _Answering:
    """A transport whose every write is answered (``data_received``) on the next loop turn."""

    def __init__(self, conn: Any, loop: Any) -> None:
        self.conn, self.loop = conn, loop

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.conn.data_received, _WHOLE)

    def get_write_buffer_size(self) -> int:
        return 0  # (every write is taken at once)

    def abort(self) -> None:
        raise AssertionError("aborted")

    def close(self) -> None:
        raise AssertionError("closed")


async def _client_us(mod: ModuleType, n: int) -> float:
    import asyncio

    loop = asyncio.get_running_loop()
    pool = mod.UpstreamPool(1.0, 120.0)
    conn = mod._Conn(pool, "x:1")
    conn.connection_made(_Answering(conn, loop))
    pool._put_idle(conn)
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x:1\r\ncontent-length: 2\r\n\r\n"
    deadline = loop.time() + 600
    t = time.perf_counter()
    for _ in range(n):
        resp = await pool.request("x:1", head, b"{}", deadline)
        if resp.status >= 500 or resp.content_type == "text/event-stream":
            raise AssertionError("unexpected")
        body = resp.read_now()  # (as the proxy reads it: whole when all of it is here)
        if body is None:
            parts = []
            while chunk := await resp.read_chunk():
                parts.append(chunk)
            body = b"".join(parts)
        resp.release()
        if resp.status != 200 or len(body) != len(_BODY):
            raise AssertionError("not parsed")
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", required=True, type=Path, help="the other tree's src directory")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--n", type=int, default=4000, help="responses per shape per round")
    args = p.parse_args()
    mods = {
        "base": _load(args.base_src.resolve(), "_upstream_base"),
        "this": _load(Path(__file__).resolve().parent.parent / "src", "_upstream_this"),
    }
    conns = {k: _conn(m) for k, m in mods.items()}
    best: dict[tuple[str, str], float] = {}
    for pieces in SHAPES.values():
        for c in conns.values():
            _per_response_us(c, pieces, 500)  # warm-up
    for _ in range(args.rounds):
        for shape, pieces in SHAPES.items():
            for k, c in conns.items():
                us = _per_response_us(c, pieces, args.n)
                best[k, shape] = min(best.get((k, shape), us), us)
    import uvloop

    client = "client round trip, non-streamed"
    for _ in range(args.rounds):
        for k, m in mods.items():
            us = uvloop.run(_client_us(m, args.n))
            best[k, client] = min(best.get((k, client), us), us)
    print(f"{'shape':36} {'base us':>9} {'this us':>9} {'this/base':>10}")
    for shape in [*SHAPES, client]:
        b, t = best["base", shape], best["this", shape]
        print(f"{shape:36} {b:9.2f} {t:9.2f} {t / b:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
