"""``kvgate serve --clusters``: ``limits.requestTimeoutSeconds`` bounds the whole request, as ``kvgate
serve``'s key does (closing note s19: before, a non-streamed request to a cluster gateway that answers its
``/healthz`` probe but never the request waited the 300 s read timeout). Real loopback HTTP servers, short
bounds (the client's own patience, ``WAIT_S``, is far under 300 s and over every bound here).

- no cluster is tried, and no head awaited, past the bound: a 504 (OpenAI-style), never a failover with the
  bound spent; failover before it as before. Its code is ``upstream_timeout`` when a cluster held the sent
  request without a head at the bound (it may still run it: a hub in front must not resend it, gw26), else
  ``request_timeout``;
- the cluster the bound ended at is charged (backs off) only if it had the larger part of the time (no head
  to show progress), an answer cut after its head only if it was not making progress (a stream's data
  events in the later half of its time);
- ``probe_timeout_s`` is the probe's bound (a file key now, was 2 s fixed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClusterSpec, load, parse
from kvgate.multicluster.serve import GlobalGateway
from multicluster.conftest import post_raw

WAIT_S = 20.0  # the client's patience: far under the 300 s read timeout, over every bound used here


class Gateway:
    """A cluster gateway on loopback. ``mode``: ``ok`` answers at once; ``silent`` takes the request and
    never answers (its ``/healthz`` answers after ``healthz_delay_s``: the process lives); ``slow_503``
    answers 503 after ``delay_s``; ``trickle`` streams a data event every ``gap_s`` (``events`` of them);
    ``wedge`` streams its first data event, then only ``: ping`` comments every ``gap_s``; ``late_wedge``
    data events every ``gap_s`` until ``data_s``, then comments; ``event_ping`` its first data event, then
    Anthropic's keep-alive (``event: ping`` with a ``{"type": "ping"}`` data line)."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.healthz_delay_s = 0.0
        self.delay_s = 0.0
        self.gap_s = 0.1
        self.events = 100
        self.data_s = 0.0
        self.taken = 0
        self.probes = 0
        self.address = ""
        self._runner: web.AppRunner | None = None
        self._held: list[asyncio.Future[None]] = []

    async def _healthz(self, _request: web.Request) -> web.Response:
        self.probes += 1
        await asyncio.sleep(self.healthz_delay_s)
        return web.Response(status=404)  # any answer: the gateway lives

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.taken += 1
        if self.mode == "silent":
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            await fut  # (cancelled when the caller leaves, or at the stop)
        if self.mode == "slow_503":
            await asyncio.sleep(self.delay_s)
            return web.json_response({"error": {"message": "busy"}}, status=503)
        if self.mode == "half_body":  # a JSON head and its first bytes, then nothing
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "100"})
            await resp.prepare(request)
            await resp.write(b'{"object": "text_completion", "choices": [')
            fut = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            await fut
            return resp
        if not body.get("stream"):
            return web.json_response({"object": "text_completion", "model": "m", "served_by": self.name,
                                      "choices": [{"index": 0, "text": "ok"}]})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"t0"}]}\n\n')
        t0 = time.monotonic()
        for i in range(1, self.events):
            await asyncio.sleep(self.gap_s)
            if self.mode == "wedge" or (self.mode == "late_wedge" and time.monotonic() - t0 > self.data_s):
                await resp.write(b": ping\n\n")
            elif self.mode == "event_ping":
                await resp.write(b'event: ping\ndata: {"type": "ping"}\n\n')
            else:
                await resp.write(b'data: {"choices":[{"index":0,"text":"t%d"}]}\n\n' % i)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _lookup(self, _request: web.Request) -> web.StreamResponse:
        """``GET /v1/responses/{id}``: ``half_body`` sends its head and first bytes, then nothing."""
        self.taken += 1
        if self.mode != "half_body":
            return web.json_response({"id": "resp_1", "object": "response", "model": "m"})
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "100"})
        await resp.prepare(_request)
        await resp.write(b'{"id": "resp_1", ')
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append(fut)
        await fut
        return resp

    async def start(self) -> Gateway:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/responses/{rid}", self._lookup)
        app.router.add_post("/v1/completions", self._complete)
        self._runner, port = await serve_app(app, shutdown_timeout=0.1)
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for fut in self._held:
            if not fut.done():
                fut.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    made: list[Gateway] = []

    async def make(name: str, mode: str = "ok") -> Gateway:
        g = await Gateway(name, mode).start()
        made.append(g)
        return g

    yield make
    for g in made:
        await g.stop()


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Awaitable[GlobalGateway]]]:
    running: list[GlobalGateway] = []

    async def make(*clusters: Gateway, **cfg: float) -> GlobalGateway:
        specs = tuple(ClusterSpec(c.name, gateway=c.address) for c in clusters)
        gw = GlobalGateway(ClustersConfig(specs, **cfg), "round-robin", fetch=False, seed=1, drain_s=0.5)
        await gw.start("127.0.0.1", 0)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        await gw.stop()


