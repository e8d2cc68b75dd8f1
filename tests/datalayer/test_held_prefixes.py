"""The KV the utilization detector's carry-forward charges a request sent after a page (review s8-sat
R3): every prompt token, except the prefix that a request of this gateway in flight at that endpoint
already holds (a server counts a block once however many running requests reference it; a hit on an
idle cached prefix takes its blocks back into use, so that is charged), and the output it can decode
while the estimate is read (its expected output, at most what the endpoint's learned pace decodes in
the detector's horizon)."""

from __future__ import annotations

from array import array

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.prefixrefs import KEY_TOKENS, MAX_KEYS, HeldPrefixes, chain_keys
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest

ADDR = "10.0.0.1:8000"
PREFIX = "".join(f"tenant-7 system prompt sentence {i:04d}. " for i in range(200))  # ~8k chars, ~2k tokens
MAX_TOKENS = 16


def _store() -> tuple[EndpointStore, Endpoint]:
    store = EndpointStore([make_endpoint(ADDR)])
    ep = store.get(ADDR)
    assert ep is not None
    # vLLM's page (the prefix index's block size follows it): 64 blocks of 128 tokens = 8,192 tokens.
    ep.metrics = EndpointMetrics(block_size=128, num_gpu_blocks=64, kv_cache_usage=0.0, updated_at=0.0)
    return store, ep


def _send(d: Director, ep: Endpoint, rid: str, suffix: str) -> tuple[InferenceRequest, int]:
    """Pick and dispatch one request; what it added to ``sent_tokens``."""
    r = InferenceRequest(rid, "m", prompt_text=PREFIX + suffix, max_tokens=MAX_TOKENS)
    assert d.pick(r).primary is ep
    before = ep.inflight.sent_tokens
    d.on_dispatched(r, ep)
    return r, ep.inflight.sent_tokens - before


def _prompt(r: InferenceRequest) -> int:
    return len(r.prompt_text) // 4


def test_keys_are_prefix_closed_and_counted_per_request() -> None:
    held = HeldPrefixes()
    pk = chain_keys(list(range(100, 120)), 128)  # 20 blocks of 128 tokens: a key every 2
    keys = tuple(pk.keys)
    assert keys == tuple(range(101, 120, 2)) and pk.tokens(1) == KEY_TOKENS and pk.tokens(10) == 2560
    assert held.take("a", keys) == 0  # nothing held there yet; now held once
    assert held.take("a", keys[:3]) == 3
    assert held.take("b", keys) == 0
    assert held.take("a", (101, 103, 999, 107)) == 2  # only the leading run counts
    for ks in (keys, (101, 103, 999, 107), keys[:3]):
        held.release("a", ks)
    held.release("b", keys)
    assert len(held) == 0
    assert held.take("a", keys) == 0


def test_a_prefix_its_own_request_in_flight_holds_is_charged_once() -> None:
    store, ep = _store()
    d = build_director("kvgate", store, clock=lambda: 0.0)
    a, sent_a = _send(d, ep, "a", "question one: what is the first thing?")
    assert sent_a == _prompt(a) + MAX_TOKENS  # nothing held there: the whole prompt
    b, sent_b = _send(d, ep, "b", "question two: and the second one?")
    # The shared ~2k-token prefix is A's, in flight there: B is charged its own part (at most a key's
    # worth of the prefix more) and its output. Before: its whole prompt (~2k tokens more).
    assert sent_b <= _prompt(b) - len(PREFIX) // 4 + KEY_TOKENS + 128 + MAX_TOKENS
    for r in (a, b):
        d.on_first_token(r, ep)
        d.on_finished(r, ep, None, True)
    # Nothing of its own holds the prefix now: a hit takes the idle cached blocks back into use.
    c, sent_c = _send(d, ep, "c", "question three: the last?")
    assert sent_c == _prompt(c) + MAX_TOKENS
    track = d._tracks[("c", ADDR)].keys
    assert track is not None and len(d._held) == len(track.keys)


