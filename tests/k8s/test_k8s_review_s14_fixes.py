"""Review s14-fixes: reflector freshness / 403 relist (regressions of commit 531c970), and what counts as
in sync for a watch without events (held open, ended without an in-stream error)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from k8s.reflector_kit import pod_reflector, serve, until
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Backoff, Reflector
from kvgate.k8s.resources import POD

POD_A = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "a", "namespace": "default", "resourceVersion": "10"}}  # fmt: skip


class Server:
    """List always works. A watch: ``watch_mode`` "403" (RBAC grants list but not watch), or "cut_after"
    (opens 200, sends nothing, and the stream is ended after ``cut_after_s``: a proxy / load balancer with an
    idle timeout below the 90 s silence limit, e.g. nginx proxy_read_timeout 60 s, classic ELB 60 s)."""

    def __init__(self, watch_mode: str, cut_after_s: float = 0.0) -> None:
        self.watch_mode, self.cut_after_s = watch_mode, cut_after_s
        self.lists = 0
        self.watches = 0
        self.on_held_end: Callable[[], None] | None = None  # called as a held watch is about to end

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            self.watches += 1
            if self.watch_mode == "403":
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                          "reason": "Forbidden",
                          "message": 'pods is forbidden: cannot watch "pods"'}  # fmt: skip
                return web.json_response(status, status=403)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await asyncio.sleep(self.cut_after_s)
            if self.on_held_end is not None:
                self.on_held_end()
            if self.watch_mode == "fin" and request.transport is not None:
                request.transport.close()  # closed (FIN) without the stream's last chunk
                return resp
            with contextlib.suppress(ConnectionError):  # (the client gone at the test's end)
                await resp.write_eof()
            return resp
        self.lists += 1
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
                "items": [POD_A]}  # fmt: skip
        return web.json_response(body)


@contextlib.asynccontextmanager
async def _reflecting(srv: Server, **kw: Any) -> AsyncIterator[Reflector]:
    """A started reflector of the default namespace's pods (seed 1) on ``srv``, served on a free port;
    stopped, its client closed and ``srv`` stopped at the end."""
    runner, url = await serve(srv.handle)
    client = await KubeClient.connect(server=url)
    r = Reflector(client, POD, namespace="default", seed=1, **kw)
    r.start()
    try:
        yield r
    finally:
        await r.stop()
        await client.close()
        await runner.cleanup()


async def test_watch_forbidden_but_list_allowed_does_not_relist_every_100_ms(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RBAC granting list but not watch (a common Role mistake). A 403 now relists, and the relist's
    success resets the back-off, so the cycle list -> watch 403 -> 0.1 s -> list ... never backs off: a full
    LIST of the resource ~9 times a second per reflector per replica, an ERROR line each time (the list
    clears ``error``, so every 403 is a "change"), and the replica stays ready and fresh throughout.
    Before 531c970: the watch was retried alone, backing off to 5 s (1 list in all)."""
    srv = Server("403")
    caplog.set_level(logging.ERROR, logger="kvgate.k8s.reflector")
    async with _reflecting(srv, backoff=Backoff()) as r:  # the default 0.1 -> 5 s
        await r.wait_synced()
        await asyncio.sleep(3.0)
        # With a back-off that grows (0.1, 0.2, 0.4, 0.8, 1.6 s) at most ~6 requests of each kind in 3 s.
        errors = [rec for rec in caplog.records if "403" in rec.getMessage()]
        assert srv.lists <= 6, f"{srv.lists} full LISTs in 3 s (watches {srv.watches}): a relist loop"
        assert len(errors) <= 1, f"{len(errors)} ERROR lines for one unchanged 403"


async def test_quiet_watch_cut_by_an_idle_timeout_below_the_silence_limit_stays_in_sync() -> None:
    """A quiet resource (an InferencePool: no events) on a server that sends no bookmark, reached through a
    proxy whose idle timeout (60 s) is below the silence limit (90 s): every watch opens (200), reads
    nothing and is ended by the proxy before the silence limit; the reflector re-watches from its
    resourceVersion at once and the server accepts it every time. Nothing is wrong, but since 531c970 no
    such watch counts (not an event, not a bookmark, not a 90 s silent end), so the age grows without end:
    stale WARNING, gauge, and with --kube-stale-not-ready-after every replica goes not-ready together.
    Scaled: proxy cut at 1.5 s (fixk8s15 removed the silence limit: review s15-k8s F1)."""
    srv = Server("cut", cut_after_s=1.5)
    now = [0.0]
    async with _reflecting(srv, clock=lambda: now[0]) as r:
        await r.wait_synced()
        await until(lambda: srv.watches >= 1)
        now[0] = 400.0
        await until(lambda: srv.watches >= 4)  # three more watches accepted, each held 1.5 s and ended
        age = r.age()
        assert age is not None and age < 400.0, (
            f"age {age} s after {srv.watches} accepted watches on a healthy quiet server (error {r.error!r})"
        )
        # Since session 15 through a relist after each such cut (a cut proves nothing by itself).
        assert srv.lists >= 2 and r.unproven >= 1


