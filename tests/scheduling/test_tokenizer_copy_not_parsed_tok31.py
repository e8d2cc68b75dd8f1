"""A tokenizer file with the bytes of one loaded already is not parsed again (issue #16, tok31).

A reload that names a tokenizer at a new path (a new Hugging Face snapshot whose ``tokenizer.json`` is the
same blob, a copy in a new mount, a file rewritten unchanged) parsed it again: ``Tokenizer.from_file`` holds
the GIL, so every request of the process waited (the reload's longest event-loop lateness while a stream is
served, median of 8: 85 ms on main 691110b3, 9 ms with this change, 1.1 MB test tokenizer, load ~12 -> 6:
``scripts/reload_loop_lag.py --reloads 4 --rounds 2 --src <main's src> --src src``). ``tokenize.load`` now
hashes the bytes it reads and takes a loaded tokenizer of the same bytes (its parsed tokenizer and load-time
verdict), with caches of its own. Fails on main 691110b3 (the copy was parsed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("from_file", "from_buffer", "from_str"):
        real = getattr(Tokenizer, name)

        def counting(arg: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(arg)

        monkeypatch.setattr(Tokenizer, name, staticmethod(counting))
    return calls


def test_a_copy_of_a_loaded_tokenizer_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenize, "_BY_PATH", {})
    first, copy, other = (tmp_path / n / "tokenizer.json" for n in ("a", "b", "c"))
    for f in (first, copy, other):
        f.parent.mkdir()
        shutil.copy(tokenizer_dir() / "tokenizer.json", f)
    other.write_text(other.read_text() + " ")  # other bytes (the same tokenizer)
    calls = _parses(monkeypatch)
    a = tokenize.load(first)
    assert len(calls) == 1
    b = tokenize.load(copy)
    assert len(calls) == 1, "the copy was parsed again"
    assert b is not a and b._tok is a._tok  # its own caches and file stamp, the parsed tokenizer shared
    assert b.piecewise == a.piecewise and b.self_checks == a.self_checks
    text = "You are a careful assistant.\n" * 30 + "User: hello there, what now?"
    assert b.encode(text) == a.encode(text)
    tokenize.load(other)
    assert len(calls) == 2, "other bytes are parsed"
