"""CPU of the precise profile's tokenization: ``encode`` (before) against ``encode_batch_fast`` (now).

    PYTHONPATH=src python scripts/tokenize_cost.py [--tokenizer PATH] [--prompts 40] [--rounds 7]

``--tokenizer``: a ``tokenizer.json`` or a directory holding one (default: the real-vLLM runs' model,
``~/.cache/kvgate/tiny-llama``, else the simulator's tokenizer). The prompts are 700-word texts (the
tokens per prompt are printed), each its own (no shared prefix, so every piece is a cache miss: the work
``scheduling/tokenize.py`` does on a request's unique pieces). Two figures, both in this process, the two
calls interleaved round by round, CPU time (``process_time``), the median over rounds:

- per piece: each prompt's pieces (``_cut_pieces``) through ``tok.encode(piece, add_special_tokens=False)``
  against ``tokenize._ids`` (``encode_batch_fast([piece])``);
- per prompt: ``PromptTokenizer.encode`` from an empty cache, its tokenizer object without
  ``encode_batch_fast`` (the fallback: the code before) against as loaded.

Both calls must give the same ids (checked on every prompt before timing).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kvgate.scheduling import tokenize

WORDS = ("the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant",
         "don't", "42,", "3.14", "(x)", "日本語", "émigré", "\n", "  ")  # fmt: skip


class _Before:
    """The loaded tokenizer object without ``encode_batch_fast``: ``tokenize`` falls back to ``encode``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "encode_batch_fast":
            raise AttributeError(name)
        return getattr(self._inner, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)

    path = args.tokenizer
    if path is None:
        tiny = Path("~/.cache/kvgate/tiny-llama/tokenizer.json").expanduser()
        if tiny.is_file():
            path = str(tiny)
        else:
            import tempfile

            from kvgate.sim.tokenizer import write_tokenizer_dir

            d = Path(tempfile.mkdtemp()) / "sim"
            write_tokenizer_dir(d)
            path = str(d)
    f = tokenize.tokenizer_file(path)
    rng = random.Random(16)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(700)) for _ in range(args.prompts)]
    pieces = [p for t in prompts for p in tokenize._cut_pieces(t)]

    pt = tokenize.PromptTokenizer(f)
    tok = pt._tok
    before = tokenize.PromptTokenizer(f)
    before._tok = _Before(before._tok)
    for p in pieces:
        assert tokenize._ids(tok, p, False) == tok.encode(p, add_special_tokens=False).ids
    for t in prompts:
        assert pt.encode(t) == before.encode(t)
    pt.wait_self_checks(60)
    before.wait_self_checks(60)
    print(f"tokenizer {f}; piecewise {pt.piecewise}; {len(prompts)} prompts, {len(pieces)} pieces, "
          f"{sum(len(tok.encode(p).ids) for p in pieces) / len(prompts):.0f} tokens per prompt; "
          f"tokenizers {sys.modules['tokenizers'].__version__}")  # fmt: skip

    def per_piece(fast: bool) -> float:
        t0 = time.process_time()
        if fast:
            for p in pieces:
                tokenize._ids(tok, p, False)
        else:
            for p in pieces:
                _ = tok.encode(p, add_special_tokens=False).ids
        return (time.process_time() - t0) / len(pieces) * 1e6

    def per_prompt(t: tokenize.PromptTokenizer) -> float:
        t._cache.clear()
        t._pieces.clear()
        t0 = time.process_time()
        for p in prompts:
            t.encode(p)
        return (time.process_time() - t0) / len(prompts) * 1e6

    piece_b: list[float] = []
    piece_a: list[float] = []
    prompt_b: list[float] = []
    prompt_a: list[float] = []
    for r in range(args.rounds):
        first_fast = r % 2 == 1  # alternate which goes first
        for fast in (first_fast, not first_fast):
            (piece_a if fast else piece_b).append(per_piece(fast))
        for fast in (first_fast, not first_fast):
            (prompt_a if fast else prompt_b).append(per_prompt(pt if fast else before))
    for name, b, a in (("per piece", piece_b, piece_a), ("per prompt", prompt_b, prompt_a)):
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"{name:10s}: encode {mb:8.1f} us, encode_batch_fast {ma:8.1f} us, ratio {ma / mb:.3f} "
              f"(rounds: {' '.join(f'{x / y:.2f}' for x, y in zip(a, b, strict=True))})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
