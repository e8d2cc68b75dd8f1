"""The simulator's HTTP front: one simulated vLLM (or SGLang) replica served with aiohttp.

A :class:`Replica` owns an :class:`~kvgate.sim.engine.Engine`, an aiohttp app on its own port, and one
driver task that steps the engine in real time: step at the previous step's deadline, sleep
``duration * slow_factor / time_scale``, then hand each emitted token to its request's :class:`_Pending`
(a token list plus one waiter future: no task or queue per token). Steps are chained on deadlines, so when
the process cannot keep up the lag behind the wall clock grows and shows in ``kvgate_sim_step_lag_seconds``
and ``kvgate_sim_steps_late_total``.

Endpoints (see docs/simulator-http.md): OpenAI ``/v1/completions``, ``/v1/chat/completions`` (SSE and
JSON), ``/v1/responses`` (stored conversations: ``routes_responses``), ``/v1/models``, LoRA
load/unload, ``/health``, ``/metrics``, the probes the peer routers use (``/server_info``,
``/model_info``, ``/get_server_info``, ``/get_model_info``, ``/get_load``, ``/tokenize``,
``/detokenize``, ``/v1/completions/render``, ``/v1/chat/completions/render``, ``/kv_event_sources``) and
admin endpoints under ``/sim/`` (faults, stop/start, state). Errors use vLLM's JSON error shape.

This module is the replica's lifecycle (start/stop/crash, the engine driver, the app); the route groups
live in ``routes_openai``, ``routes_responses``, ``routes_probes`` and ``routes_admin``, their shared
state in ``replica_base``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import OrderedDict

from aiohttp import web

from kvgate.aio import cancel_all_and_wait, cancel_and_wait, stop_to_the_end
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.faults import Faults
from kvgate.sim.kvcache import AllBlocksCleared
from kvgate.sim.kvevents import KVEventPublisher
from kvgate.sim.metrics import ServerCounters
from kvgate.sim.replica_base import MAX_LAG_S, MIN_SLEEP_S, ApiError, Handler, Pending, ReplicaConfig
from kvgate.sim.routes_admin import AdminRoutes
from kvgate.sim.routes_probes import ProbeRoutes
from kvgate.sim.routes_responses import ResponsesRoutes, Stored
from kvgate.sim.tokenizer import Tok, get_tokenizer
from kvgate.sim.types import StepResult

log = logging.getLogger(__name__)

__all__ = ["ApiError", "Replica", "ReplicaConfig"]


class Replica(ResponsesRoutes, ProbeRoutes, AdminRoutes):
    """One simulated model server. ``await start()`` / ``await stop()`` (a crash: connections refused,
    in-flight requests cut, engine state lost) may be repeated; ``await close()`` at the end."""

    def __init__(self, config: ReplicaConfig | None = None, index: int = 0) -> None:
        self.cfg = cfg = config or ReplicaConfig()
        self.index = index
        self.tok: Tok = get_tokenizer()
        self.engine_config = EngineConfig(
            profile=cfg.profile,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            num_gpu_blocks=cfg.num_gpu_blocks,
            block_size=cfg.block_size,
            max_model_len=cfg.max_model_len,
            max_loras=cfg.max_loras,
        )
        self.max_model_len = self.engine_config.max_model_len
        self.faults = Faults(seed=cfg.seed + index)
        self.counters = ServerCounters()
        self.loras: dict[str, str] = {name: f"/sim/loras/{name}" for name in cfg.lora_adapters}
        self.kv: KVEventPublisher | None = None
        if cfg.kv_events_port is not None:
            self.kv = KVEventPublisher(cfg.host, cfg.kv_events_port, cfg.kv_replay_port, cfg.kv_topic)
        self.engine = self._new_engine()
        self._pending: dict[str, Pending] = {}
        self._stored: OrderedDict[str, Stored] = OrderedDict()  # (``routes_responses``)
        self._ids = itertools.count()
        self._id_prefix = f"{index}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._origin = 0.0  # perf_counter at sim time 0 (finer than uvloop's millisecond loop clock)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = cfg.port
        self.running = False
        self._bg: list[asyncio.Task[None]] = []
        self._closing = False  # (while ``close`` runs: no admin crash accepted, no start)
        self.created = int(time.time())

    # ---------------------------------------------------------------------------------------------------
    # Lifecycle

    def _new_engine(self) -> Engine:
        sink = self.kv.publish if self.kv is not None else None
        return Engine(self.engine_config, kv_event_sink=sink)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    async def start(self) -> None:
        """Listen and run the engine (a no-op while running, or while ``close`` runs)."""
        if self.running or self._closing:
            return
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._runner = web.AppRunner(
                self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
            )
            await self._runner.setup()
            self._origin = time.perf_counter()
            if self.kv is not None:
                self.kv.start()
        site = web.TCPSite(self._runner, self.cfg.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]
        self._driver = loop.create_task(self._drive(), name=f"sim-driver-{self.index}")
        self._driver.add_done_callback(self._driver_done)
        self.running = True

    def _driver_done(self, task: asyncio.Task[None]) -> None:
        # A driver that dies (an engine bug) must not leave requests waiting forever: fail them loudly.
        if task.cancelled() or task.exception() is None:
            return
        log.error("replica %d: engine driver failed", self.index, exc_info=task.exception())
        for p in self._pending.values():
            p.crashed = True
            p.wake()

    async def stop(self) -> None:
        """Crash: stop listening, cut every in-flight request, lose the engine's state. To its end also
        when cancelled meanwhile (the driver ended, the connections reset), the cancellation raised after
        (``stop_to_the_end``)."""
        if not self.running:
            return
        self.running = False  # (at once: a second stop meanwhile returns)
        await stop_to_the_end(self._stop(), f"replica {self.index}: stopping", log)

    async def _stop(self) -> None:
        try:
            if self._site is not None:
                await self._site.stop()
                self._site = None
            if self._driver is not None:
                await cancel_and_wait(self._driver, "the simulated engine's driver", log)
                self._driver = None
        finally:  # (also when this stop's task is cancelled, by asyncio.run's end: no later stop gets past
            # ``running``)
            for p in self._pending.values():
                p.crashed = True
                p.wake()
            # Open connections die with the process: reset them (keep-alive ones included).
            server = self._runner.server if self._runner is not None else None
            for transport in list(getattr(server, "_connections", {}).values()):
                transport.abort()
            self.engine = self._new_engine()
            self._stored.clear()  # (vLLM's stored responses are its process memory: a restart loses them)
            if self.kv is not None:
                self.kv.publish([AllBlocksCleared()])  # a restarted engine starts with an empty cache

    async def close(self) -> None:
        """Stop (``stop``) and release everything: the app's runner (its port), the KV-event sockets, the
        admin crashes under way (cancelled and waited for: one may be stopping or restarting it). While it
        runs, ``POST /sim/stop`` answers 503 and ``start`` does nothing, and the crashes are drained until
        none is left, so none started during the close runs after it (review s13-hard L3: one accepted in
        the turns before the stop reset its connection restarted the replica after ``close`` returned).
        To its end also when cancelled meanwhile, the cancellation raised after (``stop_to_the_end``: it
        had skipped the runner and the KV-event sockets)."""
        await stop_to_the_end(self._close(), f"replica {self.index}: closing", log)

    async def _close(self) -> None:
        self._closing = True
        try:
            await self._cancel_bg()
            await self.stop()
            await self._cancel_bg()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            if self.kv is not None:
                await self.kv.close()
                self.kv = None
        finally:
            self._closing = False  # (closed: a later ``start`` starts it afresh, as before)

    async def _cancel_bg(self) -> None:
        while self._bg:  # (until none is left: one may have been added while we waited)
            tasks = list(self._bg)
            self._bg.clear()
            await cancel_all_and_wait(tasks, "replica background task", log)

    def sim_now(self) -> float:
        """Simulated seconds since start (wall time x time_scale)."""
        return (time.perf_counter() - self._origin) * self.cfg.time_scale

    # ---------------------------------------------------------------------------------------------------
    # The real-time driver

    async def _drive(self) -> None:
        c = self.counters
        scale = self.cfg.time_scale
        slack = self.cfg.late_slack_s
        clock = time.perf_counter
        deadline = clock()
        while True:
            engine = self.engine
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = clock()  # idle: the next step starts now
            start = deadline
            result = engine.step((start - self._origin) * scale)
            wall = result.duration * self.faults.slow_factor / scale
            deadline = start + wall
            c.step_time_s += wall
            delay = deadline - clock()
            if delay > MIN_SLEEP_S:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the HTTP side run even when steps are free
            lag = clock() - deadline
            c.steps += 1
            c.step_lag_s = lag if lag > 0 else 0.0
            c.step_lag_sum_s += c.step_lag_s
            if lag > slack:
                c.steps_late += 1
                if lag > c.step_lag_max_s:
                    c.step_lag_max_s = lag
                if lag > MAX_LAG_S:
                    deadline = clock()
            self._deliver(result, (deadline - self._origin) * scale)

    def _deliver(self, result: StepResult, t: float) -> None:
        """Hand a finished step's tokens to their requests (``t``: the step's end in sim seconds)."""
        pending = self._pending
        c = self.counters
        touched: list[Pending] = []
        for req in result.started:
            p = pending.get(req.request_id)
            if p is not None and req.first_scheduled_time is not None:
                c.queue.observe(max(0.0, req.first_scheduled_time - p.t_arrival))
        for req, tok in result.tokens:
            p = pending.get(req.request_id)
            if p is None:
                continue
            if p.n_out == 0:
                c.ttft.observe(max(0.0, t - p.t_arrival))
            else:
                c.itl.observe(max(0.0, t - p.t_last))
            p.t_last = t
            p.n_out += 1
            p.tokens.append(tok)
            if len(p.tokens) >= p.batch:
                touched.append(p)
        for req in result.finished:
            p = pending.get(req.request_id)
            reason = req.finish_reason or "length"
            c.finished[reason] = c.finished.get(reason, 0) + 1
            if p is None:
                continue
            c.e2e.observe(max(0.0, t - p.t_arrival))
            p.done = True
            touched.append(p)
        for p in touched:
            p.wake()

    # ---------------------------------------------------------------------------------------------------
    # The app

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/responses", self._responses)
        r.add_get("/v1/responses/{response_id}", self._retrieve)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/load_lora_adapter", self._load_lora)
        r.add_post("/v1/unload_lora_adapter", self._unload_lora)
        r.add_get("/health", self._health)
        r.add_get("/metrics", self._metrics)
        r.add_get("/metrics/", self._metrics)  # vLLM's prometheus_client app, which honours ``name[]``
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self._server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self._model_info)
        r.add_get("/get_load", self._get_load)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_post("/v1/completions/render", self._render_completions)
        r.add_post("/v1/chat/completions/render", self._render_chat)
        r.add_get("/kv_event_sources", self._kv_event_sources)
        r.add_get("/version", self._version)
        r.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        r.add_post("/sim/faults", self._set_faults)
        r.add_get("/sim/faults", self._get_faults)
        r.add_post("/sim/stop", self._admin_stop)
        r.add_post("/sim/start", self._admin_start)
        r.add_get("/sim/state", self._state)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if e.status < 400:
                raise
            msg = "Method Not Allowed" if e.status == 405 else e.reason
            return ApiError(e.status, msg).response()
