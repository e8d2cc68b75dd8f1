"""Prompt tokenization for the prefix scorers and the deterministic chat rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.datalayer.store import make_endpoint
from kvgate.openai.request import CHAT, parse_body, render_chat
from kvgate.scheduling import tokenize
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest


def _save_tokenizer(d: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["a", "b", "c", "d", "e", "f", "g", "h"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    return d


def _scorer(**params: object) -> PrefixCacheScorer:
    return PrefixCacheScorer.create("p", Params(dict(params), "p"), PluginHandle())


def test_render_chat_is_deterministic_and_prefix_stable() -> None:
    system = {"role": "system", "content": "you are terse " * 50}
    a = render_chat([system, {"role": "user", "content": "first"}])
    b = render_chat([system, {"role": "user", "content": [{"type": "text", "text": "second"}]}])
    head = render_chat([system])
    assert a.startswith(head) and b.startswith(head) and a != b
    assert a == render_chat([system, {"role": "user", "content": "first"}])
    # Tools come first; tool calls and other keys are part of the message.
    t = render_chat([{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}], tools=[{"x": 1}])
    assert t.startswith("<|tools|>\n") and '"tool_calls"' in t
    # The front door hands chat bodies to the scorers in this rendering.
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    assert parse_body(CHAT, body).prompt_text == "<|user|>\nhi\n"


def test_tokenizer_makes_blocks_exactly_block_size_tokens(tmp_path: Path) -> None:
    scorer = _scorer(tokenizer=str(_save_tokenizer(tmp_path / "tok")), blockSize=4, autoTune=False)
    ep = make_endpoint("10.0.0.1:8000")
    text = "a b c d e f g h a b c"  # 11 tokens -> 2 full blocks of 4 (the engine caches full blocks)
    req = InferenceRequest("r", "m", prompt_text=text)
    cycle = CycleState(req, 0.0)
    scorer.prepare(cycle, [ep])
    m = prefix_match(cycle)
    assert m is not None and len(m.hashes) == 2 and req.token_ids == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
    scorer.on_picked(cycle, ep)
    # The same first 8 tokens spelled with different whitespace are the same blocks to the engine.
    other = CycleState(InferenceRequest("r2", "m", prompt_text="a  b c d\ne f g h   h"), 0.0)
    scorer.prepare(other, [ep])
    assert scorer.score(other, [ep]) == [1.0]


def test_auto_finds_the_served_models_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    _save_tokenizer(hub / "models--org--tiny" / "snapshots" / "abc123")
    local = _save_tokenizer(tmp_path / "local-model")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    assert tokenize.find_for_model("org/tiny") == hub / "models--org--tiny/snapshots/abc123/tokenizer.json"
    assert tokenize.find_for_model(str(local)) == local / "tokenizer.json"  # vLLM --model /path
    assert tokenize.find_for_model("org/absent") is None
    scorer = _scorer(tokenizer="auto", blockSize=2, autoTune=False)
    ep = make_endpoint("10.0.0.1:8000")
    known = InferenceRequest("r", "org/tiny", prompt_text="a b c d")
    scorer.prepare(CycleState(known, 0.0), [ep])
    assert known.token_ids == [1, 2, 3, 4]
    unknown = InferenceRequest("r", "org/absent", prompt_text="a b c d")
    scorer.prepare(CycleState(unknown, 0.0), [ep])
    assert unknown.token_ids is None  # no tokenizer here: the character estimate


def test_tokenizer_cache_is_bounded(tmp_path: Path) -> None:
    tok = tokenize.PromptTokenizer(tokenize.tokenizer_file(_save_tokenizer(tmp_path)), capacity=3)
    for w in ["a", "b", "c", "d", "e"]:
        assert tok.encode(w) == tok.encode(w)
    assert len(tok._cache) == 3


def test_unreadable_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _scorer(tokenizer=str(tmp_path / "nowhere"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError):
        _scorer(tokenizer=str(tmp_path / "bad.json"))
