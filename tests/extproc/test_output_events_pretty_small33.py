"""small33 (b): ``kvgate epp``'s output-event count (the completion tokens it learns when a stream has no
usage chunk, ``extproc.output_events.CountingScanner``) counted choice events by a per-line byte pattern
past the first output, so it missed pretty-printed streams (an event's JSON over several ``data:`` lines,
or ``"choices": [ {`` spaced) and a multi-line event whose first line ends with ``}`` (taken as whole,
its other lines dropped). It now counts SSE events as ``openai.sse.joined_data`` reads them, holding at
most a bounded start of the incomplete last event. All fail on main aa9796f9: the first three count 0
(pretty-printed: no usage learned), the fourth (any chunking and spelling against a json-module oracle)
undercounts, the fifth finds no bound."""

from __future__ import annotations

import json
import random

import pytest

from kvgate.extproc.output_events import CountingScanner
from kvgate.scheduling.types import Usage


def _chunk(delta: dict[str, object], index: int = 0) -> dict[str, object]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


ROLE = _chunk({"role": "assistant", "content": ""})
USAGE = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}  # fmt: skip


def pretty(obj: object, end: bytes = b"\n") -> bytes:
    """An event whose JSON spans several ``data:`` lines (the SSE spec joins them with newlines)."""
    return b"".join(b"data: " + ln.encode() + end for ln in json.dumps(obj, indent=1).split("\n")) + end


def spaced(obj: object, end: bytes = b"\n") -> bytes:
    """One line, JSON whitespace where a compact writer has none."""
    return b"data: " + json.dumps(obj).replace("[{", "[ {").replace('":', '" :').encode() + end + end


def _count(raw: bytes, size: int) -> CountingScanner:
    s = CountingScanner()
    for i in range(0, len(raw), size):
        s.feed(raw[i : i + size])
    s.finish()
    return s


@pytest.mark.parametrize("size", [1, 13, 100_000])
def test_a_pretty_printed_stream_counts_every_token(size: int) -> None:
    raw = b"".join(pretty(e) for e in (ROLE, _chunk({"content": "a"}), _chunk({"content": "b"}),
                                       _chunk({"content": "c"}))) + b"data: [DONE]\n\n"  # fmt: skip
    assert _count(raw, size).learned_usage() == Usage(completion_tokens=3)


@pytest.mark.parametrize("size", [1, 13, 100_000])
def test_a_spaced_one_line_stream_counts_every_token(size: int) -> None:
    raw = (
        b"".join(spaced(e) for e in (ROLE, _chunk({"content": "a"}), _chunk({"content": "b"})))
        + b"data: [DONE]\n\n"
    )
    assert _count(raw, size).output_events == 2


@pytest.mark.parametrize("size", [1, 13, 100_000])
def test_a_multiline_event_whose_first_line_ends_with_a_brace(size: int) -> None:
    token = (
        b'data: {"id": "c", "object": "chat.completion.chunk", "model": "m", "x": {}\n'
        b'data: , "choices": [\n'
        b'data: {"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}\n\n'
    )
    raw = spaced(ROLE) + spaced(_chunk({"content": "first"})) + token * 3 + b"data: [DONE]\n\n"
    assert _count(raw, size).output_events == 4


def _oracle(raw: bytes) -> int:
    """Events as the SSE spec cuts them, read with the json module: from the first with output, each
    one whose ``choices`` holds an object."""
    text = raw.decode().replace("\r\n", "\n")
    n, counting = 0, None
    for block in text.split("\n\n"):
        data = "\n".join(ln[6:] if ln.startswith("data: ") else ln[5:]
                         for ln in block.split("\n") if ln.startswith("data:"))  # fmt: skip
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        is_choice = isinstance(first, dict)
        if counting is None:
            delta = first.get("delta", {}) if isinstance(first, dict) else {}
            if is_choice and any(v and k != "role" for k, v in delta.items()):
                counting = True
                n = 1
            continue
        n += is_choice
    return n


def _random_stream(rng: random.Random) -> bytes:
    end = rng.choice([b"\n", b"\r\n"])
    forms = [lambda o: b"data: " + json.dumps(o, separators=(",", ":")).encode() + end + end,
             lambda o: spaced(o, end), lambda o: pretty(o, end)]  # fmt: skip
    one = rng.random() < 0.5  # (one form for the whole stream, or mixed)
    form = rng.choice(forms)
    parts = [(form if one else rng.choice(forms))(ROLE)]
    for _ in range(rng.randint(0, 30)):
        r = rng.random()
        if r < 0.05:
            parts.append(b": ping" + end + end)
        elif r < 0.1:  # a token whose text holds the pattern (escaped in JSON: not a choice)
            parts.append((form if one else rng.choice(forms))(_chunk({"content": '"choices": [{'})))
        else:
            parts.append((form if one else rng.choice(forms))(_chunk({"content": "t"}, rng.randint(0, 2))))
    if rng.random() < 0.3:
        parts.append((form if one else rng.choice(forms))(USAGE))
    return b"".join(parts) + b"data: [DONE]" + end + end


def test_any_chunking_and_spelling_counts_as_the_oracle() -> None:
    rng = random.Random(33)
    for _ in range(300):
        raw = _random_stream(rng)
        want = _oracle(raw)
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 12))))
        s = CountingScanner()
        for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            s.feed(raw[a:b])
        s.finish()
        assert s.output_events == want, raw


def test_a_huge_event_is_counted_once_from_a_bounded_start() -> None:
    huge = _chunk({"content": "x" * 600_000})  # (echo / logprobs sized)
    raw = pretty(ROLE) + pretty(_chunk({"content": "a"})) + pretty(huge) + pretty(_chunk({"content": "b"}))
    s = CountingScanner()
    held = 0
    for i in range(0, len(raw), 4096):
        s.feed(raw[i : i + 4096])
        held = max(held, len(s._partial))
    s.finish()
    assert s.output_events == 3
    assert held <= (64 << 10) + 4096  # (its start only, not the whole event)
