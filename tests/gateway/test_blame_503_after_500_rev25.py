"""rev-gw25 F1: gw25 made a 429 after a 500 no verdict on the suspect ("busy: it ran nothing"), but a 503
(vLLM overloaded or draining: it ran nothing either; proxy.py's own comment: "the server's state, not the
request's") still counts as "answered otherwise": 500, 503, 500 charges both 500s,
the bug F5 fixed for 429."""

from __future__ import annotations

from typing import Any

from gateway.test_blame_429_after_500_gw25 import _run


async def test_a_503_between_two_500s_charges_neither_500(backends: Any) -> None:
    status, failures = await _run(backends, [500, 503, 500])
    assert status == 500
    # the middle server's own 503 is charged as before (502/503/504: ``_failed``); the 500s: neither
    assert (failures[0], failures[2]) == (0, 0), failures
