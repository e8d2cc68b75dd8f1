"""Review s19-gw L5 (98d5671): BodyUsageScanner was quadratic in a piece on a body with many nested keys
spelled with ``\\u`` escapes. After each spelled candidate (``_CANDIDATE_ANY``, found before the next plain
one) the next pass ran ``_CANDIDATE.search(buf, i)`` again from just past it, and with no plain ``"usage"``
later in the piece that search read to the piece's end every time. 32,000 ``{"\\u0075sage":1}`` in one
array (531 KiB): 0.96 s of event-loop CPU in 64 KiB pieces, 7.5 s in 1 MiB pieces, against 2 ms on 98d5671^
and ~60 ms for the same body with plain nested ``"usage"`` keys (the review's figures, load ~6). Only an
upstream that spells keys so can do it (no real encoder escapes ASCII letters): a misbehaving or hostile
model server (or a member cluster's gateway behind --clusters) stalled every request of the worker.
Deterministic form here: the bytes the plain candidate search reads, summed, stay within a few times the
body (linear), as they do for plain keys; no wall-clock assertion. The fix keeps the plain candidate across
passes (``BodyUsageScanner._lex``). The spelled cases fail before it (903ccbe: ~1,900x the body, 253 MB
read for a 136 KB body; the 1 MiB-piece case took ~7 s), pass after; the plain case is the control.
"""

from __future__ import annotations

from typing import Any

import pytest

import kvgate.openai.usage as usage_mod
from kvgate.openai.usage import BodyUsageScanner


class _Counted:
    def __init__(self, pattern: Any) -> None:
        self.pattern, self.read = pattern, 0

    def search(self, buf: Any, pos: int = 0, *rest: Any) -> Any:
        m = self.pattern.search(buf, pos, *rest)
        end = (rest[0] if rest else len(buf)) if m is None else m.end()
        self.read += max(0, end - pos)
        return m

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


@pytest.mark.parametrize(
    ("item", "count", "piece"),
    [
        (b'{"\\u0075sage":1},', 8000, 1 << 16),
        (b'{"\\u0075sage":1},', 32000, 1 << 20),  # (the review's slow form: ~7 s before)
        (b'{"usage":1},', 8000, 1 << 16),
    ],
    ids=["spelled", "spelled-1MiB-pieces", "plain"],
)
def test_the_candidate_search_reads_the_body_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch, item: bytes, count: int, piece: int
) -> None:
    counted = _Counted(usage_mod._CANDIDATE)
    monkeypatch.setattr(usage_mod, "_CANDIDATE", counted)
    body = b'{"a":[' + item * count + b'{}],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    s = BodyUsageScanner()
    for i in range(0, len(body), piece):
        s.feed(body[i : i + piece])
    s.feed(b"", final=True)
    assert s.usage() is not None
    assert counted.read <= 4 * len(body), (counted.read, len(body))
