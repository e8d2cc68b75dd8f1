"""A live picker swap (config reload of a pool's ``policy`` / ``endpointPickerConfig``): every request
stays on the Director that admitted it until it finishes; the new one takes only new requests."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.backend import free_port
from gateway.conftest import base_url, make_config, make_pools, running_gateway
from kvgate.gateway.pools import Pool
from kvgate.scheduling.types import InferenceRequest, PickResult

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


class Recording:
    """A Director that records each call and passes it to a real one; ``on_dispatch`` runs once, right
    after the first dispatch it is told of (the moment to swap the pool's Director)."""

    def __init__(self, inner: Any, first: list[Any] | None = None) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.first = first  # what ``admit`` answers (a fixed order of endpoints), else the real pick
        self.on_dispatch: Any = None

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        self.calls.append(("pick", ""))
        return self.inner.pick(req, explain)  # type: ignore[no-any-return]

    async def admit(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        self.calls.append(("admit", ""))
        if self.first is not None:
            return PickResult(list(self.first))
        return await self.inner.admit(req, explain)  # type: ignore[no-any-return]

    def on_dispatched(self, req: InferenceRequest, endpoint: Any) -> None:
        self.calls.append(("dispatched", endpoint.address))
        self.inner.on_dispatched(req, endpoint)
        hook, self.on_dispatch = self.on_dispatch, None
        if hook is not None:
            hook()

    def on_first_token(self, req: InferenceRequest, endpoint: Any, learn: bool = True) -> None:
        self.calls.append(("first", endpoint.address))
        self.inner.on_first_token(req, endpoint, learn)

    def on_finished(self, req: InferenceRequest, endpoint: Any, usage: Any, ok: bool) -> None:
        self.calls.append(("finished", endpoint.address))
        self.inner.on_finished(req, endpoint, usage, ok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_retry_after_a_swap_stays_on_the_director_that_admitted_the_request(backends):
    """The pool's Director is swapped between the first attempt's pick and its dispatch: the retry (the
    first endpoint refuses the connection) must be picked, dispatched and finished on the old Director,
    and the new one must see nothing of this request (else one Director holds a dispatch the other
    finishes: in-flight counts leak on both)."""
    (live,) = await backends(1)
    dead = f"127.0.0.1:{free_port()}"
    cfg = make_config([dead, live.address], extra={"health": {"ejectAfterFailures": 1000}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        pool: Pool = gw.pools[0]
        eps = {ep.address: ep for ep in pool.endpoints()}
        old = Recording(pool.director, first=[eps[dead], eps[live.address]])
        new = Recording(make_pools(cfg)[0].director)
        pool.director = old

        def swap() -> None:
            pool.director = new

        old.on_dispatch = swap
        async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200, await r.text()
        assert new.calls == []
        assert old.calls == [
            ("admit", ""), ("dispatched", dead), ("finished", dead),
            ("pick", ""), ("dispatched", live.address), ("first", live.address), ("finished", live.address),
        ]  # fmt: skip
        assert all(ep.inflight.requests == 0 for ep in pool.endpoints())
        assert not old.inner._tracks and not new.inner._tracks
        # The next request is the new Director's.
        async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200
        assert [c[0] for c in new.calls][:2] == ["admit", "dispatched"]
