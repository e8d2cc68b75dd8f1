"""review s23-rev-final23 F1: CountingScanner (099d0577) swaps its ``feed`` / ``_line`` for bound methods
stored on the instance (``MethodType(SSEScanner.feed, self)``): instance -> __dict__ -> bound method ->
instance, a reference cycle on every ``kvgate epp`` stream past its first output. The scanner (and a
partial line in its tail, up to MAX_SSE_LINE = 1 MiB when the stream is abandoned without ``finish``) is
no longer freed when the session drops it, only by the cyclic collector; the gateway tunes gc on the
premise that request objects die by reference counting (``gateway.cli.tune_gc``). Fails on 04b1994e,
passes on e4a624ee (the per-line counter) and on the lead's fix (the class switched, s23)."""

from __future__ import annotations

import gc
import weakref

import orjson

from kvgate.extproc.output_events import CountingScanner


def _chat(delta: dict[str, object]) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _dropped_is_freed(finish: bool) -> bool:
    s = CountingScanner(None)
    for c in [_chat({"role": "assistant", "content": ""}), _chat({"content": "a"}), _chat({"content": "b"})]:
        s.feed(c)
    s.feed(b'data: {"partial": "' + b"x" * 500_000)  # a client gone mid-event: a big tail
    if finish:
        s.finish()
    ref = weakref.ref(s)
    was = gc.isenabled()
    gc.disable()
    try:
        del s
        return ref() is None
    finally:
        if was:
            gc.enable()


def test_abandoned_stream_scanner_freed_by_refcount() -> None:
    assert _dropped_is_freed(finish=False), "scanner (and its 500 KB tail) kept alive by a reference cycle"


def test_finished_stream_scanner_freed_by_refcount() -> None:
    assert _dropped_is_freed(finish=True), "scanner kept alive by a reference cycle"
