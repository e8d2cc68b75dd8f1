"""The simulator's tokenizer: a reproducible HF tokenizer directory with ~4 characters per token."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.bench.workloads import random_ids, render
from kvgate.sim.tokenizer import Tok, get_tokenizer, tokenizer_dir, write_tokenizer_dir

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def _digests(path: Path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in FILES}


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    write_tokenizer_dir(tmp_path / "a")
    write_tokenizer_dir(tmp_path / "b")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    # The cached directory (made by the session fixture) is the same bytes too.
    assert _digests(tokenizer_dir()) == _digests(tmp_path / "a")


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVGATE_CACHE_DIR", str(tmp_path))
    d = tokenizer_dir()
    assert d.parent == tmp_path
    assert all((d / f).is_file() for f in FILES)
    assert tokenizer_dir() == d  # second call reuses it


def test_deterministic_and_about_four_chars_per_token() -> None:
    tok = get_tokenizer()
    text = render(random_ids(random.Random(7), 2000))
    ids = tok.encode(text)
    assert ids == get_tokenizer().encode(text) == Tok(tokenizer_dir()).encode(text)
    # Every benchmark word is one token: exactly one id per word, ~4 chars each.
    assert len(ids) == 2000
    assert 3.5 <= len(text) / len(ids) <= 4.5
    assert tok.decode(ids) == text


def test_arbitrary_text_round_trips() -> None:
    tok = get_tokenizer()
    for text in ["Hello, World! 123", "ünïcödé ✓ 日本", "tabs\tand\nnewlines  ", "The quick brown fox."]:
        assert tok.decode(tok.encode(text)) == text
    english = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun"
    assert 2.5 <= len(english) / len(tok.encode(english)) <= 4.5


def test_output_tokens_are_single_token_words() -> None:
    tok = get_tokenizer()
    for engine_token in (0, 1, 999, 128255, 10**9):
        tid = tok.output_token(engine_token)
        text = tok.token_text(tid)
        assert len(text) == 4 and text[0] == " "
        assert tok.encode(text) == [tid]


def test_chat_template() -> None:
    tok = get_tokenizer()
    msgs: list[dict[str, object]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    assert tok.apply_chat_template(msgs) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    ids = tok.encode(tok.apply_chat_template(msgs))
    specials = {tok._tok.token_to_id(s) for s in ("<|system|>", "<|user|>", "<|assistant|>")}
    assert specials <= set(ids)  # the role markers are single special tokens


def test_transformers_autotokenizer_loads_it() -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)
    tok = get_tokenizer()
    text = render(random_ids(random.Random(3), 50))
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    msgs = [{"role": "user", "content": "abc def"}]
    assert hf.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    ) == tok.apply_chat_template(msgs)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_round_trips(text: str) -> None:
    tok = get_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=26**3 - 1), min_size=1, max_size=300))
def test_rendered_words_take_the_fast_path_with_the_bpe_s_ids(ids: list[int]) -> None:
    tok = get_tokenizer()
    text = render(ids)
    bpe = tok._tok.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == bpe and len(bpe) == len(ids)
    # Near misses go through the BPE: a double space, a leading space, a capital, a newline.
    for other in ("  ".join(text.split(" ")), " " + text, text.capitalize(), text.replace(" ", "\n")):
        assert tok.encode(other) == tok._tok.encode(other, add_special_tokens=False).ids
