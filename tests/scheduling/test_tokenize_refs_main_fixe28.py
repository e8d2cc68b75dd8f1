"""``find_for_model`` follows the Hugging Face cache's ``refs/main`` (fixe28): with several revisions
cached, the snapshot ``refs/main`` names, not the lexicographically first hash; without ``refs/main``,
the newest snapshot by mtime. Fails before fixe28 (main 4386ceb7): the first hash, ``aaa...``, won."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvgate.scheduling import tokenize


def _snapshot(repo: Path, commit: str, mtime: float) -> Path:
    d = repo / "snapshots" / commit
    d.mkdir(parents=True)
    f = d / "tokenizer.json"
    f.write_text("{}")
    os.utime(d, (mtime, mtime))
    return f


def test_refs_main_names_the_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models--org--tiny"
    _snapshot(repo, "a" * 40, 2_000_000_000)  # older revision, first by name, newest by mtime
    current = _snapshot(repo, "b" * 40, 1_000_000_000)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)  # (huggingface_hub writes it without a newline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert tokenize.find_for_model("org/tiny") == current


def test_without_refs_main_the_newest_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models--org--tiny"
    _snapshot(repo, "a" * 40, 1_000_000_000)
    newest = _snapshot(repo, "b" * 40, 2_000_000_000)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert tokenize.find_for_model("org/tiny") == newest
    # refs/main naming a snapshot without a tokenizer.json: the newest one that has it.
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40 + "\n")
    assert tokenize.find_for_model("org/tiny") == newest
