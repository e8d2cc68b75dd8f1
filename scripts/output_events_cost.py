"""CPU of ``kvgate epp``'s output-event count (``extproc.output_events.CountingScanner``) against the plain
scan (``openai.sse.SSEScanner``) it runs on, in one tree.

    PYTHONPATH=<tree>/src python scripts/output_events_cost.py [--runs 2] [--label NAME]

One 200-event chat stream (vLLM's shape: the role chunk, 199 one-token chunks, ``[DONE]``), fed one event a
body message as Envoy passes them, no model rewrite. Per run, the two scanners alternated five times, each
its fastest of 9 x 100 streams (thread CPU time); prints microseconds per event and the counting's cost
(the counter's time less the plain scan's). To compare two trees, run it with each tree's ``src`` in turn,
alternating, in one hold of the team's live lock (small33: the counter's internals changed, so one tree's
``CountingScanner`` no longer runs on another's scan; session 23's version loaded the base by path).
First checks the count on the stream (199).
"""

from __future__ import annotations

import argparse
import time
import timeit
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


def _per_event(cls: type[Any]) -> float:
    def run() -> None:
        s = cls(None)
        for c in CHUNKS:
            s.feed(c)
        s.finish()

    best = min(timeit.repeat(run, number=100, repeat=9, timer=time.thread_time))
    return best / 100 / len(CHUNKS) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--label", default="tree")
    args = ap.parse_args()
    check = CountingScanner(None)
    for c in CHUNKS:
        check.feed(c)
    check.finish()
    if check.output_events != 199:
        raise SystemExit(f"counted {check.output_events} output events, not 199")
    for run in range(args.runs):
        best: dict[str, float] = {}
        for _ in range(5):
            for name, cls in (("scan", SSEScanner), ("count", CountingScanner)):
                best[name] = min(best.get(name, 1e9), _per_event(cls))
        print(
            f"{args.label} run {run + 1}: us/event scan {best['scan']:.3f}, counting scanner "
            f"{best['count']:.3f}; counting cost {best['count'] - best['scan']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
