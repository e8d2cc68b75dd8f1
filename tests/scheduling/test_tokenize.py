"""Prompt tokenization for the prefix scorers and the deterministic chat rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    scorer = _scorer(tokenizer=str(_save_tokenizer(tmp_path / "tok")), blockSizeTokens=4, autoTune=False)
    ep = make_endpoint("10.0.0.1:8000")
    text = "a b c d e f g h a b c"  # 11 tokens -> 2 full blocks of 4 (the engine caches full blocks)
    req = InferenceRequest("r", "m", prompt_text=text)
    cycle = CycleState(req, 0.0)
    scorer.prepare(cycle, [ep])
    m = prefix_match(cycle)
    assert m is not None and len(m.hashes) == 2
    assert list(req.token_ids or ()) == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
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
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this test's dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    assert tokenize.find_for_model("org/tiny") == hub / "models--org--tiny/snapshots/abc123/tokenizer.json"
    assert tokenize.find_for_model(str(local)) == local / "tokenizer.json"  # vLLM --model /path
    assert tokenize.find_for_model("org/absent") is None
    scorer = _scorer(tokenizer="auto", blockSizeTokens=2, autoTune=False)
    ep = make_endpoint("10.0.0.1:8000")
    first = InferenceRequest("r", "org/tiny", prompt_text="a b c d")
    scorer.prepare(CycleState(first, 0.0), [ep])
    assert first.token_ids is None  # (its look-up runs on the loader thread: the estimate meanwhile)
    tokenize.wait_loads(60)
    known = InferenceRequest("r", "org/tiny", prompt_text="a b c d")
    scorer.prepare(CycleState(known, 0.0), [ep])
    assert list(known.token_ids or ()) == [1, 2, 3, 4]
    unknown = InferenceRequest("r", "org/absent", prompt_text="a b c d")
    scorer.prepare(CycleState(unknown, 0.0), [ep])
    tokenize.wait_loads(60)
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


# --- piecewise tokenization (shared prefixes tokenized once) ------------------------------------------

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _texts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    words = ["alpha", "béta", "Gamma", "x", "don't", "42", "3.14159", "hello,", "(paren)", "tab\tbed",
             "日本語", "<|user|>", "<|system|>", "  ", "\n", "\n\n", " \n", "end.", "emoji🙂", "ä",
             "it's"]  # fmt: skip
    system = " ".join(rng.choice(words) for _ in range(600))
    out = []
    for i in range(n):
        tail = " ".join(rng.choice(words) for _ in range(rng.randint(0, 80)))
        out.append((system if i % 2 else system[: rng.randint(0, len(system))]) + f"\nUser {i}: " + tail)
    return out


def _llama3_style(d: Path) -> Path:
    """A byte-level BPE with Llama 3's split regex and a BOS in front, trained on the test texts."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<bos>", "<|user|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_texts(20, 99), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    return d


def _piecewise_and_whole(tmp_path: Path, kind: str) -> tuple[tokenize.PromptTokenizer, Any]:
    """A byte-level BPE tokenizer (``sim``: the simulator's, ``llama3``: one with Llama 3's split and a
    BOS) written under ``tmp_path``: kvgate's ``PromptTokenizer`` of it, which must encode piecewise, and
    the ``tokenizers`` library's own (the whole-text reference)."""
    from tokenizers import Tokenizer

    from kvgate.sim.tokenizer import write_tokenizer_dir

    if kind == "sim":
        write_tokenizer_dir(tmp_path / "t")
        d = tmp_path / "t"
    else:
        d = _llama3_style(tmp_path / "t")
    tok = tokenize.PromptTokenizer(d / "tokenizer.json")
    assert tok.piecewise
    return tok, Tokenizer.from_file(str(d / "tokenizer.json"))


@pytest.mark.parametrize("kind", ["sim", "llama3"])
def test_piecewise_encoding_equals_whole_for_byte_level_bpe(tmp_path: Path, kind: str) -> None:
    tok, whole = _piecewise_and_whole(tmp_path, kind)
    texts = _texts(60, 1)
    for text in texts:
        assert list(tok.encode(text)) == whole.encode(text).ids
    assert tok.piecewise  # the self-check found no difference
    assert len(tok._pieces) > 0
    if kind == "llama3":
        assert tok.encode(texts[0])[0] == 0  # the BOS once, in front


