"""The big-answer usage scanner's spelled-key search on bodies with many ``\\u00`` escapes (closing-s19
"Gateway"; review s19-gw L4): any ``\\u00`` before the next plain key (``json.dumps`` writes Latin-1 letters
so, any encoder control characters) sent the pass to ``_CANDIDATE_ANY``, a regex that starts at every quote:
1.36x the scanner's CPU on such a body. Now only the escape of one of the key's letters (``\\u0075 \\u0073
\\u0061 \\u0067 \\u0065``), which every spelled key holds, does. Deterministic form (no wall clock): the bytes
the spelled-key regex reads. The time: ``scripts/usage_scanner_cost.py`` (its ``escapes`` body)."""

from __future__ import annotations

import json

import pytest

import kvgate.openai.usage as usage_mod
from gateway.test_scanner_spelled_keys_linear import _Counted
from kvgate.openai.usage import BodyUsageScanner

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _scan(body: bytes, piece: int) -> object:
    s = BodyUsageScanner()
    for i in range(0, len(body), piece):
        s.feed(body[i : i + piece])
    return s.usage()


@pytest.mark.parametrize(
    "text",
    ["caf\u00e9 \u00e0 la cr\u00e8me", "\x1b[0m", "\u00ff\x00\x7f"],
    ids=["latin-1", "control", "mixed"],
)
@pytest.mark.parametrize("piece", [1 << 16, 1 << 13])
def test_escapes_of_other_characters_never_reach_the_spelled_key_search(
    monkeypatch: pytest.MonkeyPatch, text: str, piece: int
) -> None:
    """FAILED before: the regex read about the whole body (each pass whose bytes held a ``\\u00``)."""
    counted = _Counted(usage_mod._CANDIDATE_ANY)
    monkeypatch.setattr(usage_mod, "_CANDIDATE_ANY", counted)
    tokens = [{"123": {"logprob": -1.5, "rank": 1, "decoded_token": text}}] * 20_000
    body = json.dumps({"prompt_logprobs": [None, *tokens], "usage": USAGE}).encode()
    assert b"\\u00" in body
    usage = _scan(body, piece)
    assert usage is not None and usage.prompt_tokens == 7  # type: ignore[attr-defined]
    assert counted.read == 0, (counted.read, len(body))


def test_letter_escapes_in_values_still_cost_a_bounded_number_of_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: values full of the letters' escapes (no encoder writes them; a hostile server could) and
    the usage under a spelled key last: found, the regex reading the body a bounded number of times."""
    counted = _Counted(usage_mod._CANDIDATE_ANY)
    monkeypatch.setattr(usage_mod, "_CANDIDATE_ANY", counted)
    value = "\\u0075\\u0073\\u0061\\u0067\\u0065 " * 4
    items = ",".join(f'{{"t":"{value}"}}' for _ in range(5000))
    body = ('{"a":[' + items + '],"\\u0075sage":' + json.dumps(USAGE) + "}").encode()
    usage = _scan(body, 1 << 16)
    assert usage is not None and usage.prompt_tokens == 7  # type: ignore[attr-defined]
    assert counted.read <= 3 * len(body), (counted.read, len(body))
