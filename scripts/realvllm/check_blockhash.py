"""Compare kvgate's vLLM block hashing with the installed vLLM's own functions, for every algorithm.

Run under the vLLM venv's python (it imports vllm and cbor2), with kvgate's ``src`` on the path:
    PYTHONHASHSEED=42 KVGATE_SRC=src $VLLM_VENV/bin/python scripts/realvllm/check_blockhash.py
Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.environ.get("KVGATE_SRC", str(Path(__file__).resolve().parents[2] / "src")))

import cbor2
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kcu

from kvgate.scheduling.blockhash import ChainedVLLMHasher, VLLMBlockHasher, cbor_dumps


def main() -> int:
    rng = random.Random(1)
    for algo in ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"):
        fn = get_hash_fn_by_name(algo)
        kcu.init_none_hash(fn)
        seed = kcu.get_none_hash_seed()
        for bs in (16, 128):
            ours = VLLMBlockHasher(bs, algo, seed=seed)
            toks = [rng.randrange(0, 200_000) for _ in range(bs * 5 + 7)]
            ref, parent = [], None
            for i in range(len(toks) // bs):
                parent = kcu.hash_block_tokens(fn, parent, toks[i * bs : (i + 1) * bs], None)
                ref.append(parent)
            if ours.block_hashes(toks) != ref:
                print(f"MISMATCH digests algo={algo} block={bs}")
                return 1
            if ours.external_hashes(toks) != [kcu.maybe_convert_block_hash(h) for h in ref]:
                print(f"MISMATCH event ints algo={algo} block={bs}")
                return 1
            chained = ChainedVLLMHasher(algo, seed=seed)
            p2 = None
            for i in range(len(ref)):
                p2 = chained(p2, toks[i * bs : (i + 1) * bs], None)
                if p2 != kcu.maybe_convert_block_hash(ref[i]):
                    print(f"MISMATCH chained algo={algo} block={bs}")
                    return 1
        print(f"{algo}: kvgate == vLLM {kcu.__name__} (seed {seed!r})")
    for obj in [(b"x" * 32, tuple(range(300)), None), "vllm-none-hash", (1, 2**40, 300, 70000), -5]:
        if cbor2.dumps(obj, canonical=True) != cbor_dumps(obj):
            print(f"MISMATCH cbor {obj!r}")
            return 1
    print("cbor: kvgate == cbor2 canonical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
