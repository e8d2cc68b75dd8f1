"""A Responses follow-up repeating its earlier turn's head (tools + ``instructions``) is not hashed again:
the door keeps the latest heads by key (``openai.responses.Leads``) and compares the follow-up's head with
the one its turn's key names (a memcmp) instead of hashing it (SipHash, 18.5 us at 64 KB: review
s24-rev-fix24a F7, prev25). Same keys as hashing gives, so the same heads handed on. Real HTTP through an
in-process ``GatewayServer`` to Responses stores; the module's ``hash`` counted."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

import kvgate.openai.responses as responses
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore

HEAD = "You are a careful assistant who cites its sources. " * 1300  # (~64 KB)


async def test_a_follow_up_with_its_turns_head_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []

    def counted(value: Any) -> int:
        hashed.append(len(value))
        return hash(value)

    monkeypatch.setattr(responses, "hash", counted, raising=False)
    async with serving(ResponsesStore("s0")) as stores:
        cfg = make_config([st.address for st in stores])
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/responses"
            body: dict[str, Any] = {"model": "m", "instructions": HEAD, "input": "hi"}
            async with s.post(url, json=body) as r:
                assert r.status == 200
                rid = (await r.json())["id"]
            assert len(hashed) == 1 and hashed[0] >= len(HEAD)  # (the first turn's head)
            for turn in range(3):
                body = {
                    "model": "m",
                    "instructions": HEAD,
                    "input": f"more {turn}",
                    "previous_response_id": rid,
                }
                async with s.post(url, json=body) as r:
                    assert r.status == 200
                    rid = (await r.json())["id"]
            assert len(hashed) == 1, hashed  # (main: once per request, 4)
            # Another head is hashed (its own key): the earlier chain is not handed on.
            body = {"model": "m", "instructions": HEAD[:-1] + "!", "input": "x", "previous_response_id": rid}
            async with s.post(url, json=body) as r:
                assert r.status == 200
            assert len(hashed) == 2


def test_the_key_is_hashings_and_the_kept_heads_are_bounded() -> None:
    from kvgate.openai.responses import Leads

    leads = Leads()
    a, b = "a" * 100 + " question", "b" * 100 + " question"
    ka = leads.key(a, 100, 0)
    assert ka == (hash(a[:100]) or 1)
    assert leads.key(a, 100, ka) == ka  # (kept: compared, same key)
    assert leads.key(b, 100, ka) == (hash(b[:100]) or 1) != ka  # (same length, another head)
    leads.max_bytes = leads.held_bytes + 50  # (room for these two only: a third pushes the oldest out)
    assert leads.key(a, 99, ka) == (hash(a[:99]) or 1)  # (a shorter head: not the kept one)
    assert len(leads) == 2 and leads.held_bytes <= leads.max_bytes  # (a's pushed out)
    assert leads.key(a, 100, ka) == ka and len(leads) == 2  # (hashed again: a was not kept)
    big = "c" * leads.max_bytes
    assert leads.key(big, len(big), 0) == (hash(big) or 1) and len(leads) == 2  # (too large: not kept)
