"""``kvgate serve`` looks up its listed models' ``tokenizer: auto`` tokenizers before it says ready (tok30).

Since ``auto``'s look-up left the event loop (a loader thread at a model's first request), a fresh
gateway's first requests for a model were scored with the character estimate until the load was done.
The models a pool lists are known at start-up: ``build_pools`` (``kvgate serve``'s, and each ``--workers``
worker's) looks them up and loads their tokenizers there, for pools whose picker reads ``auto``, so the
first request finds the tokenizer loaded. Not for a pool whose picker reads none, nor in a ``--workers``
supervisor (``preload=False``: it serves no request); ``kvgate epp`` alike. Fail on main f6c2bf6a (no
look-up at start-up); the EPP's on a171b317.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.conftest import make_config
from kvgate.gateway.cli import build_pools
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir


def _model_dir(d: Path) -> str:
    """A local model directory (vLLM ``--model /path``: ``auto`` finds its ``tokenizer.json``)."""
    d.mkdir(parents=True)
    shutil.copy(tokenizer_dir() / "tokenizer.json", d / "tokenizer.json")
    return str(d)


def _pools(auto: str, plain: str) -> list[dict[str, Any]]:
    return [
        {"name": "auto", "endpoints": ["127.0.0.1:1001"], "models": [auto], "policy": "kvgate"},
        {"name": "plain", "endpoints": ["127.0.0.1:1002"], "models": [plain], "policy": "round-robin"},
    ]


def test_listed_models_tokenizers_load_before_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auto, plain = _model_dir(tmp_path / "a"), _model_dir(tmp_path / "b")
    cfg = make_config([], extra={"pools": _pools(auto, plain)})
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this test's dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    build_pools(cfg)
    got = tokenize._BY_MODEL.get(auto)
    assert isinstance(got, tokenize.PromptTokenizer), "the listed model's tokenizer was not loaded"
    assert plain not in tokenize._BY_MODEL  # (its picker reads no tokenizer)


def test_a_supervisor_build_preloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auto, plain = _model_dir(tmp_path / "a"), _model_dir(tmp_path / "b")
    cfg = make_config([], extra={"pools": _pools(auto, plain)})
    tokenize.wait_loads(60)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    build_pools(cfg, preload=False)
    assert tokenize._BY_MODEL == {}


def test_the_epp_loads_its_pools_models_tokenizers_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kvgate epp`` (its default ``kvgate`` policy reads ``auto``) alike, before it serves."""
    import logging

    import kvgate.extproc.cli as epp_cli

    model = _model_dir(tmp_path / "m")
    tokenize.wait_loads(60)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    seen: list[object] = []

    async def serve(*_a: Any, **_k: Any) -> None:  # (what start-up left loaded when serving begins)
        seen.append(tokenize._BY_MODEL.get(model))

    monkeypatch.setattr(epp_cli, "_serve", serve)
    monkeypatch.setattr(logging, "basicConfig", lambda **_k: None)
    assert epp_cli.main(["--endpoints", "127.0.0.1:1", "--model", model]) == 0
    assert len(seen) == 1 and isinstance(seen[0], tokenize.PromptTokenizer), seen
