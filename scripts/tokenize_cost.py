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

``--batch`` adds a third figure, per prompt: its pieces one ``encode_batch_fast([piece])`` call each (what
``tokenize`` does) against one ``encode_batch_fast(pieces)`` call for all of them (batching a request's
missed pieces), the latter both on the library's thread pool and with ``TOKENIZERS_PARALLELISM=false``
(serial, in the calling thread; the library reads the variable at each call). ``process_time`` counts
every thread of the process, so the thread pool's CPU is in it, not just the wall time it saves.
``--last N`` times only each prompt's last N pieces there (a request whose shared prefix is cached).

``--threads N`` instead runs, in two fresh processes (``TOKENIZERS_PARALLELISM`` unset, then ``false``),
N prompt-shaped texts (8 tenants' ~30-line system texts, each with its own question line: the request
path's shape) through ``PromptTokenizer.encode`` after ``warm`` and the live checks, and prints each of
the process's threads' run and wait (``/proc/self/task/*/schedstat``) over those encodes: whether the
library's thread pool runs any of a request's ``encode_batch_fast([piece])`` (issue #16, tok28).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kvgate import lifeline
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
    ap.add_argument("--batch", action="store_true", help="also: one call per prompt's pieces (see above)")
    ap.add_argument("--last", type=int, default=0, help="with --batch: only each prompt's last N pieces")
    ap.add_argument("--threads", type=int, default=0, help="per-thread run/wait over N encodes (see above)")
    ap.add_argument("--threads-child", action="store_true", help=argparse.SUPPRESS)
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
    if args.threads:
        return threads(f, args.threads, args.threads_child)
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
    if args.batch:
        batch_cost(tok, prompts, args.rounds, args.last)
    return 0


def batch_cost(tok: Any, prompts: list[str], rounds: int, last: int) -> None:
    """Per prompt: a call per piece against one call for all its pieces, pooled and serial."""
    groups = [list(tokenize._cut_pieces(t)) for t in prompts]
    if last > 0:
        groups = [g[-last:] for g in groups]
    for g in groups:
        assert [e.ids for e in tok.encode_batch_fast(g, add_special_tokens=False)] == [
            tokenize._ids(tok, p, False) for p in g
        ]
    saved = os.environ.get("TOKENIZERS_PARALLELISM")

    def run(kind: str) -> float:
        if kind == "one call for all, serial":
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        elif saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
        t0 = time.process_time()
        if kind == "a call per piece":
            for g in groups:
                for p in g:
                    tokenize._ids(tok, p, False)
        else:
            for g in groups:
                tok.encode_batch_fast(g, add_special_tokens=False)
        return (time.process_time() - t0) / len(groups) * 1e6

    kinds = ("a call per piece", "one call for all, pooled", "one call for all, serial")
    got: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for r in range(rounds):
            for k in kinds if r % 2 == 0 else kinds[::-1]:
                got[k].append(run(k))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    base = statistics.median(got[kinds[0]])
    print(f"per prompt, {sum(map(len, groups)) / len(groups):.1f} pieces each, TOKENIZERS_PARALLELISM="
          f"{saved}:")  # fmt: skip
    for k in kinds:
        m = statistics.median(got[k])
        print(f"  {k:26s} {m:8.1f} us CPU, ratio {m / base:.3f} (rounds: "
              f"{' '.join(f'{x / y:.2f}' for x, y in zip(got[k], got[kinds[0]], strict=True))})")  # fmt: skip


def _schedstat() -> dict[int, tuple[int, int, int]]:
    """Per thread of this process: (ns on a CPU, ns runnable but waiting for one, times it got a CPU)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            run, wait, slices = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):  # (a thread that ended)
            continue
        out[int(tid)] = (int(run), int(wait), int(slices))
    return out


def threads(f: Path, n: int, child: bool) -> int:
    if not child:
        import subprocess

        print(f"tokenizer {f}; {n} encodes per process; loadavg {Path('/proc/loadavg').read_text().strip()}")
        for value in (None, "false"):
            env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
            if value is not None:
                env["TOKENIZERS_PARALLELISM"] = value
            argv = [sys.executable, __file__, "--tokenizer", str(f), "--threads", str(n), "--threads-child"]
            subprocess.run(lifeline.die_with_parent_argv(argv), env=env, check=True)
        print(f"loadavg {Path('/proc/loadavg').read_text().strip()}")
        return 0
    import threading

    rng = random.Random(28)
    line = lambda k: " ".join(rng.choice(WORDS[:-2]) for _ in range(k))  # noqa: E731
    systems = ["\n".join(line(12) for _ in range(30)) for _ in range(8)]
    texts = [f"{systems[i % 8]}\nUser {i}: {line(20)}" for i in range(n + tokenize.LIVE_CHECKS)]
    pt = tokenize.PromptTokenizer(f)
    tokenize.warm()
    for t in texts[: tokenize.LIVE_CHECKS]:  # the live checks' prompts: their thread's work is done before
        pt.encode(t)
    pt.wait_self_checks(60)
    names = {t.native_id: t.name for t in threading.enumerate()}
    before = _schedstat()
    t0 = time.perf_counter()
    for t in texts[tokenize.LIVE_CHECKS :]:
        pt.encode(t)
    wall = time.perf_counter() - t0
    after = _schedstat()
    print(f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}: {len(after)} threads; "
          f"per encode {wall / n * 1e6:.1f} us wall")  # fmt: skip
    for tid, (run, wait, slices) in sorted(after.items()):
        r0, w0, s0 = before.get(tid, (0, 0, 0))
        name = names.get(tid, "(not Python's: the library's pool)")
        print(f"  {tid:>8} {name:34s} per encode: run {(run - r0) / n / 1e3:7.2f} us, wait "
              f"{(wait - w0) / n / 1e3:7.2f} us; in all: run {(run - r0) / 1e6:7.2f} ms, on a CPU "
              f"{slices - s0} times")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
