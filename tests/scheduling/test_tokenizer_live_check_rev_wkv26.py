"""s26-rev-wkv26 F1: a tokenizer that qualifies for piecewise encoding by the static rule and passes the
load-time probe and the 8 synthetic check texts (fixed vocabulary: _PROBE_WORDS), but whose BPE merges a
common word with the next one's leading space (multi-word tokens, as SuperBPE-style vocabularies have).
Real prompts then get piecewise ids that differ from the engine's (wrong block hashes -> wrong routing)
for good: the live self-check on the first prompts, which went back to whole texts, was removed in
238becfc. On main 6c4d40fa the first prompt's check flips the tokenizer to whole texts (passes)."""

from __future__ import annotations

import json
from array import array

from tokenizers import Tokenizer, models, pre_tokenizers

from kvgate.scheduling import tokenize


def _tokenizer_json(tmp_path):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("t", "h"), ("th", "e"), ("the", "Ġ")]  # "the " is one token: a merge across the space
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    p = tmp_path / "tokenizer.json"
    tok.save(str(p))
    doc = json.loads(p.read_text())
    assert doc["pre_tokenizer"]["type"] == "ByteLevel"
    return p


def _prompt(i: int) -> str:
    # Many cuts fall between "the" and the next word ("the cat": a cut before " cat").
    body = " ".join(f"word{k} the cat" for k in range(200))
    return f"Question {i}: {body}"


def test_piecewise_ids_equal_the_whole_encoding_on_real_prompts(tmp_path):
    path = _tokenizer_json(tmp_path)
    tokenize._BY_PATH.clear()
    t = tokenize.load(path)
    assert t.piecewise  # qualifies, and passed the load-time probe (and, at f76859c4, the 8 check texts)
    whole = Tokenizer.from_file(str(path))
    for i in range(3):
        t.encode(_prompt(i))
        wait = getattr(t, "wait_self_checks", None)
        if wait is not None:  # (main 6c4d40fa: the live check ran on a worker thread)
            wait(30)
    text = _prompt(99)
    assert t.encode(text) == array("I", whole.encode(text).ids), (
        "piecewise encoding differs from the engine's on real prompts and nothing falls back to whole texts"
    )
