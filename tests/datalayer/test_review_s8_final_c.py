"""Review s8-final-c, C1: the scraper side (the reviewer's test, /work/team/reviews/s8-final-c-tests).

test_final_c_prefill_starts_empty_queue.py:
Review s8-final-c, C1: the carried queue takes the page's *prefill* requests' first tokens off the
page's waiting count, so a fresh page that reads saturated under the reference rule reads unsaturated
under the kvgate policy a few ms later, with nothing having left the server's queue.

The page shows the server full (running batch of 4: 2 of the gateway's requests decoding, 2 in prefill
without a first token) and 5 of the gateway's requests waiting. own_pending = 7 (every request without a
first token, prefill ones included). When the 2 prefill requests produce their first token (nothing
finishes, so nothing can leave the waiting queue: the batch is still full) the carried queue is
W + pending - own_pending = 5 + 5 - 7 = 3. e18ae8a's F1 fix knows those 2 were running on the page (its
``prefill``), but only for the KV share, not for the queue."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.scheduling.framework import PluginHandle

from ._metrics_page import PAGE, Server, kvgate_detector, one_endpoint, scrape_once

PER_REQ = 200  # prompt + max_tokens of each request


async def test_prefill_first_tokens_do_not_empty_the_pages_queue(server: Server) -> None:
    store, ep = one_endpoint(server.address)
    inf = ep.inflight
    inf.requests, inf.decoding = 9, 2
    inf.sent_tokens = 9 * PER_REQ
    inf.unstarted_tokens = 7 * PER_REQ
    server.page = lambda: PAGE % (5, 4, "0.30")  # W=5, R=4 (2 decoding + 2 prefill), all its own
    await scrape_once(ep, store)
    det = kvgate_detector()
    ref = UtilizationDetector("r", PluginHandle(), own_load_staleness=0.0)
    assert ref.endpoint_saturation(ep, 0.05) == pytest.approx(1.0)  # 5 waiting / 5: saturated
    assert det.endpoint_saturation(ep, 0.05) >= 1.0
    # The 2 prefill requests get their first token (Director.on_first_token); nothing finishes.
    for _ in range(2):
        inf.decoding += 1
        inf.started += 1
        inf.unstarted_tokens -= PER_REQ
    # Same page, 50 ms old (fresh for the reference): still 5 waiting on a full batch.
    assert ref.endpoint_saturation(ep, 0.05) == pytest.approx(1.0)
    score = det.endpoint_saturation(ep, 0.05)
    # main: queue 3 -> 0.6 (KV (0.30 + 1,000/8,192)/0.8 = 0.53): unsaturated, sheddable work admitted.
    assert score >= 1.0, f"fresh saturated page carried to {score:.3f} by the prefill requests' first tokens"
    # kvgate (review s8-final-c C1 fix): only as many starts as the page showed in prefill are taken as
    # theirs; a further start is one of the waiting requests leaving the queue (5 + 4 - 7 + 2 = 4).
    inf.decoding += 1
    inf.started += 1
    inf.unstarted_tokens -= PER_REQ
    assert det.endpoint_saturation(ep, 0.05) == pytest.approx(max(4 / 5, (0.30 + 1_000 / 8_192) / 0.8))
