r"""CPU of ``BodyUsageScanner`` (the usage of a relayed big JSON answer, read as it passes): this tree
against another.

    PYTHONPATH=src python scripts/usage_scanner_cost.py --base-src <other checkout>/src [--repeats 3]

Four ~7 MiB answers, usage last (the scanner reads all of them): ``prompt_logprobs`` (vLLM's shape, a
short string every ~14 bytes, each token's text ``"usage"``), ``embeddings`` (numbers), ``text`` (one long
completion with a newline escape every 63 bytes), ``quotes`` (one long text with an escaped quote every
18 bytes: the new scanner's worst kind), ``escapes`` (``prompt_logprobs`` whose tokens' text holds
``\u00`` escapes, as any encoder writes control characters and ``json.dumps`` Latin-1 letters: until
gw20 a ``\u00`` sent a pass to the spelled-key search, review s19-gw L4), each fed in 64 KiB and 8 KiB
pieces. Each repeat runs the base tree, then this one, each in a fresh process; a process's figure is its
fastest of ``--rounds`` runs (CPU time, ``process_time``), in ms per MiB. Prints every
figure and the medians."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _costkit import fastest
from tree_runs import add_rounds_repeats, alternate, run_in_tree

PIECES = (65536, 8192)


def _bodies() -> dict[str, bytes]:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    token = {"123": {"logprob": -1.5, "rank": 1, "decoded_token": "usage"}}
    escaped = {"123": {"logprob": -1.5, "rank": 1, "decoded_token": "caf\u00e9 \x1b[0m"}}
    line = "lorem ipsum dolor sit amet, consectetur adipiscing elit sed do\n"
    answers: dict[str, Any] = {
        "prompt_logprobs": {"prompt_logprobs": [None] + [token] * 120_000, "usage": usage},
        "embeddings": {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.0123456789] * 1024} for i in range(500)
            ],
            "usage": usage,
        },
        "text": {"choices": [{"text": line * 110_000}], "usage": usage},
        "quotes": {"choices": [{"text": 'lorem ipsum {dolor} [sit] amet "q" ' * 200_000}], "usage": usage},
        "escapes": {"prompt_logprobs": [None] + [escaped] * 100_000, "usage": usage},
    }
    return {name: json.dumps(answer).encode() for name, answer in answers.items()}


def _measure(rounds: int) -> dict[str, Any]:
    from kvgate.openai.usage import BodyUsageScanner

    out: dict[str, Any] = {}
    for name, body in _bodies().items():
        for piece in PIECES:
            chunks = [body[i : i + piece] for i in range(0, len(body), piece)]

            def read(chunks: list[bytes] = chunks) -> Any:
                scan = BodyUsageScanner()
                for c in chunks:
                    scan.feed(c)
                return scan.usage()

            best, usage = fastest(rounds, read)
            assert usage is not None and usage.prompt_tokens == 7, (name, usage)
            out[f"{name}/{piece}"] = best / len(body) * 2**20 * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-src", type=Path, help="the other tree's src/ (the baseline)")
    add_rounds_repeats(p, "runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_measure(args.rounds)))
        return
    if args.base_src is None:
        p.error("--base-src is required")
    figures: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    for rep, tree, got in alternate(
        args.base_src, args.repeats,
        lambda src: run_in_tree(__file__, src, ["--child", "--rounds", str(args.rounds)], 600),
    ):  # fmt: skip
        print(f"repeat {rep} {tree:4s} " + "  ".join(f"{k} {v:.2f}" for k, v in got.items()))
        for k, v in got.items():
            figures[tree].setdefault(k, []).append(v)
    print("\nmedian ms/MiB (base -> this):")
    for k in figures["base"]:
        b, t = statistics.median(figures["base"][k]), statistics.median(figures["this"][k])
        print(f"  {k:22s} {b:6.2f} -> {t:6.2f}")


if __name__ == "__main__":
    main()
