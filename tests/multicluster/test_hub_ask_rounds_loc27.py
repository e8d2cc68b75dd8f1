"""The hub's ask rounds (``kvgate serve --clusters``, ``lookups.ClusterLocator``) on the round both doors
share (``openai.askrounds``, loc27): review s26-rev-prev26 F3 and F4, applied to ``kvgate serve`` only in
session 26, now hold at the hub too.

- F3: a round asking the clusters where an unknown id is kept went on after its last client left (up to
  ``LOCATE_S``, 3 s, outside every request bound), its GETs at the clusters' gateways with it: a client
  sending follow-ups naming random ids and hanging up at once kept (rate x 3 s) rounds alive. The last
  waiter leaving (its client gone, or its request's ``requestTimeoutSeconds`` passed) now cancels it, and
  its asks' connections close. ``LOCATE_S`` is raised to 60 s here so the round's own bound cannot end it
  within the test's 30 s wait: only the last waiter leaving can.
- F4: a cluster whose gateway answers the ask with a 500 (its Responses route failing) made every lookup of
  an id nobody keeps a 503 ``Retry-After: 1`` for as long as it lasted; a 500 is an answer (the id is not
  there), so the lookup goes on as before, to the first cluster's own 404. A 502/503/504 from a cluster's
  gateway stays "could not ask" (a ``kvgate serve`` there says 503 when it could not ask its endpoints).

Real HTTP on loopback; every server binds port 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster import lookups
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio
WAIT_S = 30.0


class SilentGateway:
    """A cluster's gateway that reads each ask and never answers it: ``asked`` counts the asks that came,
    ``closed`` those whose connection the hub then closed (the ask given up)."""

    def __init__(self) -> None:
        self.asked = 0
        self.closed = 0
        self._server: asyncio.Server | None = None
        self.address = ""

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"GET /v1/responses/"):
                return
            self.asked += 1
            while await reader.read(4096):  # (until the hub closes it)
                pass
            self.closed += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SilentGateway]:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            self._server.close()


async def _until(what: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _hub(*specs: ClusterSpec, request_timeout_s: float = 0.0) -> AsyncIterator[GlobalGateway]:
    cfg = ClustersConfig(tuple(specs), request_timeout_s=request_timeout_s)
    gw = GlobalGateway(cfg, "round-robin", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    try:
        yield gw
    finally:
        await gw.stop()


async def test_a_hub_round_ends_when_its_only_client_hangs_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookups, "LOCATE_S", 60.0)
    silent = SilentGateway()
    async with silent.running(), _hub(ClusterSpec("a", gateway=silent.address)) as gw:
        for i in range(3):
            _r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            w.write(f"GET /v1/responses/resp_gone{i} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await w.drain()
            await _until(lambda n=i: silent.asked > n, "the hub never asked the cluster")
            w.close()  # the client leaves mid-ask
            # (before loc27 the round asked on for LOCATE_S: its GET stayed open at the cluster)
            await _until(lambda n=i: silent.closed > n, f"ask {i} outlived its only client")
        assert gw.locator.rounds == 3
        assert not gw.locator._rounds


async def test_a_hub_round_ends_when_its_last_waiters_bound_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A follow-up naming an unknown id, then a lookup of it, each bounded at 3 s: 504 each, and every ask
    ends with its last waiter, not 60 s later."""
    monkeypatch.setattr(lookups, "LOCATE_S", 60.0)
    silent = SilentGateway()
    async with (
        silent.running(),
        _hub(ClusterSpec("a", gateway=silent.address), request_timeout_s=3.0) as gw,
        aiohttp.ClientSession() as s,
    ):
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        body = orjson.dumps({"model": "m", "input": "more", "previous_response_id": "resp_gone"})

        async def follow_up() -> int:
            async with s.post(url, data=body) as r:
                return r.status

        async def lookup() -> int:
            async with s.get(f"{url}/resp_gone") as r:
                return r.status

        first = asyncio.ensure_future(follow_up())
        await _until(lambda: silent.asked >= 1, "the hub never asked the cluster")
        # (the lookup shares the follow-up's round if it comes within its bound, else runs its own)
        assert await asyncio.gather(first, lookup()) == [504, 504]
        await _until(lambda: silent.closed == silent.asked, "an ask outlived its last waiter")


async def test_a_cluster_failing_its_gets_does_not_make_every_lost_id_a_503() -> None:
    class Failing(ResponsesStore):
        status = 500

        async def _retrieve(self, request: web.Request) -> web.StreamResponse:
            self.lookups.append((request.method, request.path_qs))
            return web.json_response({"error": {"message": "boom"}}, status=self.status)

    async with serving(ResponsesStore("s0"), Failing("s1")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        async with _hub(*specs) as gw:
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            for _ in range(3):
                async with s.get(f"{url}/resp_typo") as r:
                    # (the first cluster's own 404: before, 503 "could not be asked" on every try)
                    assert r.status == 404, await r.read()
                    assert r.headers["x-kvgate-cluster"] == "a"
            assert len(stores[1].lookups) == 3  # (an answered 5xx is never kept as a miss: asked each time)
            # A cluster gateway's 503 is its own "could not ask" (it may hold the id): still the 503.
            stores[1].status = 503
            async with s.get(f"{url}/resp_typo") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1", await r.read()
                assert b"could not be asked" in await r.read()
