"""Review rev-b34 on ``pendingHolders`` (fam34), ``kvgate serve``'s part. F1: a 4xx reply (vLLM's 400 for a
prompt over ``max_model_len``: no prefill ran) left the replica recorded as holding the prompt, because
the door's ``ok`` (its health verdict) is ``status < 500``; the engine's usage now says a whole reply ran.
F6: a hot reload shares the pending picks with the new scorer, and toggling ``pendingHolders`` keeps the
index. Real HTTP on loopback (port 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.handler_server import serve_handler
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest

from .test_pending_holders_serve_fam34 import _held_after


async def test_F1_a_4xx_reply_ran_no_prefill_so_leaves_no_holder() -> None:
    async def refuse(_: web.Request) -> web.Response:
        msg = "This model's maximum context length is 2048 tokens"
        return web.json_response({"error": {"message": msg, "type": "BadRequestError"}}, status=400)

    runner, port = await serve_handler(refuse)
    try:
        for stream in (False, True):
            assert await _held_after(port, stream) == (0, 0), stream
    finally:
        await runner.cleanup()


PROMPT = "the tenant's long system prompt, say " * 40


def _doc(prefix: dict[str, Any], weight: int = 1) -> dict[str, Any]:
    plugins = [{"type": "queue-scorer"}, {"type": "prefix-cache-scorer", "parameters": prefix}]
    refs = [{"pluginRef": "queue-scorer", "weight": weight}, {"pluginRef": "prefix-cache-scorer"}]
    picker = {"plugins": plugins, "schedulingProfiles": [{"name": "default", "plugins": refs}]}
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


def _reload(tmp_path: Path, before: dict[str, Any], after: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """The old scorer (one pick dispatched before the reload), the new one, the old director, the pick."""
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(before)))
    cfg = parse_gateway_config(_doc(before))
    pools = [build_pool(pc, index=i) for i, pc in enumerate(cfg.pools)]
    d = pools[0].director
    old = d.handle.find(PrefixCacheScorer)
    req = InferenceRequest("q1", "m", prompt_text=PROMPT + "q1")
    d.on_dispatched(req, d.pick(req).primary)
    f.write_text(yaml.safe_dump(_doc(after, weight=2)))
    assert ConfigReloader(str(f), cfg, pools, None).reload()
    new = pools[0].director.handle.find(PrefixCacheScorer)
    assert new is not old and pools[0].director is not d
    return old, new, d, req


def _match(scorer: PrefixCacheScorer, director: Any) -> tuple[dict[str, int], int]:
    """What a new request sharing the pick's head matches (pending picks included), and the blocks the
    index itself records at the endpoint."""
    cycle = CycleState(InferenceRequest("probe", "m", prompt_text=PROMPT + "q2"), 0.0)
    scorer.prepare(cycle, director.store.all())
    m = prefix_match(cycle)
    assert m is not None and len(m.hashes) == 23
    return m.matched, scorer.index.match(m.hashes, ["127.0.0.1:1"])[0]


def test_F6_a_reload_shares_the_pending_picks(tmp_path: Path) -> None:
    old, new, d, req = _reload(tmp_path, {"pendingHolders": True}, {"pendingHolders": True})
    assert new.index is old.index
    # The old pick, in flight, is the new picker's pending holder, and settles through the old director.
    assert _match(new, d) == ({"127.0.0.1:1": 23}, 0)
    d.on_first_token(req, d.store.all()[0])
    assert _match(new, d) == ({"127.0.0.1:1": 23}, 23) and not new._pending


def test_F6_toggling_pending_holders_keeps_the_index(tmp_path: Path) -> None:
    old, new, d, _ = _reload(tmp_path, {}, {"pendingHolders": True})
    assert new.pending_holders and not old.pending_holders
    assert new.index is old.index and _match(new, d)[1] == 23  # (what the old pick recorded: kept)
