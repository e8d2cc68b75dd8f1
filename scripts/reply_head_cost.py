"""CPU cost of ``kvgate serve``'s whole-answer head when the server sent no ``Set-Cookie`` (small33 (a)):
``pass_upstream_headers``, the ``Response`` and the front's ``_head``, each tree's own call shape.

    PYTHONPATH=<tree>/src python scripts/reply_head_cost.py LABEL

Prints ns of thread CPU per answer, best of 9 x 100,000. Run two trees alternately (before / after) in
one lock hold and compare medians; pure Python (a compiled build makes the slot store ~free).
"""

from __future__ import annotations

import inspect
import sys
import time
import timeit

from kvgate.gateway.stream import pass_upstream_headers
from kvgate.httpfront.server import Response, _head

UP = {
    "date": "Mon, 07 Dec 2026 12:00:00 GMT",
    "server": "uvicorn",
    "content-length": "250",
    "content-type": "application/json",
}
BODY = b"x" * 250


def _with_cookies() -> bytes:
    h = {"x-request-id": "abc123"}
    h["Content-Type"] = UP.get("content-type", "application/json")
    c = pass_upstream_headers(UP, h)
    r = Response(200, BODY, None, h, None, c)
    return _head(r.status, r.headers, r.content_type, len(r.body), False, False, r.set_cookies)


def _before() -> bytes:
    h = {"x-request-id": "abc123"}
    h["Content-Type"] = UP.get("content-type", "application/json")
    pass_upstream_headers(UP, h)
    r = Response(200, BODY, None, h)
    return _head(r.status, r.headers, r.content_type, len(r.body), False, False)


def main() -> None:
    whole = _with_cookies if "set_cookies" in inspect.signature(_head).parameters else _before
    n = 100_000
    best = min(timeit.repeat(whole, number=n, repeat=9, timer=time.thread_time)) / n * 1e9
    print(f"{sys.argv[1] if len(sys.argv) > 1 else 'tree'}: {best:.0f} ns")


if __name__ == "__main__":
    main()
