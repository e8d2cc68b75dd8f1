"""Prompt text -> the served model's token ids, for the prefix scorers.

With the engine's own tokenizer, a prefix block is exactly ``block_size`` of the engine's tokens, so the
approximate index's blocks line up with the engine's cache blocks (a character estimate drifts by the
model's characters-per-token) and the precise scorer can hash text prompts at all.

``tokenizer`` parameter values: a ``tokenizer.json`` or a directory holding one; ``auto``: per request
model, the model name itself when it is a local directory (vLLM serves ``--model /path`` under that
name), else the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``,
``models--<org>--<name>/snapshots/*/tokenizer.json``). Nothing found: the caller falls back to its
estimate. Nothing is downloaded.

Encodings are cached (bounded LRU keyed by the text's 64-bit hash) because a request is scored by
several plugins and retried pickers see the same prompt again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import xxhash

AUTO = "auto"
CACHE_ENTRIES = 512  # encoded prompts kept per tokenizer
MAX_CHARS = 1 << 20  # longer prompts are tokenized only up to here: the prefix is what matters

_BY_PATH: dict[str, PromptTokenizer] = {}
_BY_MODEL: dict[str, PromptTokenizer | None] = {}


class PromptTokenizer:
    """One ``tokenizers.Tokenizer`` plus a bounded cache of encoded prompts."""

    def __init__(self, path: Path, capacity: int = CACHE_ENTRIES) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self._tok: Any = Tokenizer.from_file(str(path))
        self._cache: OrderedDict[int, list[int]] = OrderedDict()
        self._capacity = capacity

    def encode(self, text: str) -> list[int]:
        text = text[:MAX_CHARS]
        key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            return ids
        # Special tokens as vLLM adds them to a completion prompt (a BOS), so blocks equal the engine's.
        ids = list(self._tok.encode(text).ids)
        self._cache[key] = ids
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return ids


def tokenizer_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p / "tokenizer.json" if p.is_dir() else p


def load(path: str | Path) -> PromptTokenizer:
    """The (shared) tokenizer at ``path``; ``OSError``/``ValueError`` if unreadable."""
    f = tokenizer_file(path)
    got = _BY_PATH.get(str(f))
    if got is None:
        if not f.is_file():
            raise OSError(f"no tokenizer at {f}")
        try:
            got = PromptTokenizer(f)
        except Exception as e:  # tokenizers raises its own Exception type on a bad file
            raise ValueError(f"cannot load tokenizer {f}: {e}") from e
        _BY_PATH[str(f)] = got
    return got


def _hf_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_for_model(model: str) -> Path | None:
    """A local ``tokenizer.json`` for ``model`` (see the module doc), or None."""
    if not model:
        return None
    local = Path(model).expanduser()
    if local.is_absolute() and (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    repo = "models--" + model.replace("/", "--")
    for d in _hf_cache_dirs():
        snaps = d / repo / "snapshots"
        if snaps.is_dir():
            for f in sorted(snaps.glob("*/tokenizer.json")):
                return f
    return None


def for_model(model: str) -> PromptTokenizer | None:
    """The served model's tokenizer if it is available locally (looked up once per model name)."""
    if model in _BY_MODEL:
        return _BY_MODEL[model]
    f = find_for_model(model)
    got: PromptTokenizer | None = None
    if f is not None:
        try:
            got = load(f)
        except (OSError, ValueError):
            got = None
    if len(_BY_MODEL) < 4096:  # bounded: model names come from requests
        _BY_MODEL[model] = got
    return got


class TokenizerSource:
    """A scorer's ``tokenizer`` setting: a fixed path, ``auto`` (per model), or none."""

    def __init__(self, setting: str | None) -> None:
        self.setting = setting or None
        self._fixed = load(setting) if setting and setting != AUTO else None

    def get(self, model: str) -> PromptTokenizer | None:
        if self._fixed is not None:
            return self._fixed
        if self.setting == AUTO:
            return for_model(model)
        return None

    def __bool__(self) -> bool:
        return self.setting is not None
