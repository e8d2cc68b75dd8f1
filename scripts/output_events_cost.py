"""CPU of ``kvgate epp``'s output-event count (``extproc.output_events.CountingScanner``): this tree's
against another tree's, and against the plain scan (``openai.sse.SSEScanner``) both run on.

    PYTHONPATH=src python scripts/output_events_cost.py --base-src <other checkout>/src [--runs 2]

One 200-event chat stream (vLLM's shape: the role chunk, 199 one-token chunks, ``[DONE]``), fed one event a
body message as Envoy passes them, no model rewrite. Per run, the three scanners alternated five times, each
its fastest of 9 x 100 streams; prints microseconds per event and the counting's cost (the counter's time
less the plain scan's). The base's ``output_events.py`` is loaded by path in this process, on this tree's
``SSEScanner`` (the scan both count on). First checks both count alike over 2,000 random streams and
chunkings (the same counts and usage, or the script stops). Run it under the team's live lock.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import timeit
from pathlib import Path
from typing import Any

import orjson

from kvgate.extproc.output_events import CountingScanner
from kvgate.openai.sse import SSEScanner


def _chat(delta: dict[str, Any], index: int = 0) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
    obj = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CHUNKS = [_chat({"role": "assistant", "content": ""})] + [_chat({"content": " tok"}) for _ in range(199)]
CHUNKS.append(b"data: [DONE]\n\n")


def _random_stream(rng: random.Random) -> bytes:
    parts = [_chat({"role": "assistant", "content": ""})]
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.05:
            parts.append(b": ping\n\n")
        elif r < 0.1:
            parts.append(b'data: {"error": {"message": "x"}}\n\n')
        elif r < 0.15:
            parts.append(_chat({"content": '"choices":[{'}))
        else:
            parts.append(_chat({"content": "t"}, rng.randint(0, 2)))
    raw = b"".join(parts) + b"data: [DONE]\n\n"
    return raw.replace(b"\n", b"\r\n") if rng.random() < 0.2 else raw


def _same_counts(base: type[Any]) -> None:
    rng = random.Random(5)
    for _ in range(2000):
        raw = _random_stream(rng)
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(0, 12)))
        a, b = base(None), CountingScanner(None)
        for lo, hi in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            a.feed(raw[lo:hi])
            b.feed(raw[lo:hi])
        a.finish()
        b.finish()
        if (a.output_events, a.learned_usage()) != (b.output_events, b.learned_usage()):
            raise SystemExit(f"counts differ: base {a.output_events}, this {b.output_events}: {raw!r}")


def _per_event(cls: type[Any]) -> float:
    def run() -> None:
        s = cls(None)
        for c in CHUNKS:
            s.feed(c)
        s.finish()

    return min(timeit.repeat(run, number=100, repeat=9)) / 100 / len(CHUNKS) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-src", required=True, type=Path, help="the other tree's src/")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location(
        "base_output_events", args.base_src / "kvgate/extproc/output_events.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = mod.CountingScanner
    _same_counts(base)
    print("counts: identical over 2,000 random streams and chunkings")
    for run in range(args.runs):
        best: dict[str, float] = {}
        for _ in range(5):
            for name, cls in (("scan", SSEScanner), ("base", base), ("this", CountingScanner)):
                best[name] = min(best.get(name, 1e9), _per_event(cls))
        print(
            f"run {run + 1}: us/event scan {best['scan']:.3f}, base {best['base']:.3f}, "
            f"this {best['this']:.3f}; counting cost base {best['base'] - best['scan']:.3f}, "
            f"this {best['this'] - best['scan']:.3f}"
        )


if __name__ == "__main__":
    main()
