"""Review s9-gw G1, G2: the upstream's one timer per connection under uvloop, and the media-type cache.

G1: uvloop (what ``kvgate serve`` runs) keeps time in whole milliseconds and rounds a timer's delay to a
whole millisecond, so a timer can fire up to half a millisecond before a deadline with a sub-millisecond
part. ``_Conn._on_timer`` re-armed ``call_at(due)``, whose delay rounded to 0 ms: the loop spun re-arming
(hundreds of callbacks per timeout) until uvloop's clock ticked past the deadline. It now re-arms for at
least 1 ms: at most 1 ms late, never early.

G2: the module-wide Content-Type -> media type cache kept up to 256 raw values of any length (an upstream
head may be 64 KiB) for the life of the process. Only short values are cached now."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from kvgate.gateway import upstream
from kvgate.gateway.upstream import ResponseHead, UpstreamPool, UpstreamTimeout


async def _hanging() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("idle", [0.0504, 0.0203])
def test_upstream_read_timeouts_under_uvloop_fire_the_timer_a_few_times_not_hundreds(
    idle: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAILED before the fix (641-1,833 callbacks for 20 timeouts at 0.0504 s)."""
    calls = 0
    real = upstream._Conn._on_timer

    def counting(self: upstream._Conn) -> None:
        nonlocal calls
        calls += 1
        real(self)

    monkeypatch.setattr(upstream._Conn, "_on_timer", counting)
    waited: list[float] = []

    async def main() -> None:
        server, port = await _hanging()
        pool = UpstreamPool(1.0, idle)
        try:
            for _ in range(20):
                t0 = time.monotonic()
                with pytest.raises(UpstreamTimeout):
                    await pool.request(
                        f"127.0.0.1:{port}", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n", b"{}"
                    )
                waited.append(time.monotonic() - t0)
        finally:
            pool.close()
            server.close()

    uvloop.run(main())
    assert calls <= 20 * 3, f"{calls} timer callbacks for 20 read timeouts (a busy re-arm loop)"
    # never early (uvloop's clock lags the monotonic one by under 1 ms), and not far late
    assert min(waited) >= idle - 0.001, waited
    assert max(waited) < idle + 5.0, waited


def test_the_media_type_cache_does_not_pin_long_upstream_values() -> None:
    """FAILED before the fix (15,367,314 bytes held)."""
    saved = dict(upstream._MEDIA_TYPES)
    upstream._MEDIA_TYPES.clear()
    try:
        for i in range(300):
            head = ResponseHead(200, {"content-type": f"application/json; x={i}; pad=" + "p" * 60_000})
            assert head.content_type == "application/json"
        pinned = sum(len(k) for k in upstream._MEDIA_TYPES)
        assert pinned < 1 << 20, f"{pinned} bytes of upstream Content-Type values held for good"
        # the usual short values are still cached (and read the same)
        head = ResponseHead(200, {"content-type": "Text/Event-Stream; charset=utf-8"})
        assert head.content_type == "text/event-stream"
        assert upstream._MEDIA_TYPES["Text/Event-Stream; charset=utf-8"] == "text/event-stream"
    finally:
        upstream._MEDIA_TYPES.clear()
        upstream._MEDIA_TYPES.update(saved)