async def test_bookmarks_seen_once_do_not_make_every_later_quiet_watch_stale_forever() -> None:
    """``self.bookmarks`` counts over the reflector's whole life, so once one bookmark was read (from one
    API-server instance), every later quiet watch's silent end is taken for a stuck connection. After a
    kube-apiserver restart / an HA load balancer moving the watch to another instance whose cacher has seen
    no event of the resource (it sends no bookmark then: cacher.go "Never send a bookmark event if we did not
    see an event here"), a quiet InferencePool's watches are all accepted and all silent, and the copy is
    never in sync again (until the resource changes): stale, and not-ready with the flag. Before 531c970 each
    accepted re-open counted. Scaled: timeoutSeconds 1-2 s (fixk8s15: no silence limit; the server's end
    of a quiet watch counts, and an open watch is in sync)."""
    from kvgate.k8s.apiserver import ApiServerDouble

    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        now = [0.0]
        async with pod_reflector(double, now, min_watch_timeout_s=1) as r:
            await r.wait_synced()
            await until(lambda: r.bookmarks >= 1)
            double.bookmark_interval = 1000.0  # the instance now answering sends none
            double.cut_watches()
            now[0] = 400.0
            watches = r.watches
            await until(lambda: r.watches >= watches + 2)  # quiet watches, accepted and ended by the server
            age = r.age()
            assert age is not None and age < 400.0, f"age {age} s, error {r.error!r}"


async def test_watch_forbidden_keeps_the_replica_stale_and_backs_off_to_the_cap() -> None:
    """The same Role mistake, on the injected clock: the relists that follow the watch's 403 bring the copy
    up to date but do not count while the watch is refused: the age runs on from the first list, the 403
    stays in ``error`` and the back-off reaches its cap. Once the watch is allowed, the open credits the
    last relist (its time) and clears the error."""
    srv = Server("403")
    now = [0.0]
    async with _reflecting(srv, clock=lambda: now[0], backoff=Backoff(initial=0.01, maximum=0.04)) as r:
        await r.wait_synced()
        now[0] = 400.0
        await until(lambda: srv.lists >= 6)
        assert r.age() == 400.0, "a relist while the watch is refused made the replica fresh"
        assert r.error is not None and r.error.startswith("403")
        assert r.backoff._next == 0.04, r.backoff._next
        # RBAC fixed: the watch opens and stays open. The error must clear at the open, not at the held
        # end: what it was as the server ended the watch says so whatever the machine's load (a 1 s wait
        # against the 3 s hold before, tst32).
        at_held_end: list[str | None] = []
        srv.on_held_end = lambda: at_held_end.append(r.error)
        srv.watch_mode, srv.cut_after_s = "cut", 3.0
        now[0] = 500.0
        await until(lambda: r.error is None)
        age = r.age()
        assert age in (0.0, 100.0)  # the last relist counts (at t=400, or at t=500 if one came after)
        await until(lambda: bool(at_held_end))
        assert at_held_end[0] is None, (
            f"still {at_held_end[0]!r} as the held watch ended: not cleared at its open"
        )


async def test_a_watch_held_then_cut_abruptly_is_in_sync_and_one_closed_at_once_is_not() -> None:
    """The rule for a watch without events: held open ``HELD_OPEN_S`` and ended without an in-stream error
    (here a close without the chunked stream's last chunk, as a proxy's idle timeout may end it): followed by
    a relist (session 15; it counted by itself before), in sync once that completes (a reset or a keepalive
    timeout is an error: tests/k8s/test_reflector.py's keepalive test). A 200 closed at once (a proxy that
    cuts every stream) proves nothing and is not relisted: it backs off."""
    from kvgate.k8s.reflector import HELD_OPEN_S

    srv = Server("fin", cut_after_s=HELD_OPEN_S + 0.2)
    now = [0.0]
    async with _reflecting(srv, clock=lambda: now[0]) as r:
        await r.wait_synced()
        await until(lambda: srv.watches >= 1)
        now[0] = 400.0
        await until(lambda: srv.watches >= 2)
        assert r.age() == 0.0 and r.error is None

    srv = Server("cut", cut_after_s=0.0)
    now = [0.0]
    async with _reflecting(srv, clock=lambda: now[0], backoff=Backoff(initial=0.01, maximum=0.04)) as r:
        await r.wait_synced()
        now[0] = 400.0
        seen = srv.watches
        await until(lambda: srv.watches >= seen + 4)
        assert r.age() == 400.0, "a watch closed at once counted as in sync"
