"""Prompt text -> the served model's token ids, for the prefix scorers.

With the engine's own tokenizer, a prefix block is exactly ``block_size`` of the engine's tokens, so the
approximate index's blocks line up with the engine's cache blocks (a character estimate drifts by the
model's characters-per-token) and the precise scorer can hash text prompts at all.

``tokenizer`` parameter values: a ``tokenizer.json`` or a directory holding one; ``auto``: per request
model, the model name itself when it is a local directory (vLLM serves ``--model /path`` under that
name), else the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``,
``models--<org>--<name>/snapshots/<hash>/tokenizer.json``, the hash ``refs/main`` holds, else the newest
snapshot by mtime). Nothing found: the caller falls back to its
estimate. Nothing is downloaded.

Encodings are cached (bounded LRU keyed by the text's 64-bit hash) because a request is scored by
several plugins and retried pickers see the same prompt again. An encoding is an ``array('I')`` of the
ids (4 bytes each), not a list: the scorers hash a prompt's ids as packed 32-bit integers, and the
cached pieces are arrays too, so a prompt's ids are joined and hashed with no Python int per token (a
list cost ~50 us of ``Director.pick`` per 2k-token prompt to fill from the pieces and pack again for
hashing, docs/benchmarks/gateway.md).

Prompts that share a prefix (a tenant's system prompt, a conversation's earlier turns: the traffic prefix
routing is for) are tokenized piecewise: the text is cut at word boundaries about every ``PIECE_CHARS``
characters, counted from its start, so a shared prefix is cut into the same pieces; each piece's ids are
cached, and only the pieces after the first difference are tokenized (a 2k-token prompt with a shared system
prompt: ~0.85 ms -> ~0.2 ms, docs/benchmarks/gateway.md). The piece where a text leaves the cached ones (the
first piece missed after cached ones) is looked up and tokenized line by line when it holds a line break,
and its lines are cached too: a shared text that ends at a line break (a system prompt before ``User ...:``,
a chat turn) is then not tokenized again with each new tail, from the third text that shares it on
(docs/benchmarks/realvllm.md, "Session 18"). That equals tokenizing the whole text only for tokenizers whose
pre-tokenizer never joins text across such a cut: byte-level BPE (GPT-2, Llama 3, Qwen), no normalizer
beyond NFC, no added token that strips whitespace next to it or holds a space or newline, special tokens
only in front. Other tokenizers are always tokenized whole. One that qualifies is checked at load, before it
serves a prompt: on a mixed probe text (words, digits, punctuation, whitespace runs, non-Latin script, its
own added tokens) cut at every point ``encode`` may cut, and then ``SELF_CHECKS`` prompt-shaped texts (a
multi-line system text and one turn each, as a tenant's requests come) sent through ``encode`` itself, with
its caches, each compared with the whole encoding. One difference (or a check that raises) and it tokenizes
whole texts. A tokenizer named in the configuration is loaded before the gateway says ready, so a request
never waits for them (a reload's new one on a thread before its picker is built,
``gateway.reload.warm_pickers``; a file is read again once it changed: ``load``); with ``auto`` the models a
server's config lists are looked up before it says ready (``preload``, start-up only, the tokenizers found
kept), and any other model's tokenizer at its first request, on the loader thread (``for_model_soon``, once
per model): that model's requests are scored with the estimate until it is loaded (before tok30 the load ran
inside the request's pick on the event loop and every in-flight request waited: the 8 checks alone 27-34 ms,
plus the file's parse). What still holds the event loop during a load elsewhere is the GIL: ``tokenizers``'
``Tokenizer.from_file`` parses the whole file in one call that holds it (~145 ms for the 1.1 MB test
tokenizer, ``scripts/tokenizer_load_stall.py``), and a Rust object cannot be parsed in another process and
handed over (a pickled ``Tokenizer`` is its JSON, parsed again on arrival), so what ``load`` saves is the
parse of bytes it parsed before: a file with the bytes of one loaded (a new Hugging Face snapshot of the
same blob, a copy at a new path, a file rewritten unchanged) takes that one's parsed tokenizer and load-time
verdict (a reload naming one, the event loop's longest lateness while a stream is served: median 85 -> 9 ms,
8 reloads, load ~12 -> 6, ``scripts/reload_loop_lag.py``; tok31); the load reads the file once (the
piecewise check reads the loaded tokenizer's components, not the file parsed again in Python: ~50 ms of the
GIL less, tok30). The check texts are built from a fixed word list, so a vocabulary that merges across a cut
only on other words (a word with the next one's leading space, as multi-word vocabularies do) passes them:
the first ``LIVE_CHECKS`` real prompts tokenized piecewise are also compared with their whole encoding, on
one checker thread (started before ready by ``warm``; the request path pays a queue put), and a difference
makes the next ``encode`` drop the caches and tokenize whole texts (review s26-rev-wkv26 F1). Their CPU
(~1.3 ms each) falls in the first requests' window, off the event loop (docs/benchmarks/realvllm.md,
"Session 26", "Since").

The request path encodes with ``encode_batch_fast`` (a batch of one: the same ids without the character
offsets, ~0.71x the CPU of ``encode`` per piece, ``scripts/tokenize_cost.py``; it releases the GIL as
``encode_batch`` does) and falls back to ``encode`` on a tokenizer object without it. A batch of one runs
on the calling thread whatever ``TOKENIZERS_PARALLELISM`` says: the library's rayon pool is started by
the first call but a one-item batch is never split, so its threads get no work (0.02 ms of CPU over 1,000
prompt-shaped encodes, ``scripts/tokenize_cost.py --threads 1000``; issue #16, tok28), and there is no
hand-off to another thread to save. The live checks' whole-text ``encode_batch`` is a batch of one too:
it runs on the checker thread itself (Python 3.11 does not name the OS thread, so per-thread traces show
it as ``python``, on a fresh gateway's first ``LIVE_CHECKS`` prompts only). The references the
checks compare against stay the offset-computing calls: the load-time probe's whole text is ``encode``,
a prompt-shaped text's ``encode_batch``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

AUTO = "auto"
CACHE_ENTRIES = 512  # encoded prompts kept per tokenizer
MAX_CHARS = 1 << 20  # longer prompts are tokenized only up to here: the prefix is what matters

PIECE_CHARS = 256  # piecewise tokenization: cut about this often (characters)
PIECE_ENTRIES = 8192  # cached pieces per tokenizer (4 bytes per token id: ~1 KB each)
SELF_CHECKS = 8  # prompt-shaped texts encoded through ``encode`` and compared with whole ones, at load
LIVE_CHECKS = 8  # then real prompts' piecewise ids compared with whole ones, per tokenizer, off the loop
# Where a byte-level BPE pre-tokenizer always splits: before a space between two letters (" word" is
# one pre-token), after a newline between two non-spaces ("\n" never joins a letter after it).
_CUT = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])|(?<=\S)\n(?=\S)")
_NEWLINE_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # _CUT's newline cuts alone (a missed piece's lines)
_SAFE_NORMALIZERS = (None, "NFC")

log = logging.getLogger(__name__)

# Loaded tokenizers by file, least recently loaded first, each with the file's stamp when it was read: a
# file replaced in place (a new model's tokenizer at the same mount path) is read again (review s29-qa29
# Q6). Bounded: a tokenizer is tens of MB for a real vocabulary; a picker holds its own anyway.
_BY_PATH: dict[str, PromptTokenizer] = {}
TOKENIZER_FILES = 16
_BY_PATH_LOCK = threading.Lock()  # (a reload loads on a thread, an ``auto`` first request on the loop)
FileStamp = tuple[int, int, int]
_BY_MODEL: dict[str, PromptTokenizer | None] = {}
_UNSEEN: Any = object()  # (a model not looked up yet)
_CHECKER: ThreadPoolExecutor | None = None  # one thread for every tokenizer's live checks, made on first use
MODELS = 4096  # models looked up, kept (``_BY_MODEL``)
LOADS_PENDING = 64  # ``auto`` look-ups waiting for the loader thread, at most
_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()
_LOADER: ThreadPoolExecutor | None = None  # one thread for ``auto``'s look-ups and loads, made on first use


def _checker() -> ThreadPoolExecutor:
    global _CHECKER
    if _CHECKER is None:
        _CHECKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvgate-tokenizer-check")
    return _CHECKER


def warm() -> None:
    """Build now what the loaded tokenizers' first request would build (a server's start-up, before it
    says ready): the live checks' thread, which the first prompt's ``encode`` otherwise starts inside that
    request's pick (a thread start, ~2 ms on a loaded 2-core machine), and the library's own thread pool,
    which a tokenizer whose load-time checks did not run (one tokenized whole) builds on its first
    ``encode_batch_fast``. Nothing without a tokenizer."""
    loaded = list(_BY_PATH.values())
    if any(t._live_left > 0 and t.piecewise for t in loaded):
        _checker().submit(int).result()  # (a ThreadPoolExecutor starts its thread on the first submit)
    for t in loaded:
        _ids(t._tok, "warm", False)


class PromptTokenizer:
    """One ``tokenizers.Tokenizer`` plus a bounded cache of encoded prompts."""

    def __init__(
        self, path: Path, capacity: int = CACHE_ENTRIES, *, data: bytes | None = None, twin: Any = None
    ) -> None:
        """``data``: the file's bytes, read already (``load``); ``twin``: a loaded ``PromptTokenizer`` of
        the same bytes (another path), whose parsed tokenizer and load-time verdict are taken, not made
        again: the parse holds the GIL, and so every request of the process, ~145 ms for the 1.1 MB test
        tokenizer (``scripts/tokenizer_load_stall.py``)."""
        from tokenizers import Tokenizer

        self.path = path
        self.stamp: FileStamp | None = None  # the file's when it was read (``load``)
        self.digest: int | None = None  # its bytes' 128-bit xxh3 (``load``): a copy is a twin
        if twin is not None:
            self._tok: Any = twin._tok  # (its calls are thread-safe: shared as one object is today)
        elif data is not None:
            self._tok = Tokenizer.from_buffer(data)
        else:
            self._tok = Tokenizer.from_file(str(path))
        self._cache: OrderedDict[int, array[int]] = OrderedDict()
        self._capacity = capacity
        self._pieces: OrderedDict[int, array[int]] = OrderedDict()
        self.self_checks = 0  # prompt-shaped texts checked at load (benchmarks' records)
        self._live_left = 0  # (none while the load-time checks run through ``encode``)
        self._live: list[Future[None]] = []
        self._differs = False  # set by a live check (the checker thread), acted on by the next encode
        # The same bytes: the same verdict (a live check's difference included), as of now: one the source
        # finds later is not seen here; this twin's own LIVE_CHECKS catch it on its traffic (rev-d31 F2).
        if twin is not None:
            self._front: list[int] | None = None if twin._differs else twin._front
            self.self_checks = twin.self_checks
        else:
            # Ids the post-processor puts in front of every encoding (a BOS), when piecewise is exact.
            self._front = _piecewise_front(self._tok, path)
            if self._front is not None:
                self._self_check_all()
        self._live_left = LIVE_CHECKS  # (a twin's own: its real prompts are checked too)

    @property
    def piecewise(self) -> bool:
        return self._front is not None and not self._differs

    def wait_self_checks(self, timeout: float | None = None) -> None:
        """Until the live checks started so far are done (tests, benchmarks)."""
        for f in self._live:
            f.result(timeout)

    def encode(self, text: str) -> array[int]:
        """The ids of ``text`` (cached: the same array object for the same text; callers never mutate
        it)."""
        if self._differs and self._front is not None:
            # Cached encodings may be piecewise ones that differ: start again from whole texts.
            self._front = None
            self._cache.clear()
            self._pieces.clear()
        text = text[:MAX_CHARS]
        key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            return ids
        if self._front is not None and len(text) > PIECE_CHARS:
            ids = self._encode_pieces(text, self._front)
            if self._live_left > 0:  # (the request path pays a queue put; the check runs on the thread)
                self._live_left -= 1
                self._live.append(_checker().submit(self._live_check, text, ids))
        else:
            # Special tokens as vLLM adds them to a completion prompt (a BOS), so blocks equal the engine's.
            ids = array("I", _ids(self._tok, text, True))
        self._cache[key] = ids
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return ids

    def _self_check_all(self) -> None:
        """At load: ``SELF_CHECKS`` prompt-shaped texts through ``encode`` (pieces, cached pieces, the
        line-by-line piece) against their whole encodings; the first difference, or an error, and this
        tokenizer tokenizes whole texts. The caches are emptied after (the texts are not traffic)."""
        texts = _check_texts(list(self._tok.get_added_tokens_decoder().values()), SELF_CHECKS)
        try:
            for text in texts:
                if not self._self_check(text):
                    log.warning("tokenizer %s: piecewise encoding differs from whole; tokenizing whole texts",
                                self.path)  # fmt: skip
                    self._front = None
                    break
        except Exception:
            log.exception("tokenizer %s: self-check failed; tokenizing whole texts", self.path)
            self._front = None
        self._cache.clear()
        self._pieces.clear()

    def _self_check(self, text: str) -> bool:
        """One text: its ``encode`` (piecewise) equals its whole encoding."""
        self.self_checks += 1
        return self.encode(text) == array("I", self._tok.encode_batch([text])[0].ids)

    def _live_check(self, text: str, ids: array[int]) -> None:
        """On the checker thread: a real prompt's whole encoding against its piecewise one (``ids``: the
        cached array, never mutated). The load-time texts are built from a fixed word list; a vocabulary
        that merges across a cut only on other words (a word with the next one's space) shows here."""
        try:
            whole = array("I", self._tok.encode_batch([text])[0].ids)  # encode_batch runs without the GIL
        except Exception:  # its Future is never read for a result: the log is the only trace
            log.exception("tokenizer %s: live check failed; keeping the piecewise encoding", self.path)
            return
        if whole != ids:
            log.warning("tokenizer %s: piecewise encoding differs from whole on a prompt; tokenizing whole "
                        "texts", self.path)  # fmt: skip
            self._differs = True

    def _encode_pieces(self, text: str, front: list[int]) -> array[int]:
        ids = array("I", front)
        pieces = self._pieces
        # ``shared``: every piece so far was cached, so the first one that is not is where this text leaves
        # one tokenized before (a tenant's next question, a chat's next turn); ``leading``: no miss yet.
        shared, leading = False, True
        for piece in _cut_pieces(text):
            key = xxhash.xxh3_64_intdigest(piece.encode("utf-8", "surrogatepass"))
            got = pieces.get(key)
            if got is not None:
                pieces.move_to_end(key)
                shared = leading
            else:
                if shared and "\n" in piece:
                    got = self._encode_lines(piece)
                else:
                    got = array("I", _ids(self._tok, piece, False))
                self._keep(key, got)
                shared = leading = False
            ids.extend(got)
        return ids

    def _encode_lines(self, piece: str) -> array[int]:
        """The piece where a text leaves one tokenized before, when it holds a line break: its lines (cut
        where ``_CUT`` cuts at a newline) looked up and tokenized one by one and kept, so that the next
        text that leaves the shared one at a line break in this piece (a tenant's system prompt ends
        with one, a chat turn ends with one) tokenizes only its own lines, not the shared text's last
        piece again. Only this piece: a text never seen (every piece missed) costs no more calls."""
        ids = array("I")
        pieces = self._pieces
        for line in _cut_lines(piece):
            key = xxhash.xxh3_64_intdigest(line.encode("utf-8", "surrogatepass"))
            got = pieces.get(key)
            if got is None:
                got = array("I", _ids(self._tok, line, False))
                self._keep(key, got)
            else:
                pieces.move_to_end(key)
            ids.extend(got)
        return ids

    def _keep(self, key: int, ids: array[int]) -> None:
        pieces = self._pieces
        pieces[key] = ids
        if len(pieces) > PIECE_ENTRIES:
            pieces.popitem(last=False)


def _component(part: Any) -> dict[str, Any]:
    """A loaded tokenizer's normalizer or pre-tokenizer as its ``tokenizer.json`` entry (``{}`` for none):
    its own serialization, a few hundred bytes, not the whole file parsed again in Python (a ``json.loads``
    of the file held the GIL ~50 ms for the 1.1 MB test tokenizer, more than the self-checks; tok30)."""
    if part is None:
        return {}
    got = json.loads(part.__getstate__())
    return got if isinstance(got, dict) else {}


def _piecewise_front(tok: Any, path: Path) -> list[int] | None:
    """The ids the tokenizer puts before every text, if piecewise encoding equals whole encoding for it
    (see the module doc), else None."""
    try:
        norm, pre = _component(tok.normalizer), _component(tok.pre_tokenizer)
        added = list(tok.get_added_tokens_decoder().values())
    except (AttributeError, TypeError, ValueError):  # (a component this check cannot read: whole texts)
        return None
    if norm.get("type") not in _SAFE_NORMALIZERS:
        return None
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if (
        not byte_level
        or byte_level[0].get("add_prefix_space")
        or any(p.get("type") not in ("ByteLevel", "Split") for p in parts)
    ):
        return None
    if any(a.lstrip or a.rstrip for a in added):
        return None
    if any(" " in a.content or "\n" in a.content for a in added):
        return None  # a cut could fall inside one
    probe = "kvgate probe"
    bare = list(tok.encode(probe, add_special_tokens=False).ids)
    full = list(tok.encode(probe).ids)
    if full[len(full) - len(bare) :] != bare:  # something after the text (an EOS): not just a front
        return None
    front = full[: len(full) - len(bare)]
    text = _probe_text([a.content for a in added])
    if _pieces_of(tok, text, front) != list(tok.encode(text).ids):
        log.info("tokenizer %s: piecewise encoding differs on the probe text; tokenizing whole texts", path)
        return None
    return front


_PROBE_WORDS = (
    "alpha", "Beta", "x", "don't", "it's", "42", "3.14159", "1234567", "hello,", "(paren)", "end.", "a-b",
    "tab\tbed", "日本語", "émigré", "naïve", "🙂", "  ", "\n", "\n\n", " \n", "\r\n", "--", "'quoted'",
)  # fmt: skip


def _probe_text(added: list[str]) -> str:
    words = [*_PROBE_WORDS, *(a for a in added if a)]
    # Deterministic and long enough for many cuts: every word next to every other one.
    return " ".join(f"{a} {b}" if i % 3 else f"{a}\n{b}" for i, (a, b) in enumerate(
        (a, b) for a in words for b in words))  # fmt: skip


def _check_texts(added: list[Any], n: int) -> list[str]:
    """``n`` prompt-shaped texts for the load-time self-checks: one system text of many lines (the probe's
    words and the tokenizer's added tokens) and, after it, each text's own turn, as a tenant's requests or
    a chat's turns come. The first is tokenized piece by piece cold; the second leaves the cached pieces
    at a line break (its last shared piece tokenized line by line); the later ones reuse those lines."""
    words = [*_PROBE_WORDS, *(str(getattr(a, "content", a)) for a in added if str(getattr(a, "content", a)))]
    k = len(words)
    system = "\n".join(
        f"Rule {i}: " + " ".join(words[(i * 7 + j) % k] for j in range(11)) + " end." for i in range(24)
    )
    return [f"{system}\nUser {i}: " + " ".join(words[(i * 5 + j) % k] for j in range(17)) for i in range(n)]


def _cut_pieces(text: str) -> Iterator[str]:
    """``text`` cut at the first cut point at least ``PIECE_CHARS`` after the previous cut."""
    start, n = 0, len(text)
    while start < n:
        m = _CUT.search(text, start + PIECE_CHARS) if start + PIECE_CHARS < n else None
        end = n if m is None else m.start() + (m.group() == "\n")
        yield text[start:end]
        start = end


def _cut_lines(piece: str) -> Iterator[str]:
    """``piece`` cut at every newline where ``_CUT`` cuts (after a newline between two non-spaces)."""
    start = 0
    for m in _NEWLINE_CUT.finditer(piece):
        yield piece[start : m.end()]
        start = m.end()
    if start < len(piece):
        yield piece[start:]


def _pieces_of(tok: Any, text: str, front: list[int]) -> list[int]:
    """``text`` encoded piecewise without the cache (the load-time probe), cut wherever ``encode`` may
    cut: between pieces and, as ``_encode_lines`` does, between each piece's lines."""
    ids = list(front)
    for piece in _cut_pieces(text):
        for line in _cut_lines(piece):
            ids.extend(_ids(tok, line, False))
    return ids


def _ids(tok: Any, text: str, special: bool) -> list[int]:
    """``tok.encode(text, add_special_tokens=special).ids``, without computing offsets where the
    tokenizer has ``encode_batch_fast``."""
    fast = getattr(tok, "encode_batch_fast", None)
    if fast is None:
        return tok.encode(text, add_special_tokens=special).ids
    return fast([text], add_special_tokens=special)[0].ids


# What looking a name up on the file system may raise, for a name it refuses: ``Path.is_file`` / ``is_dir``
# an ``OSError`` (a segment over 255 bytes: ENAMETOOLONG; EACCES), ``expanduser`` a ``RuntimeError``
# (``~nosuchuser``), a ``ValueError`` (a NUL byte, where ``os`` checks it). A caller that reads a name from a
# config or a server catches these: a config error naming its key, a miss with one WARNING, never a crash.
LOOKUP_ERRORS = (OSError, ValueError, RuntimeError)


def tokenizer_file(path: str | Path) -> Path:
    """``path``, or its ``tokenizer.json`` when it is a directory; ``ValueError`` for a ``~user`` that does
    not exist (``expanduser``'s RuntimeError, which no ``load`` caller expects), ``OSError`` where the file
    system refuses the name (ENAMETOOLONG)."""
    try:
        p = Path(path).expanduser()
    except RuntimeError as e:
        raise ValueError(f"cannot read the path {str(path)!r}: {e}") from e
    return p / "tokenizer.json" if p.is_dir() else p


def file_stamp(f: Path) -> FileStamp:
    """``(st_mtime_ns, st_size, st_ino)``: what tells a file replaced in place (or renamed over) from the
    one read before; ``OSError`` if it cannot be stat'ed."""
    st = f.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def load(path: str | Path) -> PromptTokenizer:
    """The (shared) tokenizer at ``path``, read again when the file changed since; ``OSError`` /
    ``ValueError`` if unreadable."""
    f = tokenizer_file(path)
    key = str(f)
    if not f.is_file():
        raise OSError(f"no tokenizer at {f}")
    stamp = file_stamp(f)  # (before the read: a file replaced during it is read again next time)
    got = _BY_PATH.get(key)
    if got is not None and got.stamp in (stamp, None):  # (None: put there by hand, a test's)
        return got
    data = f.read_bytes()
    digest = xxhash.xxh3_128_intdigest(data)  # (~0.1 ms a MB)
    # The same bytes loaded at another path (a new Hugging Face snapshot of the same blob, a copy in a new
    # mount, the file rewritten unchanged): not parsed again (tok31).
    twin = next((t for t in list(_BY_PATH.values()) if t.digest == digest), None)
    try:
        got = PromptTokenizer(f, data=data, twin=twin)
    except Exception as e:  # tokenizers raises its own Exception type on a bad file
        raise ValueError(f"cannot load tokenizer {f}: {e}") from e
    got.stamp, got.digest = stamp, digest
    with _BY_PATH_LOCK:
        _BY_PATH.pop(key, None)
        _BY_PATH[key] = got
        while len(_BY_PATH) > TOKENIZER_FILES:
            del _BY_PATH[next(iter(_BY_PATH))]
    return got


def _hf_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_for_model(model: str) -> Path | None:
    """A local ``tokenizer.json`` for ``model`` (see the module doc), or None; ``LOOKUP_ERRORS`` for a name
    the file system refuses (every caller catches them: ``for_model``, ``kv_auto``, ``precise_llmd``'s
    ``local_tokenizer``, ``reload.picker_tokenizers``)."""
    if not model:
        return None
    local = Path(model).expanduser()
    if local.is_absolute() and (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    repo = "models--" + model.replace("/", "--")
    for d in _hf_cache_dirs():
        f = _cached_snapshot_tokenizer(d / repo)
        if f is not None:
            return f
    return None


def _cached_snapshot_tokenizer(repo_dir: Path) -> Path | None:
    """``tokenizer.json`` of the snapshot ``refs/main`` names (the revision ``huggingface_hub`` resolves
    by default), else of the newest snapshot by mtime: with several revisions cached, the
    lexicographically first hash may be an older tokenizer."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    try:
        main = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    if main and (snaps / main / "tokenizer.json").is_file():
        return snaps / main / "tokenizer.json"
    found = [f for f in snaps.glob("*/tokenizer.json") if f.is_file()]
    return max(found, key=lambda f: f.parent.stat().st_mtime, default=None)


def for_model(model: str) -> PromptTokenizer | None:
    """The served model's tokenizer if it is available locally (looked up once per model name; here, on
    the calling thread: a request's pick uses ``for_model_soon``)."""
    if model in _BY_MODEL:
        return _BY_MODEL[model]
    try:
        f = find_for_model(model)
    except LOOKUP_ERRORS as e:  # EACCES, a name too long, ``~nosuchuser``: a miss
        log.warning("tokenizer for model %r: cannot look it up (%s); scoring with the estimate", model, e)
        f = None
    got: PromptTokenizer | None = None
    if f is not None:
        try:
            got = load(f)
        except (OSError, ValueError):
            got = None
    if len(_BY_MODEL) >= MODELS:  # bounded: model names come from requests (the oldest look-up goes)
        _BY_MODEL.pop(next(iter(_BY_MODEL)), None)
    _BY_MODEL[model] = got
    return got


def for_model_soon(model: str) -> PromptTokenizer | None:
    """``for_model`` without waiting for it: the tokenizer when the model was looked up already, else None
    (the caller scores with its estimate) while the look-up and the load run on the loader thread. A
    request's pick runs on the event loop: a load there (the file's parse, the load-time checks: hundreds
    of ms for a real model's) stalled every request of the process (tok30). At most ``LOADS_PENDING``
    models wait for the thread (model names come from requests); another is looked up at a later request."""
    got = _BY_MODEL.get(model, _UNSEEN)
    if got is not _UNSEEN:
        return got
    with _PENDING_LOCK:
        if model in _PENDING or len(_PENDING) >= LOADS_PENDING:
            return None
        _PENDING.add(model)
    try:
        _loader().submit(_look_up, model)
    except BaseException:
        with _PENDING_LOCK:
            _PENDING.discard(model)
        raise
    return None


def _look_up(model: str) -> None:
    """On the loader thread: ``for_model``, then what its first request would start (``warm``'s part)."""
    try:
        got = for_model(model)
        if got is not None:
            if got._live_left > 0 and got.piecewise:
                _checker().submit(int).result()
            _ids(got._tok, "warm", False)
    except Exception:  # (never raised to a Future nobody reads: the log is the trace)
        log.exception("tokenizer for model %r: look-up failed; scoring with the estimate", model)
    finally:
        with _PENDING_LOCK:
            _PENDING.discard(model)


def _loader() -> ThreadPoolExecutor:
    global _LOADER
    with _PENDING_LOCK:
        if _LOADER is None:
            _LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvgate-tokenizer-load")
        return _LOADER


def reads_auto(director: Any) -> bool:
    """Does a picker (its configured plugins) read ``tokenizer: auto`` (a prefix scorer's ``tokenizer``, a
    precise scorer's ``_tokenizer``)?"""
    plugins = getattr(getattr(director, "handle", None), "plugins", {})
    for p in plugins.values():
        for src in (getattr(p, "tokenizer", None), getattr(p, "_tokenizer", None)):
            if isinstance(src, TokenizerSource) and src.setting == AUTO:
                return True
    return False


def preload_for(director: Any, models: Iterable[str]) -> None:
    """``preload(models)`` when the picker reads ``auto`` (a server's start-up: the models a pool lists)."""
    if reads_auto(director):
        preload(models)


def preload(models: Iterable[str]) -> None:
    """``auto``'s look-up of ``models`` now, on the calling thread: a server's start-up, before it says
    ready, for the models its config lists, so their first requests find the tokenizer loaded rather than
    scoring with the estimate while the loader thread loads it (tok30). A model never listed (a request's
    own name) is looked up at its first request. Only a tokenizer found is kept: a listed model not found
    now (its engine still downloading it into the shared cache) is looked up again at its first request,
    on the loader thread, as before the preload (review s30-rev-b30 F2)."""
    for model in models:
        if model not in _BY_MODEL and for_model(model) is None:
            _BY_MODEL.pop(model, None)


def _forget_threads() -> None:
    """In a forked child (an ``os.fork`` user: ``--workers`` workers are spawned, fresh interpreters): the
    parent's executors have no thread here (work put on one would never run), and a lock one of its threads
    held (the loader's, a reload's warm thread's ``load``) stays held."""
    global _CHECKER, _LOADER, _PENDING_LOCK, _BY_PATH_LOCK
    _CHECKER = _LOADER = None
    _PENDING_LOCK = threading.Lock()
    _BY_PATH_LOCK = threading.Lock()
    _PENDING.clear()


os.register_at_fork(after_in_child=_forget_threads)


def wait_loads(timeout: float | None = None) -> None:
    """Until the look-ups started so far are done (tests, benchmarks): the loader runs them in order."""
    _loader().submit(int).result(timeout)


class TokenizerSource:
    """A scorer's ``tokenizer`` setting: a fixed path, ``auto`` (per model), or none."""

    def __init__(self, setting: str | None) -> None:
        self.setting = setting or None
        self._fixed = load(setting) if setting and setting != AUTO else None

    def get(self, model: str) -> PromptTokenizer | None:
        if self._fixed is not None:
            return self._fixed
        if self.setting == AUTO:
            got = _BY_MODEL.get(model, _UNSEEN)  # (``for_model_soon``'s lookup inlined: once per request)
            return for_model_soon(model) if got is _UNSEEN else got
        return None

    def __bool__(self) -> bool:
        return self.setting is not None
