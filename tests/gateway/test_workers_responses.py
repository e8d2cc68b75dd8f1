"""Responses ids under ``kvgate serve --workers 2``: a follow-up (``previous_response_id``), a retrieval and a
cancel find the response's home whichever worker made it (``gateway.shared_responses``). Before, each worker
remembered only the ids it made: a request on a connection the kernel gave the other worker was picked
anywhere (a follow-up: vLLM's 404 at a server that does not hold it) or sent to the least busy endpoint (a
lookup: the same 404).

Real processes: a 2-worker ``kvgate serve`` in front of two vLLM-like stores (each keeps its own responses,
as vLLM with ``VLLM_ENABLE_RESPONSES_API_STORE=1``), driven by the openai SDK, a new connection per request
(the kernel spreads connections over the workers). The table itself: ``test_shared_responses.py``."""

from __future__ import annotations

from pathlib import Path

import openai
import yaml

from gateway import workers_kit
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore

ROUNDS = 12


def _client(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)


async def _call(port: int, what: str, **kw: object) -> object:
    """One SDK call on a client of its own: a new connection, on whichever worker the kernel picks."""
    client = _client(port)
    try:
        if what == "create":
            return await client.responses.create(**kw)  # type: ignore[call-overload]
        if what == "retrieve":
            return await client.responses.retrieve(str(kw["response_id"]))
        return await client.responses.cancel(str(kw["response_id"]))
    finally:
        await client.close()


async def test_follow_ups_and_lookups_find_the_home_whichever_worker_made_the_id(tmp_path: Path) -> None:
    alias = {"model": {"type": "Exact", "value": "alias"}}
    rewrite = {"matches": [alias], "targets": [{"modelRewrite": "m"}]}
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as stores:
        addresses = [s.address for s in stores]
        pool = {"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}
        cfg = {"pools": [pool], "rewrites": [rewrite]}
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with workers_kit.serve_workers("--config", str(path)) as (_, port, admin):
            made: list[tuple[str, str]] = []
            followed: list[str] = []
            for i in range(ROUNDS):
                model = "alias" if i % 2 else "m"
                first = await _call(port, "create", model=model, input=f"q{i}")
                rid = first.id  # type: ignore[attr-defined]
                made.append((rid, model))
                # The follow-up, the retrieval and the cancel: each on a new connection.
                nxt = await _call(port, "create", model=model, input="and?", previous_response_id=rid)
                followed.append(nxt.id)  # type: ignore[attr-defined]
                got = await _call(port, "retrieve", response_id=rid)
                assert got.id == rid and got.model == model, got  # type: ignore[attr-defined]
                cancelled = await _call(port, "cancel", response_id=rid)
                assert cancelled.status == "cancelled" and cancelled.model == model  # type: ignore[attr-defined]
            per = await workers_kit.answers_per_worker(admin, "inference_objective_request")
    assert set(per) == {"0", "1"} and min(per.values()) > 0, per  # both workers took requests
    home = {rid: st for st in stores for rid in st.made}
    # Every follow-up was answered where the response it names was made (a 404 elsewhere: the SDK raises).
    assert sorted(p for st in stores for p in st.followed) == sorted(rid for rid, _ in made)
    for rid, _ in made:
        assert rid in home[rid].followed
        # (the exact paths: resp_s0_1 is a prefix of resp_s0_10)
        mine = (f"/v1/responses/{rid}", f"/v1/responses/{rid}/cancel")
        assert [m for m, p in home[rid].lookups if p in mine] == ["GET", "POST"]
    assert len(followed) == ROUNDS
