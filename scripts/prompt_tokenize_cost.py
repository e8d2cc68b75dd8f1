"""CPU of tokenizing requests' prompts for the precise profile (``PromptTokenizer.encode``): this tree
against another, on the request shapes prefix routing is for (issue #16).

    PYTHONPATH=src python scripts/prompt_tokenize_cost.py --base-src <other checkout>/src \\
        [--tokenizer PATH] [--rounds 5] [--repeats 3]

Workloads, seeded, each from an empty tokenizer cache (a fresh ``PromptTokenizer``, no self-checks):
``vs_sglang``: ``scripts/realvllm/vs_sglang.py``'s passes (8 tenants x 5, ~400-word system text, then
``\\nUser i: `` and 30 words; seeds 1-5), split into a tenant's first request (``cold``: nothing cached)
and the later ones (``repeat``: the system text's pieces cached); ``chat``: growing conversations
rendered by ``render_chat`` (a system message, then user and assistant turns; each request the whole
conversation so far, as a chat client sends it); ``code``: the first 6,000 characters of this tree's
``src/kvgate`` modules (cold, every prompt its own). ``--tokenizer``: a ``tokenizer.json`` or a directory
holding one (default: the real-vLLM runs' model, ``~/.cache/kvgate/tiny-llama``, else the simulator's).

Each repeat runs the base tree, then this tree, in fresh processes; per workload, ``--rounds`` rounds,
CPU time of the calling thread (``thread_time``: the event loop's) per prompt, a process's figure its
fastest round. Both trees must return the same ids (a digest of every prompt's ids is compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tree_runs import HERE_SRC, add_rounds_repeats, compare_runs

HERE = Path(__file__).resolve().parent


def _tokenizer(arg: str | None) -> str:
    if arg:
        return arg
    tiny = Path.home() / ".cache" / "kvgate" / "tiny-llama"
    if (tiny / "tokenizer.json").is_file():
        return str(tiny)
    import tempfile

    sys.path.insert(0, str(HERE_SRC))
    from kvgate.sim.tokenizer import write_tokenizer_dir

    d = Path(tempfile.mkdtemp(prefix="kvgate-tok-")) / "t"
    write_tokenizer_dir(d)
    return str(d)


def _workloads() -> dict[str, list[str]]:
    import random

    from kvgate.bench.workloads import tenant_prompts
    from kvgate.openai.request import render_chat

    out: dict[str, list[str]] = {"vs_sglang": []}
    for seed in range(1, 6):
        out["vs_sglang"] += tenant_prompts([t for t in range(8) for _ in range(5)], 8, 400, seed)
    rng = random.Random(7)
    words = ["the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant",
             "answer", "question", "42,", "it's"]  # fmt: skip

    def said(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randrange(lo, hi)))

    chats = []
    for _ in range(12):
        msgs = [{"role": "system", "content": said(30, 300)}]
        for _ in range(6):
            msgs.append({"role": "user", "content": said(5, 80)})
            chats.append(render_chat(msgs))
            msgs.append({"role": "assistant", "content": said(20, 200)})
    out["chat"] = chats
    src = sorted((HERE_SRC / "kvgate").rglob("*.py"))[:60]
    out["code"] = [f.read_text()[:6000] for f in src]
    return out


def _measure(tokenizer: str, rounds: int) -> dict[str, Any]:
    import hashlib
    import time

    from kvgate.scheduling import tokenize

    tokenize.SELF_CHECKS = 0  # (the checks run at load, not on the request path)
    tokenize.LIVE_CHECKS = 0  # (nor the first prompts' whole encodings: another thread's CPU)
    work = _workloads()
    result: dict[str, Any] = {}
    digest = hashlib.sha256()
    for name, texts in work.items():
        systems = [t.split("\nUser ", 1)[0] for t in texts] if name == "vs_sglang" else None
        best: dict[str, float] = {}
        for k in range(rounds):
            tok = tokenize.PromptTokenizer(tokenize.tokenizer_file(tokenizer))
            spent: dict[str, list[float]] = {}
            seen: set[str] = set()
            for i, text in enumerate(texts):
                cell = name
                if systems is not None:
                    cell = f"{name} {'repeat' if systems[i] in seen else 'cold'}"
                    seen.add(systems[i])
                t0 = time.thread_time()
                ids = tok.encode(text)
                spent.setdefault(cell, []).append(time.thread_time() - t0)
                if k == 0:
                    digest.update(ids.tobytes())
            for cell, xs in spent.items():
                best[cell] = min(best.get(cell, float("inf")), 1e6 * sum(xs) / len(xs))
            if systems is not None:
                allx = [x for xs in spent.values() for x in xs]
                best[name] = min(best.get(name, float("inf")), 1e6 * sum(allx) / len(allx))
        result.update(best)
    result["digest"] = digest.hexdigest()[:16]
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        print(json.dumps(_measure(sys.argv[2], int(sys.argv[3]))))
        return 0

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", type=Path, required=True, help="the other tree's src/ (the baseline)")
    p.add_argument("--tokenizer", default=None)
    add_rounds_repeats(p)
    args = p.parse_args()
    tok = _tokenizer(args.tokenizer)
    print(f"tokenizer {tok}", flush=True)
    argv = ["--_measure", tok, str(args.rounds)]
    return compare_runs(
        __file__, argv, 900, args.base_src, args.repeats, unit="prompt", places=1, width=18, what="ids"
    )


if __name__ == "__main__":
    sys.exit(main())
