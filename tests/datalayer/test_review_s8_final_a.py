"""Review s8-final-a: the scraper side (the reviewer's tests, /work/team/reviews/s8-final-a-tests)."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.scheduling.framework import PluginHandle

from ._metrics_page import PAGE, Server, kvgate_detector, one_endpoint, scrape_once

# test_final_a_prefill_counted_twice.py (review s8-final-a)
# F1: 4a61b31 counts the tokens of every request of its own without a first token when the page was
# asked for (``InFlight.unstarted_tokens``) as "not on the page's KV", and the carry now applies at
# every age, fresh pages included. But a request the page shows *running* that has no first token yet
# is in prefill: vLLM allocated its blocks when it scheduled it, so its prompt is already in the page's
# ``kv_cache_usage``. Its whole prompt + expected output is added again. On the default ``kvgate``
# policy (ownLoadStalenessThreshold 1 s), a page 10 ms old showing an unsaturated endpoint (two of the
# gateway's own requests in prefill, KV 0.55, nothing queued) scores 1.33: saturated, so a sheddable
# request is shed (429) and flow control holds requests, until the next scrape (up to 0.5 s later).
# Before 4a61b31 the same fresh page was read as is (0.69), and it still is with the reference rule.
PROMPT, MAX_TOKENS = 2_000, 100  # two requests; 8,192-token cache


async def test_a_fresh_page_showing_its_requests_in_prefill_is_not_read_as_saturated(server: Server) -> None:
    store, ep = one_endpoint(server.address)
    # Two requests of its own dispatched (as Director.on_dispatched charges them), both scheduled by
    # the server and prefilling: no first token yet. The page shows them running, their prompt blocks
    # in the KV usage (0.05 before + 4,000 / 8,192 tokens ~ 0.54).
    inf = ep.inflight
    inf.requests, inf.decoding = 2, 0
    inf.sent_tokens = 10_000 + 2 * (PROMPT + MAX_TOKENS)
    inf.unstarted_tokens = 2 * (PROMPT + MAX_TOKENS)
    server.page = lambda: PAGE % (0, 2, "0.55")
    await scrape_once(ep, store)
    # Reference reading of the same 10 ms-old page: max(0/5, 0.55/0.8) = 0.69.
    ref = UtilizationDetector("r", PluginHandle(), own_load_staleness=0.0)
    assert ref.endpoint_saturation(ep, 0.01) == pytest.approx(0.55 / 0.8)
    kvgate = kvgate_detector()
    assert kvgate.own_load_staleness == 1.0  # the default policy carries pages forward
    score = kvgate.endpoint_saturation(ep, 0.01)
    # main: (0.55 + 4,200 / 8,192) / 0.8 = 1.33: the prompts on the page counted a second time.
    assert score < 1.0, f"fresh unsaturated page scored {score:.3f} (saturated) under the kvgate policy"
    assert score == pytest.approx(0.55 / 0.8)  # nothing sent since the page: the reference reading


# test_final_a_started_during_get.py (review s8-final-a)
# F3: 0f6dc02 takes the requests whose first token arrived during the GET out of ``own_pending`` as
# ``max(0, inf.decoding - own_decoding)``: the *net* change of ``decoding``. Requests that finish during
# the same GET lower ``decoding`` too, so starts are hidden by finishes, ``own_pending`` stays too high,
# and the carried queue (``W + pending - own_pending``) drops the page's waiting requests, for every age
# of the page (up to the 0.5 s quiet pause; the carry now applies to fresh pages too).
#
# Case: 10 of its own requests there, 5 decoding, 5 waiting. During the GET the server finishes 3 and
# starts 3 of the waiting ones; the page is rendered after that: 2 waiting, 5 running. After the GET the
# gateway has 7 requests, 5 decoding, 2 without a first token. Right: own_pending 2 (3 started), queue
# 2 + 2 - 2 = 2. main: started = 5 - 5 = 0, own_pending 5, queue max(0, 2 + 2 - 5) = 0: the page's two
# waiting requests vanish (score 0.125 instead of >= 0.4). A monotonic count of first tokens (not the
# net of decoding) would not lose them.
TOKENS = 100  # per request (prompt + expected output): KV stays small, the queue term decides


async def test_first_tokens_during_the_get_are_not_hidden_by_finishes(server: Server) -> None:
    store, ep = one_endpoint(server.address)
    inf = ep.inflight
    inf.requests, inf.decoding = 10, 5
    inf.sent_tokens = 10_000
    inf.unstarted_tokens = 5 * TOKENS
    state = {"page": PAGE % (5, 5, "0.1")}

    def finish_three_start_three() -> None:  # as Director.on_finished / on_first_token do
        inf.requests -= 3
        inf.decoding -= 3  # three decoding requests finish
        inf.decoding += 3  # three waiting ones get their first token
        inf.started += 3
        inf.unstarted_tokens -= 3 * TOKENS
        state["page"] = PAGE % (2, 5, "0.1")  # the page shows the state after both

    server.during = finish_three_start_three
    server.page = lambda: state["page"]
    await scrape_once(ep, store)
    d = UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)
    for now in (0.01, 0.3):  # a fresh page, and one in the quiet pause; nothing changed since
        score = d.endpoint_saturation(ep, now)
        assert score >= 2 / 5, f"at {now}: score {score:.3f}, the page's 2 waiting requests dropped"
