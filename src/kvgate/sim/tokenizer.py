"""The simulator's tokenizer: a real Hugging Face tokenizer directory, built locally and deterministically.

Scheme (no training, so the bytes are identical on every machine and every run): a byte-level BPE whose
vocabulary holds the 256 byte tokens, every lower-case letter pair and every three-letter lower-case word,
with and without a leading space (``Ġ``). The benchmark renders token ids as three-letter words joined by
spaces (``kvgate.bench.workloads``), so each ``" xyz"`` is exactly one token (~4 characters), and other
text falls back to letter pairs/triples and bytes. Merges are ordered so that ``Ġ+x``, ``Ġx+y``,
``Ġxy+z`` win over the in-word pairs; a word without a leading space has both ``xy+z`` and ``x+yz``
merges so either first merge still ends in one token.

The directory (``tokenizer.json``, ``tokenizer_config.json`` with a chat template,
``special_tokens_map.json``, ``config.json``) loads with ``transformers.AutoTokenizer.from_pretrained`` and
with the Rust ``tokenizers`` crate the peer routers use. It lives in ``$KVGATE_CACHE_DIR`` (default
``~/.cache/kvgate``) under ``tokenizer-<VERSION>`` and is written atomically (tmp dir + rename).

Chat template (the Python :meth:`Tok.apply_chat_template` renders the same string as the Jinja one)::

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n ... <|assistant|>\\n   (last: the generation prompt)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

VERSION = "v1"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SPACE = "Ġ"  # byte-level BPE's spelling of b" "
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>")
EOS_TOKEN = "<|endoftext|>"
MAX_POSITION_EMBEDDINGS = 131072
# Text that is only three-letter lower-case words joined by single spaces (``bench.workloads.render``).
_WORD_TEXT = re.compile(r"[a-z]{3}(?: [a-z]{3})*")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def cache_root() -> Path:
    env = os.environ.get("KVGATE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kvgate"


def _words() -> list[str]:
    return [a + b + c for a in _LETTERS for b in _LETTERS for c in _LETTERS]


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Byte tokens first, in GPT-2's byte-to-unicode order, so ids 0..255 are the bytes.
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    byte_chars.sort(key=lambda ch: _byte_of(ch))
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for ch in byte_chars:
        add(ch)
    pairs = [a + b for a in _LETTERS for b in _LETTERS]
    words = _words()
    # Space-led words: their merges rank first so " xyz" always ends as one token.
    for a in _LETTERS:
        merges.append((_SPACE, a))
        add(_SPACE + a)
    for p in pairs:
        merges.append((_SPACE + p[0], p[1]))
        add(_SPACE + p)
    for w in words:
        merges.append((_SPACE + w[:2], w[2]))
        add(_SPACE + w)
    for p in pairs:
        merges.append((p[0], p[1]))
        add(p)
    for w in words:
        merges.append((w[:2], w[2]))
        add(w)
    for w in words:
        merges.append((w[0], w[1:]))  # same output token: "bc" may merge before "ab"
    for special in SPECIAL_TOKENS:
        add(special)
    return vocab, merges


@functools.cache
def _byte_table() -> dict[str, int]:
    # GPT-2's bytes_to_unicode, inverted.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _byte_of(ch: str) -> int:
    return _byte_table()[ch]


def build_tokenizer() -> Tokenizer:
    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    return tok


def _json(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_tokenizer_dir(path: Path) -> None:
    """Write the four files into ``path`` (created if needed). Same bytes on every call."""
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    (path / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIAL_TOKENS
    }
    (path / "tokenizer_config.json").write_bytes(
        _json(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "added_tokens_decoder": added,
                "bos_token": None,
                "eos_token": EOS_TOKEN,
                "pad_token": EOS_TOKEN,
                "unk_token": None,
                "clean_up_tokenization_spaces": False,
                "model_max_length": MAX_POSITION_EMBEDDINGS,
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    (path / "special_tokens_map.json").write_bytes(_json({"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}))
    (path / "config.json").write_bytes(
        _json(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
                "eos_token_id": tok.token_to_id(EOS_TOKEN),
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "torch_dtype": "bfloat16",
            }
        )
    )


def tokenizer_dir() -> Path:
    """The tokenizer directory, generated on first use (atomically, safe with concurrent processes)."""
    target = cache_root() / f"tokenizer-{VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tokenizer-{VERSION}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; other users and routers read it
    try:
        write_tokenizer_dir(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to a complete dir: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class Tok:
    """Encode, decode and chat template over the generated tokenizer (``tokenizers`` only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_id: int = _token_id(self._tok, EOS_TOKEN)
        # One single-token word per id for generated output: " xyz" re-encodes to exactly that token.
        first = _token_id(self._tok, _SPACE + "aaa")
        self._word_ids = range(first, first + len(_LETTERS) ** 3)
        # Output text per word, as str and as a JSON string: streaming writes one per token.
        self.output_texts: list[str] = [" " + w for w in _words()]
        self.output_json: list[bytes] = [orjson.dumps(t) for t in self.output_texts]
        self._word_id: dict[str, int] = {w: _token_id(self._tok, w) for w in _words()}
        self._spaced_word_id: dict[str, int] = {w: _token_id(self._tok, _SPACE + w) for w in _words()}

    def encode(self, text: str) -> list[int]:
        # The benchmarks' prompts are three-letter words joined by single spaces, one token each: map
        # them directly (~100x faster than the BPE, which took ~10 ms per 1k tokens; one process
        # simulates every replica, so that time stalled every replica's step loop). Same ids.
        if _WORD_TEXT.fullmatch(text):
            words = text.split(" ")
            ids = [self._word_id[words[0]]]
            ids += map(self._spaced_word_id.__getitem__, words[1:])
            return ids
        slow: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return slow

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=False)
        return text

    def output_token(self, engine_token: int) -> int:
        """Map an engine-generated token id onto a one-token word, so text and token counts agree."""
        return self._word_ids[engine_token % len(self._word_ids)]

    def output_index(self, engine_token: int) -> int:
        """Index into ``output_texts``/``output_json`` for an engine token (same word as ``output_token``)."""
        return engine_token % len(self._word_ids)

    def token_text(self, token_id: int) -> str:
        """Text of one token (cheap path for streaming output words)."""
        return self.decode((token_id,))

    @staticmethod
    def apply_chat_template(
        messages: Iterable[Mapping[str, object]], add_generation_prompt: bool = True
    ) -> str:
        parts = [f"<|{m.get('role', 'user')}|>\n{_content_text(m.get('content'))}\n" for m in messages]
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)


def _token_id(tok: Tokenizer, token: str) -> int:
    tid = tok.token_to_id(token)
    if tid is None:
        raise RuntimeError(f"tokenizer lacks {token!r}: a corrupt tokenizer directory?")
    return int(tid)


def _content_text(content: object) -> str:
    """OpenAI content: a string or a list of parts; only the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return str(content)


@functools.cache
def get_tokenizer() -> Tok:
    return Tok(tokenizer_dir())
