"""What a big body that stays on the event loop costs it (review s23-rev-gw23 F3, fixgw23): bodies over
``OFF_LOOP_BYTES`` but at most ``CHEAP_BYTES`` (1 MiB) whose JSON has at most ``CHEAP_UNITS`` quotes,
commas and containers are parsed on the loop (``httpfront.offload.worth_the_thread``). Per shape, each
filling about ``--bytes`` (default 1 MiB, less 512 bytes): where it is parsed, and the count plus
``parse_body``'s time (the fastest of ``--rounds``; wall time). Shapes: ``plain`` / ``plainw`` (one
prompt of 4-letter / 1-letter words), ``uescape`` / ``nlescape`` (one prompt of escapes), ``utf8``
(non-ASCII text), ``ws`` (whitespace between keys), ``bignum`` (one number of a million digits:
refused), ``longkey`` (one key of a million bytes), ``image`` (one data URL), ``atcap`` (messages up to
the unit cap), ``overcap`` (a few messages more: to the thread).

    PYTHONPATH=src python scripts/cheap_body_cost.py [--bytes 1048576] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import orjson

from kvgate.httpfront.offload import CHEAP_UNITS, worth_the_thread
from kvgate.openai.request import CHAT, BodyError, parse_body


def _prompt(content: bytes) -> bytes:
    return b'{"model":"m","messages":[{"role":"user","content":"' + content + b'"}]}'


def _messages(n: int, size: int) -> bytes:
    turn = {"role": "user", "content": "w " * max(1, (size // n - 40) // 2)}
    return orjson.dumps({"model": "m", "messages": [turn] * n})


def _image(size: int) -> bytes:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * size}}
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]})


def _bodies(size: int) -> dict[str, bytes]:
    per = CHEAP_UNITS // 11  # (a message: 8 quotes, 2 commas, 1 brace)
    return {
        "plain": _prompt(b"word " * (size // 5)),
        "plainw": _prompt(b"w " * (size // 2)),
        "uescape": _prompt(b"\\u00e9" * (size // 6)),
        "nlescape": _prompt(b"\\n" * (size // 2)),
        "utf8": orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "é漢" * (size // 5)}]}),
        "ws": b'{"model":"m",' + b" " * size + b'"messages":[{"role":"user","content":"hi"}]}',
        "bignum": b'{"model":"m","max_tokens":' + b"1" * size + b',"messages":[]}',
        "longkey": b'{"model":"m","' + b"k" * size + b'":1,"messages":[{"role":"user","content":"hi"}]}',
        "image": _image(size),
        "atcap": _messages(per - 8, size),
        "overcap": _messages(per + 8, size),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, default=1 << 20, help="each body's size about (default 1 MiB)")
    p.add_argument("--rounds", type=int, default=5, help="runs per shape (the fastest is reported)")
    a = p.parse_args()
    for shape, raw in _bodies(a.bytes - 512).items():
        best, out, thread = float("inf"), "", False
        for _ in range(a.rounds):
            t = time.perf_counter()
            thread = worth_the_thread(raw)
            try:
                parse_body(CHAT, raw)
                out = "ok"
            except BodyError as e:
                out = str(e.status)
            best = min(best, time.perf_counter() - t)
        where = "thread" if thread else "loop"
        took = f"count + parse_body {best * 1e3:6.2f} ms"
        print(f"{shape:8s} body {len(raw) / 1e6:5.2f} MB  {where:6s}  {took}  {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
