"""The setup shared by the ``tokenizersPoolConfig.modelName`` tests (fixcfg28, fixcfg28b; folded by fixe28):
an llm-d precise scorer config naming a model, a Hugging Face cache of the test's own, the built scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling import tokenize
from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer

KEY = "plugins[0].parameters.indexerConfig.tokenizersPoolConfig.modelName"


def llmd_config(index: str, model: str) -> str:
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    indexName: {index}
    indexerConfig:
      tokenizersPoolConfig:
        modelName: {model}
"""


def own_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Hugging Face cache only at ``tmp_path/hub`` (returned; not made), the model lookups forgotten."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    return hub


def built_scorer(config: str) -> PrecisePrefixCacheScorer:
    store = EndpointStore([make_endpoint("10.0.0.5:8000")])
    director = build_director(load_config(config), store, clock=lambda: 0.0, seed=0)
    (scorer,) = (p for p in director.handle.plugins.values() if isinstance(p, PrecisePrefixCacheScorer))
    return scorer
