"""vLLM-compatible prefix-cache block hashes (what vLLM V1 puts in its KV events), for vLLM 0.32.

Reproduces ``vllm/v1/core/kv_cache_utils.py`` for requests without extra keys (no LoRA, no multimodal
inputs, no ``cache_salt``, no prompt embeddings):

    NONE_HASH  = H(seed)                     seed = $PYTHONHASHSEED if the server sets it, else
                                             "vllm-none-hash" (sha256 / sha256_cbor only)
    block_i    = H((block_{i-1} or NONE_HASH, tuple(tokens_i), None))
    event hash = int.from_bytes(block_i, "big") & (2**64 - 1)   (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1)

``H`` is ``--prefix-caching-hash-algo``: ``sha256`` (default: SHA-256 of ``pickle.dumps(x, protocol=5)``),
``sha256_cbor`` (SHA-256 of canonical CBOR), ``xxhash`` / ``xxhash_cbor`` (xxh3-128 of the same; vLLM gives
these a random per-process seed unless PYTHONHASHSEED is set, so they need ``seed``).
CBOR is encoded here for exactly the shapes vLLM hashes (str, bytes, tuple of non-negative ints, None), so
kvgate does not depend on cbor2.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import xxhash

HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
_MASK64 = (1 << 64) - 1
# Prompts are hashed about ``SPAN_TOKENS`` tokens (whole blocks, at least one) at a time through a bounded
# memo per hasher: a repeated prefix (a tenant's system prompt, a conversation's earlier turns) costs one
# pickle of the span's token ids and one look-up per span instead of one SHA-256 (and pickle or CBOR) per
# block. The memo is bounded by an estimate of the bytes it holds, ``SPAN_BYTES`` per hasher whatever the
# block size: an entry counts its key's bytes, ``_SPAN_BLOCK_COST`` per block (a digest and its event
# hash) and ``_SPAN_ENTRY_COST`` (measured with tracemalloc in tests/scheduling/test_blockhash_spans.py).
# A span holds 256 / block size blocks, so that is ~2,500-2,700 spans at block size 16, ~260 at block size 1.
SPAN_TOKENS = 256
SPAN_BYTES = 8 << 20
_SPAN_BLOCK_COST = 120
_SPAN_ENTRY_COST = 384
_PICKLE = pickle.HIGHEST_PROTOCOL


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([(major << 5) | n])
    if n < 1 << 8:
        return bytes([(major << 5) | 24, n])
    if n < 1 << 16:
        return bytes([(major << 5) | 25]) + struct.pack(">H", n)
    if n < 1 << 32:
        return bytes([(major << 5) | 26]) + struct.pack(">I", n)
    return bytes([(major << 5) | 27]) + struct.pack(">Q", n)


def cbor_dumps(obj: Any) -> bytes:
    """Canonical CBOR (as ``cbor2.dumps(obj, canonical=True)``) for the shapes vLLM block hashing uses."""
    if obj is None:
        return b"\xf6"
    if isinstance(obj, bool):
        return b"\xf5" if obj else b"\xf4"
    if isinstance(obj, int):
        if obj < 0:
            return _cbor_head(1, -1 - obj)
        return _cbor_head(0, obj)
    if isinstance(obj, bytes):
        return _cbor_head(2, len(obj)) + obj
    if isinstance(obj, str):
        b = obj.encode("utf-8")
        return _cbor_head(3, len(b)) + b
    if isinstance(obj, tuple | list):
        return _cbor_head(4, len(obj)) + b"".join(cbor_dumps(x) for x in obj)
    raise TypeError(f"cbor_dumps: unsupported {type(obj).__name__}")


# CBOR of every unsigned int below 2**16, made on first use by a ``*_cbor`` hasher (~3 MiB, fixed): a
# block's tokens are then encoded by table look-ups, not the generic walk (about 2x faster on 32k-token
# prompts from a 128k-150k vocabulary: `kvgate bench picker --section keys`).
_UINT_TABLE_SIZE = 1 << 16
_uint_table: list[bytes] = []
_U32 = 1 << 32


def _cbor_uint_table() -> list[bytes]:
    if not _uint_table:
        _uint_table.extend(_cbor_head(0, n) for n in range(_UINT_TABLE_SIZE))
    return _uint_table


def _cbor_block(parent: bytes, tokens: Sequence[int], table: list[bytes]) -> bytes:
    """``cbor_dumps((parent, tuple(tokens), None))``: the shape vLLM hashes for a block without extra keys."""
    n = _UINT_TABLE_SIZE
    body = b"".join(
        [
            table[t] if 0 <= t < n else b"\x1a" + t.to_bytes(4, "big") if n <= t < _U32 else cbor_dumps(t)
            for t in tokens
        ]
    )
    return b"\x83" + _cbor_head(2, len(parent)) + parent + _cbor_head(4, len(tokens)) + body + b"\xf6"


def _pickle(x: Any) -> bytes:
    return pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)


_HASH_FNS: dict[str, Callable[[Any], bytes]] = {
    "sha256": lambda x: hashlib.sha256(_pickle(x)).digest(),
    "sha256_cbor": lambda x: hashlib.sha256(cbor_dumps(x)).digest(),
    "xxhash": lambda x: xxhash.xxh3_128_digest(_pickle(x)),
    "xxhash_cbor": lambda x: xxhash.xxh3_128_digest(cbor_dumps(x)),
}
# The same digests over bytes already CBOR-encoded (``_cbor_block``).
_RAW_CBOR_FNS: dict[str, Callable[[bytes], bytes]] = {
    "sha256_cbor": lambda b: hashlib.sha256(b).digest(),
    "xxhash_cbor": xxhash.xxh3_128_digest,
}


def to_external(block_hash: bytes) -> int:
    """vLLM's ``maybe_convert_block_hash``: the low 64 bits of the digest read big-endian."""
    return int.from_bytes(block_hash, "big") & _MASK64


