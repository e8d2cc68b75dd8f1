"""CPU of ``parse_body`` on the worst bodies of a size (review s22-rev22a F4): this process's tree, one
shape per line; run it with each tree's ``src`` on ``PYTHONPATH``, back to back, under the live lock.

    PYTHONPATH=src python scripts/hostile_body_cost.py [--bytes 8388608]

Shapes, each filling ``--bytes``: ``emptymsg`` (``{}`` messages), ``flat`` (one message of
``{"type":"file"}`` parts), ``msgs`` (tool messages of one such part each), ``nested`` (``tool_result``
parts of eight each), ``text`` (``{"text":"ab"}`` parts), ``chains64`` (lists nested 64 deep, the limit:
accepted; the body has no ``messages``, so it is refused after the nesting check) and ``chains65`` (one
level more: refused for its nesting), ``dupkey`` (``"x"`` nested 65 deep, then ``"x": 1`` again, orjson
keeping the last, then ``{}`` messages: refused since review s22-media M2) and ``deeplast`` (``{}``
messages, then a key nested 65 deep: refused). Per shape: the body, the rendering's length and estimate, and
``parse_body``'s process CPU time (its fastest of ``--rounds``).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import orjson

from kvgate.openai.request import CHAT, BodyError, parse_body


def _chain(depth: int) -> Any:
    node: Any = []
    for _ in range(depth - 1):
        node = [node]
    return node


def _body(shape: str, limit: int) -> dict[str, Any]:
    if shape == "emptymsg":
        return {"model": "m", "messages": [{}] * ((limit - 40) // 3)}
    if shape == "flat":
        return {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "file"}] * ((limit - 60) // 16)}],
        }
    if shape == "msgs":
        unit = {"role": "tool", "content": [{"type": "file"}]}
        return {"model": "m", "messages": [unit] * ((limit - 40) // (len(orjson.dumps(unit)) + 1))}
    if shape == "nested":
        unit = {"type": "tool_result", "content": [{"type": "file"}] * 8}
        n = (limit - 60) // (len(orjson.dumps(unit)) + 1)
        return {"model": "m", "messages": [{"role": "user", "content": [unit] * n}]}
    if shape == "text":
        return {
            "model": "m",
            "messages": [{"role": "user", "content": [{"text": "ab"}] * ((limit - 60) // 14)}],
        }
    chains = [_chain(62)] * ((limit - 40) // 126)  # levels 3 to 64 (the body 1, "x" 2)
    if shape == "chains65":
        chains[-1] = [_chain(62)]
    return {"model": "m", "x": chains}


def _raw(shape: str, limit: int) -> bytes:
    """The body's bytes (``dupkey`` repeats a key, which no dict can hold)."""
    if shape in ("dupkey", "deeplast"):
        chain = b"[" * 65 + b"]" * 65
        msgs = b"{}," * ((limit - 200) // 3) + b"{}"
        if shape == "dupkey":
            return b'{"model":"m","x":' + chain + b',"x":1,"messages":[' + msgs + b"]}"
        return b'{"model":"m","messages":[' + msgs + b'],"x":' + chain + b"}"
    return orjson.dumps(_body(shape, limit))


SHAPES = ("emptymsg", "flat", "msgs", "nested", "text", "chains64", "chains65", "dupkey", "deeplast")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, default=8 << 20, help="each body's size at most (default 8 MiB)")
    p.add_argument("--rounds", type=int, default=2, help="parses per shape (the fastest is reported)")
    a = p.parse_args()
    for shape in SHAPES:
        raw = _raw(shape, a.bytes)
        best, out = float("inf"), "refused"
        for _ in range(a.rounds):
            gc.collect()
            t = time.process_time()
            try:
                parsed = parse_body(CHAT, raw)
                out = (
                    f"text {len(parsed.prompt_text) / 1e6:6.2f} M chars, est {parsed.prompt_tokens:>11,d} tok"
                )
            except BodyError as e:
                out = f"400 {e.message[:48]}"
            best = min(best, time.process_time() - t)
            parsed = None  # type: ignore[assignment]  # (free before the next round)
        print(f"{shape:9s} body {len(raw) / 1e6:5.2f} MB  parse_body {best * 1e3:7.0f} ms  {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