@pytest.mark.parametrize("kind", ["sim", "llama3"])
def test_a_text_continued_after_a_line_break_tokenizes_only_its_own_lines(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts that share a system text up to a line break and go on differently (a tenant's next
    requests, a chat's next turns): from the third on, only what follows the shared text is tokenized.
    Before, the piece the shared text ends in (up to ``PIECE_CHARS`` of it) was tokenized again with
    every new tail."""
    tok, whole = _piecewise_and_whole(tmp_path, kind)
    system = " ".join(["alpha", "beta", "gamma", "delta", "epsilon"] * 120)
    tokenized: list[str] = []
    real_ids = tokenize._ids

    def ids(t: object, text: str, special: bool) -> list[int]:
        tokenized.append(text)
        return real_ids(t, text, special)

    monkeypatch.setattr(tokenize, "_ids", ids)
    for i, user in enumerate(["first question here", "another question entirely", "a third one"]):
        text = f"{system}\nUser {i}: {user}"
        tokenized.clear()
        assert list(tok.encode(text)) == whole.encode(text).ids
        if i == 1:  # the system text's pieces are cached; the piece it ends in is tokenized line by line
            assert text.endswith("".join(tokenized)) and len(tokenized) == 2
        if i == 2:  # and now its last line is cached too: only the new line is tokenized
            assert "".join(tokenized) == f"User {i}: {user}"
    assert tok.piecewise


def test_encodings_are_packed_arrays_that_hash_as_the_list_ids(tmp_path: Path) -> None:
    """A prompt's ids are one ``array('I')`` joined from the cached pieces' arrays (no Python int per
    token on the pick's path), the same object on a repeat; every consumer keys it exactly as the list of
    the same ids: ``tokens`` mode, vLLM's engine hashes, the approximate index's bytes."""
    from array import array

    from kvgate.datalayer.kvindex import token_keys
    from kvgate.scheduling.blockhash import VLLMBlockHasher
    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    tok = tokenize.PromptTokenizer(tmp_path / "t" / "tokenizer.json")
    assert tok.piecewise
    text = _texts(2, 5)[1]
    ids = tok.encode(text)
    assert isinstance(ids, array) and ids.typecode == "I" and len(ids) > 64
    assert tok.encode(text) is ids  # cached
    short = tok.encode("hi there")  # (tokenized whole: under one piece)
    assert isinstance(short, array) and short.typecode == "I"
    as_list = list(ids)
    assert token_keys(ids, 16) == token_keys(as_list, 16) and len(token_keys(ids, 16)) == len(ids) // 16
    for algo in ("sha256", "sha256_cbor"):
        hasher = VLLMBlockHasher(16, algo)  # type: ignore[arg-type]
        want = VLLMBlockHasher(16, algo).external_hashes(as_list)  # type: ignore[arg-type]
        assert hasher.external_hashes(ids) == want and hasher.external_hashes(ids) == want  # (memoized)
    assert array("I", ids).tobytes() == array("I", as_list).tobytes()


def test_other_tokenizers_are_tokenized_whole(tmp_path: Path) -> None:
    tok = tokenize.PromptTokenizer(
        _save_tokenizer(tmp_path / "wl") / "tokenizer.json"
    )  # WordLevel/Whitespace
    assert not tok.piecewise
    text = "a b c d " * 200
    assert list(tok.encode(text)[:4]) == [1, 2, 3, 4] and not tok._pieces


class _Spy:
    """A ``tokenizers.Tokenizer`` that records on which thread each whole-text reference encoding (the
    self-checks' ``encode_batch``) ran, and raises from it if asked."""

    def __init__(self, inner: Any, whole_on: list[int], fail: bool = False) -> None:
        self._inner, self._whole_on, self._fail = inner, whole_on, fail

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def encode_batch(self, texts: list[str]) -> object:
        import threading

        self._whole_on.extend(threading.get_ident() for _ in texts)
        if self._fail:
            raise RuntimeError("tokenizer blew up")
        return self._inner.encode_batch(texts)


def _spied(monkeypatch: pytest.MonkeyPatch, whole_on: list[int], fail: bool = False) -> None:
    """``PromptTokenizer`` loads a ``_Spy`` from now on."""
    import tokenizers

    real = tokenizers.Tokenizer

    class Loader:
        @staticmethod
        def from_file(path: str) -> object:
            return _Spy(real.from_file(path), whole_on, fail)

    monkeypatch.setattr(tokenizers, "Tokenizer", Loader)


def test_the_self_checks_are_done_at_load_and_the_live_checks_off_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piecewise tokenizer's load-time self-checks (whole encodings to compare with) are all made while
    it loads, on the loading thread; then the first ``LIVE_CHECKS`` real prompts get their whole encoding
    made on the one checker thread, never on the caller's (the request path), and later prompts none.
    (Main 6c4d40fa: no load-time checks; main 1b0eae32: no live check, review s26-rev-wkv26 F1.)"""
    import threading

    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    whole_on: list[int] = []
    _spied(monkeypatch, whole_on)
    threads = {t.ident for t in threading.enumerate()}
    tok = tokenize.PromptTokenizer(tmp_path / "t" / "tokenizer.json")
    assert tok.piecewise
    assert whole_on == [threading.get_ident()] * tokenize.SELF_CHECKS  # at load, on this thread
    assert not tok._cache and not tok._pieces  # the check texts are not kept as if they were traffic
    tokenize.warm()  # (a server's start-up: the checker thread exists before the first request)
    started = {t.ident for t in threading.enumerate()} - threads
    for text in _texts(tokenize.LIVE_CHECKS + 2, 3):
        tok.encode(text)
    tok.wait_self_checks(30)
    live = whole_on[tokenize.SELF_CHECKS :]
    assert len(live) == tokenize.LIVE_CHECKS  # the first prompts, then none
    assert threading.get_ident() not in live and len(set(live)) == 1  # one thread, not the caller's
    assert {t.ident for t in threading.enumerate()} - threads <= started | set(live)  # nothing else started
    assert tok.piecewise  # (an exact tokenizer stays piecewise)


def test_a_piecewise_difference_found_by_the_self_checks_means_whole_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A difference the probe text does not show (here: the probe's own piecewise encoding made equal)
    but a prompt-shaped text does: found at load, and the tokenizer tokenizes whole texts."""
    import re

    from tokenizers import Tokenizer

    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    path = tmp_path / "t" / "tokenizer.json"
    assert tokenize.PromptTokenizer(path).piecewise
    # A cut inside words is not one the pre-tokenizer makes: the encodings differ.
    monkeypatch.setattr(tokenize, "_CUT", re.compile(r"(?<=[a-z])(?=[a-z])"))
    assert not tokenize.PromptTokenizer(path).piecewise  # found by the probe
    monkeypatch.setattr(tokenize, "_pieces_of", lambda tok, text, front: list(tok.encode(text).ids))
    tok = tokenize.PromptTokenizer(path)
    assert not tok.piecewise and 0 < tok.self_checks <= tokenize.SELF_CHECKS  # found by a self-check
    assert "differs from whole" in caplog.text
    text = "tokenization " * 100
    assert list(tok.encode(text)) == Tokenizer.from_file(str(path)).encode(text).ids


def test_a_self_check_that_raises_is_logged_and_means_whole_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error in a self-check is logged and the tokenizer is not trusted piecewise (unchecked); it still
    loads and encodes."""
    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    _spied(monkeypatch, [], fail=True)
    tok = tokenize.PromptTokenizer(tmp_path / "t" / "tokenizer.json")
    assert "self-check failed" in caplog.text and "tokenizer blew up" in caplog.text
    assert not tok.piecewise and not tok._cache and not tok._pieces
    assert len(tok.encode(_texts(1, 3)[0])) > 64


# --- encode_batch_fast: the request path's call gives encode's ids --------------------------------------

_SPECIALS = ["<bos>", "<|user|>", "<|system|>", "<|im_start|>", "<s>", "</s>", "[UNK]", "<|endoftext|>"]
_piece_texts = st.one_of(
    st.text(max_size=300),  # any unicode, the empty text included
    st.lists(
        st.one_of(
            st.sampled_from(_SPECIALS),
            st.text(alphabet=" \t\n\r\u00a0\u3000", min_size=1, max_size=12),  # whitespace runs
            st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
            st.sampled_from(["don't", "42", "3.14159", "日本語", "émigré", "🙂", "e\u0301"]),
        ),
        max_size=60,
    ).map("".join),
    st.text(min_size=2000, max_size=6000),  # long
)


@pytest.fixture(scope="module")
def fast_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> list[object]:
    from tokenizers import Tokenizer

    from kvgate.sim.tokenizer import write_tokenizer_dir

    d = tmp_path_factory.mktemp("fast")
    write_tokenizer_dir(d / "sim")
    paths = [d / "sim", _llama3_style(d / "llama3"), _save_tokenizer(d / "wl")]
    return [Tokenizer.from_file(str(p / "tokenizer.json")) for p in paths]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_piece_texts, special=st.booleans())
def test_the_fast_call_gives_encodes_ids(fast_tokenizers: list[object], text: str, special: bool) -> None:
    for tok in fast_tokenizers:
        assert hasattr(tok, "encode_batch_fast")
        want = tok.encode(text, add_special_tokens=special).ids  # type: ignore[attr-defined]
        assert tokenize._ids(tok, text, special) == want
        assert tokenize._pieces_of(tok, text, []) == [i for p in tokenize._cut_pieces(text)
                                                       for i in tok.encode(p, add_special_tokens=False).ids]  # type: ignore[attr-defined]  # fmt: skip


def test_a_tokenizer_without_the_fast_call_falls_back_to_encode(tmp_path: Path) -> None:
    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    tok = tokenize.PromptTokenizer(tmp_path / "t" / "tokenizer.json")
    inner, calls = tok._tok, []

    class Old:  # a tokenizers object from before encode_batch_fast
        def __getattr__(self, name: str) -> object:
            if name == "encode_batch_fast":
                raise AttributeError(name)
            return getattr(inner, name)

        def encode(self, text: str, add_special_tokens: bool = True) -> object:
            calls.append(add_special_tokens)
            return inner.encode(text, add_special_tokens=add_special_tokens)

    tok._tok = Old()
    for text in ["short one", *_texts(4, 5)]:
        assert list(tok.encode(text)) == inner.encode(text).ids
    assert True in calls and False in calls  # whole texts and pieces both went through encode
