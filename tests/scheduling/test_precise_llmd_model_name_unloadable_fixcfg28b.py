"""``indexerConfig.tokenizersPoolConfig.modelName``'s ``tokenizer.json`` found in the local Hugging Face
cache but unloadable (a truncated download, a format this ``tokenizers`` cannot read) reads as
``tokenizer: auto`` with one WARNING naming the key and why, as a model not cached does: a file the user
never named refuses no config (review s28-rev-fixes28a F3). ``[corrupt]`` fails on e8f13766 (the whole
config refused, naming ``plugins[0].parameters``); ``[dangling-symlink]`` (not matched: auto): the
control."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvgate.scheduling import tokenize
from kvgate.scheduling.plugins import precise_prefix

from .llmd_model_name import KEY, built_scorer, llmd_config, own_hf_cache

INDEX = "fixcfg28b-unloadable"
CONFIG = llmd_config(INDEX, "org/broken")


@pytest.fixture(autouse=True)
def _own_index() -> Iterator[None]:
    yield
    precise_prefix._INDEXES.pop(INDEX, None)


@pytest.mark.parametrize("kind", ["corrupt", "dangling-symlink"])
def test_an_unloadable_cached_tokenizer_falls_back_to_auto_naming_model_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    hub = own_hf_cache(tmp_path, monkeypatch)
    snap = hub / "models--org--broken" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    if kind == "corrupt":
        (snap / "tokenizer.json").write_text('{"version": "1.0", "model": ')  # a truncated download
    else:
        (snap / "tokenizer.json").symlink_to(hub / "models--org--broken" / "blobs" / "gone")
    caplog.set_level(logging.WARNING)
    scorer = built_scorer(CONFIG)
    assert scorer._tokenizer.setting == tokenize.AUTO
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(KEY)]
    assert len(said) == 1 and "'org/broken'" in said[0] and "tokenizer: auto" in said[0], said
    if kind == "corrupt":
        assert "cannot be loaded" in said[0], said[0]
