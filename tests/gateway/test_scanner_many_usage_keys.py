"""s17-fixes-b L8: BodyUsageScanner looks on after a ``usage`` key that is not a usage object by RECURSING
(``_take`` -> ``feed`` -> ``_take`` ...: two frames per such key in one chunk), so a relayed answer with
~500 ``"usage": null`` keys in one read raises RecursionError out of ``Proxy._relay_whole`` (after the
head went out: the front then writes a fresh 500 response into the started chunked body).
Fixed (fixfb17b): ``feed`` loops over what is left after such a value instead.
"""

from __future__ import annotations

import json

from kvgate.openai.usage import BodyUsageScanner

U = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_many_non_usage_usage_keys_in_one_chunk() -> None:
    body = json.dumps({"data": [{"usage": None, "i": i} for i in range(2000)], "usage": U}).encode()
    s = BodyUsageScanner()
    for at in range(0, len(body), 65536):
        s.feed(body[at : at + 65536])
    u = s.usage()
    assert u is not None and u.prompt_tokens == 7
