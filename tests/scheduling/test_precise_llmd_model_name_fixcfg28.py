"""llm-d's ``indexerConfig.tokenizersPoolConfig.modelName`` names the model whose tokenizer the precise
scorer uses, whatever the request's model name (a served-model-name alias, an InferenceModel name, a
LoRA): kvgate finds that model's ``tokenizer.json`` in the local Hugging Face cache at load, and only when
it is not there reads it as ``tokenizer: auto`` (review s28-rev-cfg28 F4, fixcfg28). The first test fails
on main ca67a4cb: modelName was always ``auto``, the request's model name looked up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvgate.scheduling import tokenize
from kvgate.scheduling.plugins import precise_prefix

from .llmd_model_name import KEY, built_scorer, llmd_config, own_hf_cache

INDEX = "revcfg28"
CONFIG = llmd_config(INDEX, "org/tiny")


@pytest.fixture(autouse=True)
def _own_index() -> Iterator[None]:
    yield
    precise_prefix._INDEXES.pop(INDEX, None)


def _save_tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("abcdefgh")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))


def test_the_named_models_tokenizer_serves_an_aliased_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = own_hf_cache(tmp_path, monkeypatch)
    _save_tokenizer(hub / "models--org--tiny" / "snapshots" / "abc")
    scorer = built_scorer(CONFIG)
    assert scorer._tokenizer.get("org/tiny") is not None  # (the control: the file is found)
    # The requests name the model "tiny" (vLLM --served-model-name tiny): llm-d tokenizes with org/tiny's.
    assert scorer._tokenizer.get("tiny") is not None


def test_a_model_not_in_the_cache_falls_back_to_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    own_hf_cache(tmp_path, monkeypatch)
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    scorer = built_scorer(CONFIG)
    assert scorer._tokenizer.setting == tokenize.AUTO
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{KEY}: 'org/tiny'") for m in said), said
