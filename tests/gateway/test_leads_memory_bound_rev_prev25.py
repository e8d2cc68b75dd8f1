"""s25-rev-prev25 F3: ``openai.responses.Leads`` bounded the characters of the heads it keeps (4 Mi, "about
4 MB of ASCII": docs/scheduling.md, CHANGELOG), not their memory: a door that sees many short distinct
heads (an ``instructions`` with a date, a user name or a request id) kept ~233,000 entries of ~200 bytes
each, ~46 MB per door process, and a head was kept for every Responses request, also with ``store:
false`` and ``--response-turns 0``, where no turn can name it. Now each head's str and key and the
OrderedDict's own memory are counted against ``LEADS_BYTES`` (4 MiB). Measured with tracemalloc (memory,
not time). Moved from the review's directory (fixprev25) and extended: short ASCII and non-ASCII heads,
64 KB heads, the turns-off and unstored cases, a reload to no turns. All fail on 968691a2's src (the
review's case: 3.9 MB for 15,420 heads against a 256 KB bound)."""

from __future__ import annotations

import sys
import tracemalloc

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.openai.request import responses_lead
from kvgate.openai.responses import Leads


def _held(cap: int, head_of: object, n: int) -> tuple[int, Leads]:
    """Memory held by a ``Leads(cap)`` after ``n`` distinct heads (``head_of(i)``) went through it."""
    tracemalloc.start()
    try:
        leads = Leads(cap)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            head = head_of(i)  # type: ignore[operator]
            leads.key(head + "<|user|>\nhi\n", len(head), 0)
            del head
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held, leads


@pytest.mark.parametrize(
    ("shape", "head_of", "n"),
    [
        # a distinct short head per first turn ("<|system|>\n{i}\n"): the review's case
        ("short ascii", lambda i: responses_lead(f"{i}"), 20_000),
        # the same, non-ASCII (4 bytes a character in CPython)
        ("short non-ascii", lambda i: responses_lead(f"\U0001f600 {i}"), 20_000),
        # long heads (64 KB of tools + instructions)
        ("64 KB", lambda i: responses_lead(f"{i:08d}" + "x" * 65_536), 40),
    ],
)
def test_the_kept_heads_stay_near_their_documented_bound(shape: str, head_of: object, n: int) -> None:
    cap = 256 * 1024  # (a sixteenth of the default: the same per-entry overhead, faster)
    held, leads = _held(cap, head_of, n)
    one = sys.getsizeof(head_of(0))  # type: ignore[operator]
    # What is counted is what is held (the strs, their keys, the OrderedDict's table and nodes): the
    # docs' bound, filled. (On 968691a2: 3.9 MB for 15,420 short heads, the bound 256 KB.)
    msg = f"{shape}: {held / 1e3:.1f} KB for {len(leads)} heads (bound {cap / 1e3:.1f} KB)"
    assert 0.95 * cap - one <= held <= 1.02 * cap, msg  # (filled up to one head)
    assert leads.held_bytes <= cap


def test_the_default_bound_is_the_documented_4_mib() -> None:
    assert Leads().max_bytes == 4 * 1024 * 1024  # (docs/scheduling.md, CHANGELOG)


def test_no_head_is_kept_for_a_turn_that_is_not() -> None:
    leads = Leads()
    head = responses_lead("be brief")
    key = leads.key(head + "<|user|>\nhi\n", len(head), 0, keep=False)
    assert key == (hash(head) or 1) and len(leads) == 0 and leads.held_bytes == Leads().held_bytes


async def _first_turns(extra: dict[str, object], bodies: list[dict[str, object]]) -> int:
    async with serving(ResponsesStore("s0")) as (store,):
        cfg = make_config([store.address], extra=extra)
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            for body in bodies:
                async with s.post(base_url(gw) + "/v1/responses", json=body) as r:
                    assert r.status == 200
            assert gw.proxy is not None
            return len(gw.proxy.leads)


async def test_a_door_keeps_heads_only_for_turns_it_keeps() -> None:
    heads = [{"model": "m", "instructions": f"today is day {i}", "input": "hi"} for i in range(3)]
    assert await _first_turns({}, heads) == 3  # (stored turns, kept: their heads too)
    unstored = [{**b, "store": False} for b in heads]
    assert await _first_turns({}, unstored) == 0  # (store: false: no turn, no head)
    assert await _first_turns({"limits": {"responseTurns": 0}}, heads) == 0  # (turns off)


async def test_a_reload_to_no_turns_lets_the_kept_heads_go() -> None:
    async with (
        serving(ResponsesStore("s0")) as (store,),
        running_gateway(make_config([store.address])) as gw,
        aiohttp.ClientSession() as s,
    ):
        assert gw.proxy is not None
        url = base_url(gw) + "/v1/responses"
        for i in range(3):
            body = {"model": "m", "instructions": f"today is day {i}", "input": "hi"}
            async with s.post(url, json=body) as r:
                assert r.status == 200
            if i == 1:
                assert len(gw.proxy.leads) == 2
                gw.proxy.turns.resize(0)  # (a reload's limits.responseTurns: 0, as apply_limits does)
        assert len(gw.proxy.leads) == 0
