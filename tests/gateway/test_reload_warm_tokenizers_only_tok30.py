"""A reload's warm step loads the tokenizer files the changed pickers name, and builds nothing (tok30).

Since fixqa29b a reload (and the ``--workers`` supervisor's check) ran ``warm_pickers`` on a thread before
its plan: it parsed and checked every changed picker (``picker_spec``: every plugin built) only so that
the tokenizer files were loaded off the event loop, and the plan then built each picker again. The warm
step now reads the files the picker config names (a plugin's ``tokenizer``, an llm-d
``tokenizersPoolConfig.modelName`` found locally), each file once, and builds no plugin; the plan's build
finds them in ``tokenize.load``'s cache. The first test fails on main 6d96a979 (plugins built on the
thread).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.conftest import make_config
from kvgate.config import picker as picker_config
from kvgate.gateway import reload
from kvgate.gateway.pools import picker_spec
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir

SCORER = "precise-prefix-cache-scorer"


def _copy_tokenizer(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_dir() / "tokenizer.json", d / "tokenizer.json")
    return d / "tokenizer.json"


def _precise(index: str, **params: Any) -> dict[str, Any]:
    return {
        "plugins": [
            {"type": SCORER, "parameters": {"indexName": index, "eventsBind": False, **params}},
            {"type": "queue-scorer"},
        ],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": SCORER}, {"pluginRef": "queue-scorer"}]}
        ],
    }


def _split_layout(index: str, model: str) -> dict[str, Any]:
    """llm-d-router's split precise layout: the tokenizer is the ``token-producer``'s ``modelName``'s."""
    producer = "precise-prefix-cache-producer"
    return {
        "apiVersion": "llm-d.ai/v1alpha1",
        "plugins": [
            {"type": producer, "parameters": {"indexName": index}},
            {"type": "prefix-cache-scorer", "parameters": {"prefixMatchInfoProducerName": producer}},
            {"type": "token-producer", "parameters": {"modelName": model}},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}],
            }
        ],
    }


def _pool(name: str, picker: dict[str, Any] | None) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": name, "endpoints": ["127.0.0.1:1001"], "models": [f"m-{name}"]}
    if picker is None:
        pool["policy"] = "round-robin"
    else:
        pool["endpointPickerConfig"] = picker
    return pool


def _own_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    return hub


def test_the_warm_step_loads_each_named_tokenizer_once_and_builds_no_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _own_hf_cache(tmp_path, monkeypatch)
    named = _copy_tokenizer(tmp_path / f"tok-{uuid.uuid4().hex[:8]}")
    cached = _copy_tokenizer(hub / "models--org--tiny" / "snapshots" / "abc123")
    run = uuid.uuid4().hex[:8]
    produced = _copy_tokenizer(hub / "models--org--other" / "snapshots" / "def456")
    old = make_config([], extra={"pools": [_pool(n, None) for n in "abcd"]})
    new = make_config([], extra={"pools": [
        _pool("a", _precise(f"a-{run}", mode="tokens", tokenizer=str(named.parent))),
        _pool("b", _precise(f"b-{run}", mode="tokens", tokenizer=str(named))),  # (the same file)
        _pool("c", _precise(f"c-{run}", indexerConfig={"tokenizersPoolConfig": {"modelName": "org/tiny"}})),
        _pool("d", _split_layout(f"d-{run}", "org/other")),
    ]})  # fmt: skip
    built: list[str] = []
    real_instantiate = picker_config.instantiate

    def instantiate(spec: Any, *a: Any, **kw: Any) -> Any:
        built.append(spec.type)
        return real_instantiate(spec, *a, **kw)

    monkeypatch.setattr(picker_config, "instantiate", instantiate)
    loads: list[Path] = []
    real_tokenizer = tokenize.PromptTokenizer

    class Counting(real_tokenizer):  # type: ignore[misc, valid-type]
        def __init__(self, path: Path, *a: Any, **kw: Any) -> None:
            loads.append(path)
            super().__init__(path, *a, **kw)

    monkeypatch.setattr(tokenize, "PromptTokenizer", Counting)
    warmed = reload.warm_pickers(old, new)
    assert built == [], "the warm step built the pickers' plugins"
    assert sorted(warmed) == sorted([str(named), str(cached), str(produced)])
    assert sorted(loads) == sorted([named, cached, produced]), "each file loaded once"
    for f in (named, cached, produced):
        assert tokenize.load(f) is tokenize._BY_PATH[str(f)]  # the plan's build finds them loaded
    assert len(loads) == 3
    for pc in new.pools:
        picker_spec(pc)  # (each a valid picker, built after: its files found loaded)
    assert len(loads) == 3