def test_requests_sharing_a_running_prefix_do_not_saturate_a_small_cache() -> None:
    """R3's case (the real-vLLM setup: 8,192-token cache, ~1.9k-token prompts sharing all but a few
    tokens): a page at KV 0.25 showing A running (its prefix in the page's KV), then three requests of
    the same tenant sent. Real use: about 0.25 + 3 x (their own few tokens + output) / 8,192. Now the
    KV term is (0.25 + 3 x 126 / 8,192) / 0.8 = 0.37 (the score is the queue's, 3 / 5); before, each
    was charged its whole prompt, (0.25 + 3 x 1,918 / 8,192) / 0.8 = 1.19: saturated until the next
    scrape."""
    store, ep = _store()
    d = build_director("kvgate", store, clock=lambda: 0.0)
    a, _ = _send(d, ep, "a", "question one")
    d.on_first_token(a, ep)
    inf = ep.inflight
    # The page, as the scraper leaves it: A running, explained by this gateway's own load.
    ep.metrics = EndpointMetrics(
        waiting_queue_size=0,
        running_requests=1,
        kv_cache_usage=0.25,
        block_size=128,
        num_gpu_blocks=64,
        updated_at=0.0,
        own_explained=True,
        own_pending=0,
        own_sent_tokens=inf.sent_tokens - inf.sent_base,
        own_started=inf.started - inf.started_base,
    )
    for i in range(3):
        _send(d, ep, f"b{i}", f"question {i + 2}")
    assert d.detector is not None
    score = d.detector.endpoint_saturation(ep, 0.3)
    assert score < 0.8, f"three requests sharing a running prefix read {score:.2f}"
    # Their own parts still count: three more distinct ~2k-token prompts would saturate it.
    for i in range(3):
        r = InferenceRequest(f"x{i}", "m", prompt_text=f"another tenant {i} " * 500, max_tokens=MAX_TOKENS)
        d.on_dispatched(r, ep)
    assert d.detector.endpoint_saturation(ep, 0.3) >= 1.0


def test_the_output_charged_is_what_it_can_decode_before_the_next_page() -> None:
    """R3's second case: one request with ``max_tokens: 8192`` on an 8,192-token cache was charged 8,192
    tokens of output at once and saturated the endpoint on its own until the next scrape. It decodes one
    token per engine step: with a learned pace (seconds per token-slot), in the detector's 1 s horizon
    at most 1 / (pace x (batch + 1 + 64)) tokens. Without a learned pace, the whole expected output."""
    prompt = "one-off question " * 40  # 170 tokens, no prefix held
    store, ep = _store()
    d = build_director("kvgate", store, clock=lambda: 0.0)
    r = InferenceRequest("long", "m", prompt_text=prompt, max_tokens=8192)
    d.on_dispatched(r, ep)
    assert ep.inflight.sent_tokens == _prompt(r) + 8192  # pace not learned: the upper bound

    store, ep = _store()
    d = build_director("kvgate", store, clock=lambda: 0.0)
    ep.inflight.pace = 0.0005  # 32.5 ms a step with one sequence: 31 tokens in 1 s
    m = ep.metrics  # an idle page, explained, before the request is sent
    m.own_explained, m.own_pending, m.own_sent_tokens = True, 0, 0
    r = InferenceRequest("long", "m", prompt_text=prompt, max_tokens=8192)
    d.on_dispatched(r, ep)
    assert ep.inflight.sent_tokens == _prompt(r) + 31
    assert ep.inflight.pending_decode_tokens == 8192  # the scorers' expected work is unchanged
    assert d.detector is not None
    # The queue's 1 / 5; KV (170 + 31) / 8,192 / 0.8 = 0.03. Before: (170 + 8,192) / 8,192 / 0.8 = 1.28.
    assert d.detector.endpoint_saturation(ep, 0.3) == 0.2


def _long_prompt_director(block: int) -> tuple[Director, Endpoint]:
    store = EndpointStore([make_endpoint(ADDR)])
    ep = store.get(ADDR)
    assert ep is not None
    ep.metrics = EndpointMetrics(block_size=block, num_gpu_blocks=4096, kv_cache_usage=0.0, updated_at=0.0)
    return build_director("kvgate", store, clock=lambda: 0.0), ep