async def _post(port: int, *, stream: bool = False) -> tuple[int | str, bytes, float]:
    """(status or ``hung``, the raw answer, seconds taken)."""
    return await post_raw(port, stream=stream, wait_s=WAIT_S)


def _error(data: bytes) -> dict[str, object]:
    doc = orjson.loads(data.split(b"\r\n\r\n", 1)[1])
    assert isinstance(doc, dict)
    error = doc["error"]
    assert isinstance(error, dict)
    return error


# --- the clusters file -------------------------------------------------------------------------


def test_the_keys_parse_with_their_defaults() -> None:
    base = {"clusters": [{"name": "a", "gateway": "127.0.0.1:1"}]}
    cfg = parse(base)
    assert cfg.request_timeout_s == 0.0 and cfg.probe_timeout_s == 2.0
    limits = {"requestTimeoutSeconds": 30, "maxBodyBytes": 10}
    cfg = parse({**base, "probe_timeout_s": 0.25, "limits": limits})
    assert cfg.request_timeout_s == 30.0 and cfg.probe_timeout_s == 0.25 and cfg.limits.max_body_bytes == 10
    assert parse({**base, "limits": {"requestTimeoutSeconds": 0}}).request_timeout_s == 0.0  # (0: none)


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"limits": {"requestTimeoutSeconds": -1}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSeconds": float("nan")}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSeconds": float("inf")}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSeconds": "30s"}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSeconds": True}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSeconds": 10**400}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"requestTimeoutSecs": 5}}, "limits.requestTimeoutSecs"),
        ({"probe_timeout_s": 0}, "probe_timeout_s"),
        ({"probe_timeout_s": -2}, "probe_timeout_s"),
        ({"probe_timeout_s": float("nan")}, "probe_timeout_s"),
        ({"probe_timeout_s": float("inf")}, "probe_timeout_s"),
        ({"probe_timeout_s": "2s"}, "probe_timeout_s"),
        # float() took these (review s20-mc L1); the other seconds keys share the check.
        ({"probe_timeout_s": True}, "probe_timeout_s"),
        ({"probe_timeout_s": "0.5"}, "probe_timeout_s"),
        ({"head_timeout_s": "30"}, "head_timeout_s"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(ClustersError) as e:
        parse({"clusters": [{"name": "a", "gateway": "127.0.0.1:1"}], **doc})
    assert e.value.key == key, e.value
    if key == "limits.requestTimeoutSecs":  # (the known keys named, the new one among them)
        assert "requestTimeoutSeconds" in str(e.value)


# --- the bound ----------------------------------------------------------------------------------


async def test_a_gateway_that_answers_its_probe_but_never_the_request_gets_a_504_at_the_bound(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """The closing note's case: the probe says live, so before the bound the request waited the read
    timeout (300 s; ``hung`` here). Now: 504 at the bound (``upstream_timeout`` since gw26: east holds the
    request), not sent on to ``west`` (the
    bound is spent), and ``east``, which held the whole time without a head, backs off."""
    east, west = await gateways("east", "silent"), await gateways("west")
    gw = await started(east, west, head_timeout_s=0.2, probe_timeout_s=0.5, request_timeout_s=1.0)
    status, data, took = await _post(gw.port)
    assert status == 504, (status, data)
    error = _error(data)
    assert error["code"] == "upstream_timeout", error
    assert "limits.requestTimeoutSeconds (1s)" in str(error["message"]), error
    assert "cluster east" in str(error["message"]), error
    assert east.taken == 1 and east.probes >= 1 and west.taken == 0
    assert took < WAIT_S / 2  # (well before the read timeout; the bound itself is 1 s)
    st = gw.router.states["east"]
    assert st.backoff_s > 0 and st.hung_at is None  # charged, but not hung (it answered its probe)
    assert gw.router.states["west"].backoff_s == 0
    # The next request goes to west (round-robin skips east while it backs off): 200.
    status, data, _ = await _post(gw.port)
    assert status == 200 and b'"served_by": "west"' in data, data


async def test_a_stream_without_a_head_is_bound_too(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """``head_timeout_s`` (120 s here) longer than the bound: the bound ends the stream's wait."""
    east = await gateways("east", "silent")
    gw = await started(east, head_timeout_s=120.0, request_timeout_s=0.8)
    status, data, _ = await _post(gw.port, stream=True)
    assert status == 504 and _error(data)["code"] == "upstream_timeout", data


async def test_failover_before_the_bound_and_the_later_cluster_is_not_charged_for_the_first_ones_time(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """``east`` answers 503 after 0.2 s: the request goes on to ``west`` (well before the bound), 200.
    Then ``east`` answers its 503 after 1.2 s of a 1.5 s bound, and ``west`` (silent now, live by its
    probe) gets the last 0.3 s: the 504 at the bound, and ``west``, which had the smaller part of the
    request's time, is not backed off (``east`` is, for its 503, as before)."""
    east, west = await gateways("east", "slow_503"), await gateways("west")
    east.delay_s = 0.2
    gw = await started(east, west, head_timeout_s=0.1, probe_timeout_s=0.5, request_timeout_s=1.5)
    status, data, _ = await _post(gw.port)
    assert status == 200 and b'"served_by": "west"' in data and east.taken == 1, data
    east.delay_s, west.mode = 1.2, "silent"
    gw = await started(east, west, head_timeout_s=0.1, probe_timeout_s=0.5, request_timeout_s=1.5)
    status, data, _ = await _post(gw.port)
    assert status == 504 and _error(data)["code"] == "upstream_timeout", data
    assert east.taken == 2 and west.taken == 2
    assert gw.router.states["east"].backoff_s > 0
    assert gw.router.states["west"].backoff_s == 0  # (its 0.3 s of the 1.5 s: not its fault)


async def test_no_cluster_is_tried_once_the_bound_passed(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """``east``'s 503 comes after the bound: the 504 names it, ``west`` never gets the request."""
    east, west = await gateways("east", "slow_503"), await gateways("west")
    east.delay_s = 0.8
    gw = await started(east, west, request_timeout_s=0.5)
    status, data, _ = await _post(gw.port)
    assert status == 504 and _error(data)["code"] == "upstream_timeout", data
    assert west.taken == 0


async def test_a_stream_making_progress_is_cut_at_the_bound_and_its_cluster_not_charged(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """A data event every 50 ms to the cut (the rule allows no stretch of the later half over 250 ms, an
    eighth of the 2 s hold, without one): a long answer, not a fault."""
    east = await gateways("east", "trickle")
    east.gap_s = 0.05
    gw = await started(east, request_timeout_s=2.0)
    status, data, _ = await _post(gw.port, stream=True)
    assert status == 200, data
    assert b'"code":"request_timeout"' in data and b"limits.requestTimeoutSeconds (2s)" in data, data
    assert b"data: [DONE]" not in data and b"t3" in data
    assert gw.router.states["east"].backoff_s == 0


@pytest.mark.parametrize("mode", ["wedge", "late_wedge", "event_ping"])
async def test_a_wedged_stream_is_cut_at_the_bound_and_its_cluster_charged(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]], mode: str
) -> None:
    """No progress all through the later half of its hold, so it is charged (``kvgate serve``'s rule,
    ``kvgate.openai.progress``): its first event then ``: ping`` comments; data events to 0.6 s of a 1 s
    bound, then comments (a 0.4 s stretch of the later half without one); its first event then Anthropic's
    ``event: ping`` keep-alives, which carry a data line."""
    east = await gateways("east", mode)
    east.data_s = 0.6
    gw = await started(east, request_timeout_s=1.0)
    status, data, _ = await _post(gw.port, stream=True)
    assert status == 200 and b'"code":"request_timeout"' in data and b"t0" in data, data
    assert gw.router.states["east"].backoff_s > 0


async def test_a_plain_body_stalled_after_its_head_is_a_504_at_the_bound(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """Its head and first bytes came, then nothing. Since fo31 the hub holds a non-streamed body whole
    before its head goes on (the non-streamed twin of qa30 Q8): nothing reached the client, so at the bound
    the client gets the 504 ``upstream_timeout`` (written: it ran there, so no failover), and the cluster,
    which held the request the larger part of its time, is charged. (Before fo31: the 200 head, then the
    connection closed mid-body.)"""
    east, west = await gateways("east", "half_body"), await gateways("west")
    gw = await started(east, west, request_timeout_s=1.0)
    status, data, took = await _post(gw.port)
    assert status == 504 and took < WAIT_S / 2, (status, data)
    assert b'"code":"upstream_timeout"' in data, data
    assert west.taken == 0
    assert gw.router.states["east"].backoff_s > 0


async def test_a_lookup_answer_stalled_after_its_head_is_cut_at_the_bound(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """``GET /v1/responses/{id}``: its head and first bytes came, then nothing: the body is bound too (as
    ``kvgate serve``'s lookups), cut at the bound (an incomplete body). Before, it waited the read timeout."""
    east = await gateways("east", "half_body")
    gw = await started(east, request_timeout_s=1.0)
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    w.write(b"GET /v1/responses/resp_1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    try:
        data = await asyncio.wait_for(r.read(), WAIT_S)
    finally:
        w.close()
    assert time.monotonic() - t0 < WAIT_S / 2
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b'{"id": "resp_1", ' in body, data
    assert not body.endswith(b"0\r\n\r\n"), data  # (relayed chunked: no last chunk, closed mid-body)


async def test_an_answer_complete_within_the_bound_is_not_cut(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    east = await gateways("east", "trickle")
    east.events, east.gap_s = 4, 0.05
    gw = await started(east, request_timeout_s=5.0)
    status, data, _ = await _post(gw.port, stream=True)
    assert status == 200 and b"data: [DONE]" in data and b"error" not in data, data
    status, data, _ = await _post(gw.port)
    assert status == 200 and b'"served_by": "east"' in data, data
    assert gw.router.states["east"].backoff_s == 0


async def test_the_bound_applies_live_after_a_reload(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    east = await gateways("east", "silent")
    gw = await started(east, head_timeout_s=0.1, probe_timeout_s=0.3)  # (no bound: the read timeout)
    gw.router.apply(dataclasses.replace(gw.router.cfg, request_timeout_s=0.5))
    status, data, _ = await _post(gw.port)
    assert status == 504 and _error(data)["code"] == "upstream_timeout", data


# --- the probe's bound ----------------------------------------------------------------------------


@pytest.mark.parametrize("probe_timeout_s, hung", [(0.3, True), (3.0, False)])
async def test_probe_timeout_s_is_the_probes_bound(
    gateways: Callable[..., Awaitable[Gateway]],
    started: Callable[..., Awaitable[GlobalGateway]],
    probe_timeout_s: float,
    hung: bool,
) -> None:
    """``east`` never answers the request; its ``/healthz`` answers after 1 s. Under a 0.3 s probe bound
    it is hung (the request moves on to ``west``: 200); under 3 s it lives, and the request waits there to
    its bound (504)."""
    east, west = await gateways("east", "silent"), await gateways("west")
    east.healthz_delay_s = 1.0
    gw = await started(east, west, head_timeout_s=0.1, probe_timeout_s=probe_timeout_s, request_timeout_s=4.0)
    status, data, _ = await _post(gw.port)
    if hung:
        assert status == 200 and b'"served_by": "west"' in data, data
    else:
        assert status == 504 and _error(data)["code"] == "upstream_timeout", data
        assert west.taken == 0


class LateFirst(Gateway):
    """A stream whose head comes at once and whose first data event comes ``first_s`` later (a prefill
    behind a queue), then a data event every 30 ms: a healthy server."""

    first_s = 1.0

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.taken += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(self.first_s)
        for i in range(200):
            await resp.write(b'data: {"choices":[{"index":0,"text":"t%d"}]}\n\n' % i)
            await asyncio.sleep(0.03)
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def test_a_cluster_sent_the_request_late_is_not_charged_because_its_head_came(
    gateways: Callable[..., Awaitable[Gateway]], started: Callable[..., Awaitable[GlobalGateway]]
) -> None:
    """east answers 503 after 1.6 s of a 2 s bound; west gets the last 0.4 s, sends its head at once and
    its first token 1 s later (after the bound). west never owned the deadline: had it sent no head it
    would not be charged (test_failover_before_the_bound_and_the_later_cluster_is_not_charged_for_the_first_
    ones_time), and kvgate serve does not charge it either way (timed_out: 0.4 s held < 1 s unit). Here
    the head came, so it backs off: a healthy cluster sent away for east's slowness (review s20-mc M1).
    Since qa30 Q8 the head is held until the first byte, as ``kvgate serve`` holds it: the client gets
    the 504 ``upstream_timeout`` (written, no byte yet) instead of a 200 cut by an error event."""
    east = await gateways("east", "slow_503")
    east.delay_s = 1.6
    west = LateFirst("west")
    await west.start()
    try:
        gw = await started(east, west, head_timeout_s=5.0, request_timeout_s=2.0)
        status, data, _ = await _post(gw.port, stream=True)
        assert status == 504 and b'"code":"upstream_timeout"' in data, data
        assert east.taken == 1 and west.taken == 1
        assert gw.router.states["east"].backoff_s > 0  # (its 503: as always)
        assert gw.router.states["west"].backoff_s == 0, "west charged for a deadline it did not own"
    finally:
        await west.stop()


@pytest.mark.parametrize("text, seconds", [("5e-1", 0.5), ("1e+01", 10.0), ("1.5e3", 1500.0), ("2E1", 20.0)])
def test_an_exponent_yaml_reads_as_a_string_is_a_number(tmp_path: Path, text: str, seconds: float) -> None:
    """YAML 1.1 reads an exponent without a dot or a sign as a string (Helm's toYaml writes ``1e+06``);
    the seconds keys take it as the number it is (review s20-fixes-a L5: eb7536c refused it)."""
    f = tmp_path / "clusters.yaml"
    f.write_text(f"clusters: [{{name: a, gateway: '127.0.0.1:1'}}]\nprobe_timeout_s: {text}\nttl_s: {text}\n")
    cfg = load(f)
    assert cfg.probe_timeout_s == seconds and cfg.ttl_s == seconds


# --- the cut as evidence (s20-mc L4) and lookups charged (closing note s20) ---------------------------


async def _until(check: Callable[[], bool], what: str) -> None:
    """Polls ``check`` (30 s at most; 5 s before): the probe after a cut runs after the 504 is sent."""
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


@pytest.mark.parametrize("hung", [True, False])
async def test_a_cut_before_the_head_probes_the_gateway_even_below_head_timeout_s(
    gateways: Callable[..., Awaitable[Gateway]],
    started: Callable[..., Awaitable[GlobalGateway]],
    hung: bool,
) -> None:
    """``requestTimeoutSeconds`` (1.5 s) below ``head_timeout_s`` (120 s), no aggregate: east's slow 503
    eats 1.2 s, west gets the rest and sends nothing. west did not own the deadline (not charged), and
    before, nothing probed it (the probe came only past ``head_timeout_s``), so a hung west kept taking
    requests. Now the cut is the evidence: its gateway is probed after the 504; one that answers no probe
    within ``probe_timeout_s`` backs off, one that answers does not."""
    east, west = await gateways("east", "slow_503"), await gateways("west", "silent")
    east.delay_s = 1.2
    west.healthz_delay_s = 10.0 if hung else 0.0
    gw = await started(east, west, head_timeout_s=120.0, probe_timeout_s=0.3, request_timeout_s=1.5)
    status, data, _ = await _post(gw.port)
    assert status == 504 and _error(data)["code"] == "upstream_timeout", data
    assert east.taken == 1 and west.taken == 1
    await _until(lambda: west.probes == 1, "west's gateway was not probed after the cut")
    st = gw.router.states["west"]
    if hung:
        await _until(lambda: st.backoff_s > 0, "a west that answers no probe is not backed off")
    else:
        await _until(lambda: not gw.router._cut_probes, "the probe did not end")
        assert st.backoff_s == 0  # (it answered: alive, and the deadline was not its)


async def test_a_lookup_cut_before_its_head_at_the_bound_is_charged_to_its_cluster(
    started: Callable[..., Awaitable[GlobalGateway]],
) -> None:
    """A Responses lookup sent to a gateway that answers its probe but never the lookup: 504 at the bound,
    and the cluster, which held the whole bound, backs off as for a request (before: not charged)."""

    class Silent(Gateway):
        async def _lookup(self, _request: web.Request) -> web.StreamResponse:
            self.taken += 1
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            await fut
            raise AssertionError("unreachable")

    silent = Silent("east")
    await silent.start()
    try:
        gw = await started(silent, head_timeout_s=0.2, probe_timeout_s=0.5, request_timeout_s=1.0)
        gw.responses.remember("resp_1", ("east", None))  # (made there: sent there, not asked first)
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(b"GET /v1/responses/resp_1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        try:
            data = await asyncio.wait_for(r.read(), WAIT_S)
        finally:
            w.close()
        assert data.startswith(b"HTTP/1.1 504") and _error(data)["code"] == "request_timeout", data
        assert silent.taken == 1
        assert gw.router.states["east"].backoff_s > 0, "the lookup's cut was not charged"
    finally:
        await silent.stop()


@pytest.mark.parametrize("steady", [False, True])
async def test_a_lookup_body_cut_at_the_bound_is_charged_unless_it_was_steady(
    started: Callable[..., Awaitable[GlobalGateway]], steady: bool
) -> None:
    """A lookup's body cut at the bound: charged when it stalled after its first bytes (``half_body``), not
    when it kept sending pieces all through the later half (a long answer), by the requests' rule."""

    class Body(Gateway):
        async def _lookup(self, request: web.Request) -> web.StreamResponse:
            self.taken += 1
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"id": "resp_1", "output": [')
            for _ in range(400 if steady else 0):
                await asyncio.sleep(0.02)
                await resp.write(b'"x",')
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            await fut
            return resp

    east = Body("east")
    await east.start()
    try:
        gw = await started(east, request_timeout_s=1.0)
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(b"GET /v1/responses/resp_1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        try:
            data = await asyncio.wait_for(r.read(), WAIT_S)
        finally:
            w.close()
        assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"0\r\n\r\n"), data
        backoff = gw.router.states["east"].backoff_s
        assert (backoff == 0) if steady else (backoff > 0), backoff
    finally:
        await east.stop()
