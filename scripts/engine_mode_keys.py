"""The precise scorer's default (``engine``) mode on the pick's path: a prompt's ids and vLLM's block
hashes (``PromptTokenizer.encode`` + ``VLLMBlockHasher.external_hashes``), per prompt, in this process.

    PYTHONPATH=src python scripts/engine_mode_keys.py

The tiny Llama's tokenizer (``kvgate.bench.gateway_ttft.DEFAULT_TOKENIZER``), ``VLLMBlockHasher(16,
"sha256")``; the tokenizer's pieces and the span memo warmed on the 8 tenant texts' first requests
(``gateway_ttft.workload(16)``), then the 128 prompts ``gateway_ttft.stages`` times
(``workload(144)[16:]``), three passes: the first encodes each prompt (its unique pieces tokenized), the
next two find the encoding cached and the spans in the memo (a retry, a prompt seen again). Prints each
pass's median per prompt. Run it on two trees alternately to compare them (review s15-rv L1's bench).
"""

from __future__ import annotations

import statistics
import time

from kvgate.bench import gateway_ttft as g
from kvgate.scheduling import tokenize
from kvgate.scheduling.blockhash import VLLMBlockHasher
from kvgate.scheduling.plugins.precise_prefix import DEFAULT_MAX_BLOCKS


def main() -> int:
    prompts = g.workload(144)[16:]
    tok = tokenize.PromptTokenizer(tokenize.tokenizer_file(str(g.DEFAULT_TOKENIZER)))
    hasher = VLLMBlockHasher(16, "sha256")
    for p in g.workload(16):  # the tenant texts' pieces and spans
        hasher.external_hashes(tok.encode(p), DEFAULT_MAX_BLOCKS)

    def run(label: str) -> None:
        ts = []
        ids = None
        for p in prompts:
            t = time.perf_counter_ns()
            ids = tok.encode(p)
            hasher.external_hashes(ids, DEFAULT_MAX_BLOCKS)
            ts.append(time.perf_counter_ns() - t)
        kind = f"{type(ids).__name__} {len(ids)} ids" if ids is not None else ""
        print(f"  {label}: median {statistics.median(ts) / 1e3:.1f} us  (n={len(ts)}, {kind})")

    run("encode + engine keys, first time")
    run("encode (cached) + engine keys (memo)")
    run("encode (cached) + engine keys (memo), again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
