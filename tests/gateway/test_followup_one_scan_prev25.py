"""``kvgate serve --workers N``: a follow-up whose response another worker made reads the fleet's
Responses table once, for its turn's tokens and its home together (``SharedResponses.entry``), and is
pinned to that home. Before prev25 it scanned the table twice (``find_tokens`` for the turn, ``find`` for
the home: the same seqlock walk over every worker's sets; rev-fix24's final read). Two in-process
gateways, each with one worker's view of real shared memory, over two Responses stores."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.gateway.shared_responses import SharedResponses


def _count_scans(view: SharedResponses) -> list[str]:
    """Each scan of ``view``'s table (the one reader where there is one, else the two of main)."""
    scans: list[str] = []
    for name in ("entry",) if hasattr(view, "entry") else ("find", "find_tokens"):
        real = getattr(view, name)

        def counted(*a: Any, _real: Any = real, _name: str = name) -> Any:
            scans.append(_name)
            return _real(*a)

        setattr(view, name, counted)
    return scans


async def test_a_follow_up_from_another_worker_reads_the_table_once(
    shared_views: tuple[SharedResponses, SharedResponses, SharedResponses],
) -> None:
    _, w0, w1 = shared_views
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as stores:
        cfg = make_config([st.address for st in stores])
        async with running_gateway(cfg) as g0, running_gateway(cfg) as g1, aiohttp.ClientSession() as s:
            assert g0.proxy is not None and g1.proxy is not None
            w0.install(g0.proxy)
            w1.install(g1.proxy)
            async with s.post(base_url(g0) + "/v1/responses", json={"model": "m", "input": "hi"}) as r:
                assert r.status == 200
                rid = (await r.json())["id"]
            home = next(st for st in stores if rid in st.made)
            scans = _count_scans(w1)
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            for _ in range(3):  # (round robin: without the pin one of them would go to the other store)
                async with s.post(base_url(g1) + "/v1/responses", json=body) as r:
                    assert r.status == 200, await r.text()
            assert home.followed == [rid] * 3
            assert len(scans) == 3, scans  # (main: 6, find_tokens then find for each)