class VLLMBlockHasher:
    """Computes the block hashes a vLLM server with the given settings assigns to a prompt."""

    def __init__(self, block_size: int, algo: HashAlgo = "sha256", seed: str | None = None) -> None:
        if algo not in _HASH_FNS:
            raise ValueError(f"unsupported prefix_caching_hash_algo {algo!r}")
        if seed is None:
            if algo.startswith("xxhash"):
                raise ValueError(f"{algo} needs the servers' PYTHONHASHSEED (vLLM seeds it randomly)")
            seed = DEFAULT_NONE_HASH_SEED
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.algo = algo
        self._fn = _HASH_FNS[algo]
        self.none_hash = self._fn(seed)
        # Memoized spans (as ``scheduling.prefix``'s): a span's blocks are a function of the parent digest
        # before it and its token ids, keyed by that digest and the pickle of the ids (exact: a dict hit
        # compares the bytes, and pickle tells a bool or an int subclass from an int, as vLLM's hashes do).
        # A tokenizer's ``array('I')`` is keyed as it is (its pickle is its typecode and bytes), not
        # converted to a list on every pick; so a text prompt's spans and a token-id body's (a list) of the
        # same ids are remembered apart, with the same blocks (``_blocks`` reads the same ints from both).
        self.span_blocks = max(1, SPAN_TOKENS // block_size)
        self._spans: OrderedDict[tuple[bytes, bytes], tuple[list[bytes], list[int]]] = OrderedDict()
        self._span_bytes = 0  # the estimate for what ``_spans`` holds now

    def block_hashes(self, token_ids: Sequence[int], max_blocks: int | None = None) -> list[bytes]:
        """Digests of the prompt's full blocks, chained from NONE_HASH."""
        return self._chain(token_ids, max_blocks)[0]

    def external_hashes(self, token_ids: Sequence[int], max_blocks: int | None = None) -> list[int]:
        """The 64-bit ints vLLM's KV events carry for these blocks."""
        return self._chain(token_ids, max_blocks)[1]

    def _chain(self, token_ids: Sequence[int], max_blocks: int | None) -> tuple[list[bytes], list[int]]:
        """(digests, event hashes) of the prompt's full blocks: whole spans of ``span_blocks`` through the
        memo (where the span's ids pickle), the rest block by block."""
        bs = self.block_size
        n = len(token_ids) // bs
        if max_blocks is not None:
            n = min(n, max_blocks)
        digests: list[bytes] = []
        ints: list[int] = []
        parent = self.none_hash
        i = 0
        span = self.span_blocks
        spans, step = self._spans, span * bs
        for start in range(0, n // span * step, step):
            try:
                packed = pickle.dumps(token_ids[start : start + step], _PICKLE)
            except Exception:  # (not picklable: hashed block by block, as before, which raises as before)
                break
            key = (parent, packed)
            got = spans.get(key)
            i += span
            if got is None:
                # Remembered once computed. The spans after it follow a digest the memo did not have (so
                # they are rarely in it): block by block below, unremembered (as ``scheduling.prefix``:
                # one span learnt per request).
                got = self._blocks(token_ids, i - span, i, parent)
                self._remember(key, got)
                digests += got[0]
                ints += got[1]
                parent = got[0][-1]
                break
            spans.move_to_end(key)
            digests += got[0]
            ints += got[1]
            parent = got[0][-1]
        if i < n:
            rest = self._blocks(token_ids, i, n, parent)
            digests += rest[0]
            ints += rest[1]
        return digests, ints

    def _remember(self, key: tuple[bytes, bytes], got: tuple[list[bytes], list[int]]) -> None:
        spans = self._spans
        spans[key] = got
        per_block = _SPAN_BLOCK_COST * len(got[0]) + _SPAN_ENTRY_COST
        held = self._span_bytes + len(key[1]) + per_block
        while held > SPAN_BYTES and spans:
            (_, packed), _ = spans.popitem(last=False)  # the least recently used
            held -= len(packed) + per_block  # (every entry of a hasher has the same number of blocks)
        self._span_bytes = held

    def _blocks(
        self, token_ids: Sequence[int], first: int, end: int, parent: bytes
    ) -> tuple[list[bytes], list[int]]:
        """(digests, event hashes) of blocks ``first`` .. ``end - 1``, chained from ``parent``."""
        bs = self.block_size
        out: list[bytes] = []
        raw = _RAW_CBOR_FNS.get(self.algo)
        if raw is not None:
            table = _cbor_uint_table()
            for i in range(first, end):
                parent = raw(_cbor_block(parent, token_ids[i * bs : (i + 1) * bs], table))
                out.append(parent)
        else:
            fn = self._fn
            for i in range(first, end):
                parent = fn((parent, tuple(token_ids[i * bs : (i + 1) * bs]), None))
                out.append(parent)
        return out, [int.from_bytes(h, "big") & _MASK64 for h in out]


class ChainedVLLMHasher:
    """A ``(parent_int | None, tokens, lora) -> int`` block hasher that yields vLLM's event hashes.

    For engines (the simulator's ``EngineConfig.block_hasher``) that chain on the parent's 64-bit hash:
    vLLM chains on the parent's full digest, so the digests of recent blocks are kept in a bounded LRU keyed
    by their 64-bit form. Hashing a sequence block by block always finds its parent there. LoRA blocks are
    not vLLM-compatible (vLLM adds ``("lora", name)`` extra keys); they get a distinct, kvgate-only chain.
    """

    def __init__(self, algo: HashAlgo = "sha256", seed: str | None = None, capacity: int = 1 << 16) -> None:
        self._h = VLLMBlockHasher(1, algo, seed)
        self._fn = self._h._fn
        self._digests: dict[int, bytes] = {}
        self.capacity = capacity
        self.misses = 0  # parents no longer remembered (the chain then restarts from NONE_HASH)

    def __call__(self, parent: int | None, token_ids: Sequence[int], lora: str | None) -> int:
        if parent is None:
            pdig = self._h.none_hash
        else:
            got = self._digests.get(parent)
            if got is None:
                self.misses += 1
                got = self._h.none_hash
            pdig = got
        extra = (("lora", lora),) if lora else None
        digest = self._fn((pdig, tuple(token_ids), extra))
        ext = to_external(digest)
        d = self._digests
        d.pop(ext, None)
        d[ext] = digest
        if len(d) > self.capacity:
            del d[next(iter(d))]  # dicts keep insertion order: drop the oldest
        return ext
