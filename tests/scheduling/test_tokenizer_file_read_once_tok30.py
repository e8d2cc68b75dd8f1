"""A tokenizer's load reads its file once: the Rust parse (tok30, issue #16).

``PromptTokenizer`` decided whether piecewise encoding is exact from the file's normalizer, pre-tokenizer
and added tokens, read by parsing the whole ``tokenizer.json`` again with Python's ``json`` (~50 ms of the
GIL for the 1.1 MB test tokenizer, in a reload's load beside the ~145 ms ``Tokenizer.from_file``). It now
reads them from the loaded tokenizer (each component's own serialization). Here the file cannot be read
a second time: before (main 6d96a979) the check gave up and the tokenizer tokenized whole texts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir


def test_the_load_reads_the_file_once_and_still_tokenizes_piecewise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "tokenizer.json"
    shutil.copy(tokenizer_dir() / "tokenizer.json", f)
    reads: list[Path] = []
    real_read_text = Path.read_text

    def read_text(self: Path, *a: object, **kw: object) -> str:
        if self == f:
            reads.append(self)
            raise OSError("read once: by tokenizers' own parse")
        return real_read_text(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    tok = tokenize.PromptTokenizer(f)
    assert reads == []
    assert tok.piecewise and tok.self_checks == tokenize.SELF_CHECKS