def test_a_prefix_past_the_hashed_window_held_in_flight_is_not_charged_again() -> None:
    """Review s9-dl D1: at vLLM's default 16-token blocks the approximate index hashes a prompt's first
    256 blocks (4,096 tokens); the keys were only the window's, so of a ~11k-token prefix that a request
    in flight there holds, a second request was charged ~6.9k tokens again (6,924). The tail's keys
    (``PrefixMatch.tail_keys``, chained on from the window) count the rest."""
    d, ep = _long_prompt_director(16)
    prefix = "".join(f"conversation history sentence number {i:05d}. " for i in range(1000))  # ~11k tokens
    sent = []
    for rid, q in (("a", "first question?"), ("b", "second question?")):
        r = InferenceRequest(rid, "m", prompt_text=prefix + q, max_tokens=MAX_TOKENS)
        assert d.pick(r).primary is ep
        before = ep.inflight.sent_tokens
        d.on_dispatched(r, ep)
        sent.append(ep.inflight.sent_tokens - before)
    assert sent[0] == (len(prefix) + len("first question?")) // 4 + MAX_TOKENS
    own = len("second question?") // 4
    assert sent[1] <= own + KEY_TOKENS + 16 + MAX_TOKENS, sent


def test_the_keys_kept_per_pick_are_compact_and_bounded() -> None:
    """Review s9-dl D4: a pick keeps its keys until its request finishes (or ``MAX_TRACKED`` evicts it,
    for one a door never finishes): 8-byte unsigned ints in an array, at most ``MAX_KEYS`` of them
    however long the prompt (before: a tuple of int objects, up to 256 window keys)."""
    d, ep = _long_prompt_director(256)  # 256 blocks of 256 tokens: a 64k-token window, a key per block
    r = InferenceRequest("long", "m", prompt_text="long document paragraph. " * 40000, max_tokens=MAX_TOKENS)
    assert d.pick(r).primary is ep
    d.on_dispatched(r, ep)
    keys = d._tracks[("long", ADDR)].keys
    assert keys is not None
    assert isinstance(keys.keys, array) and keys.keys.typecode == "Q"
    assert keys.head == MAX_KEYS // 2 and MAX_KEYS // 2 < len(keys.keys) <= MAX_KEYS
    # The same prompt again: all of its keys held, so charged at most one key (two blocks) of it.
    r2 = InferenceRequest("again", "m", prompt_text=r.prompt_text, max_tokens=MAX_TOKENS)
    assert d.pick(r2).primary is ep
    before = ep.inflight.sent_tokens
    d.on_dispatched(r2, ep)
    covered = keys.tokens(len(keys.keys))
    assert ep.inflight.sent_tokens - before <= _prompt(r2) - covered + MAX_TOKENS
    assert covered > 64 * 1024  # (the tail counted too, not only the window)


def test_the_tail_keys_chain_on_from_the_window() -> None:
    window = list(range(1, 33))  # 32 blocks of 16 tokens, 64 characters each: a key every 16 blocks
    tail = "".join(f"{i:07d}|" * 128 for i in range(5)) + "part"  # 5 x 16 blocks (and a part) past it
    data = "w" * 64 * 32 + tail
    pk = chain_keys(window, 16, data, 64)
    # the window's 2 keys (256 tokens each), then the tail's full 1,024-character pieces (256 tokens)
    assert list(pk.keys[:2]) == [16, 32] and pk.head == 2 and len(pk.keys) == 7
    assert [pk.tokens(n) for n in range(8)] == [0, 256, 512, 768, 1024, 1280, 1536, 1792]
    held = HeldPrefixes()
    assert held.take("a", pk.keys) == 0
    other = chain_keys(window, 16, data[:3100] + "x" + data[3101:], 64)  # differs in the tail's 2nd piece
    assert other.tokens(held.take("a", other.keys)) == 768
    moved = chain_keys([*window[:-1], 99], 16, data, 64)  # the window ends otherwise: so does every tail key
    assert not set(moved.keys[2:]) & set(pk.keys[2:]) and held.take("a", moved.keys) == 1
    # Token ids (bytes) and non-ASCII text key their tails the same way: equal prefixes, equal keys.
    ids = bytes(range(256)) * 40
    assert list(chain_keys(window, 16, ids, 64).keys) == list(chain_keys(window, 16, ids + b"more", 64).keys)
    text = "w" * 64 * 32 + "é" * 1024 * 3
    u1, u2 = chain_keys(window, 16, text, 64), chain_keys(window, 16, text[:-5] + "abcde", 64)
    assert len(u1.keys) == 5 and list(u1.keys[:4]) == list(u2.keys[:4]) and u1.keys[4] != u2.keys[4]
