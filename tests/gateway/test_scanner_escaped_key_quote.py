"""Review s17-fixes-b L3: BodyUsageScanner's escaped-quote check (a ``"usage":`` match whose opening quote
is escaped lies inside a string) had no test. The only JSON where it matters: a key whose text ends with
``"usage`` (``{"\\"usage": {...}}``): its bytes hold ``"usage":`` after a backslash. That value is not the
usage; the later top-level ``usage`` is."""

from __future__ import annotations

import json

import pytest

from kvgate.openai.usage import BodyUsageScanner

FAKE = {"prompt_tokens": 99, "completion_tokens": 99, "total_tokens": 198}
REAL = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
BODY = json.dumps({'"usage': FAKE, "usage": REAL}).encode()


@pytest.mark.parametrize("piece", [len(BODY), 1, 7], ids=["whole", "bytewise", "by-7"])
def test_a_key_ending_in_quote_usage_is_not_the_usage(piece: int) -> None:
    assert b'\\"usage":' in BODY
    s = BodyUsageScanner()
    for at in range(0, len(BODY), piece):
        s.feed(BODY[at : at + piece])
    u = s.usage()
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (7, 3)
