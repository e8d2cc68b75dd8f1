"""Many simulated replicas in one process and one event loop.

``async with SimFleet(8, profile="tiny", time_scale=10) as fleet: fleet.urls`` starts eight replicas on
ephemeral ports (or ``base_port .. base_port+N-1``), each with its own engine, driver task and aiohttp
site. Handles: ``fleet.replicas[i]`` (a :class:`~kvgate.sim.server.Replica`: ``stop()``/``start()``,
``faults``), and ``stop_replica(i)`` / ``start_replica(i)``.

An optional control port serves the operations a stopped replica cannot answer itself:
``GET /sim/replicas``, ``POST /sim/replicas/{i}/stop``, ``POST /sim/replicas/{i}/start``,
``POST /sim/replicas/{i}/faults`` (same body as the replica's ``/sim/faults``).
KV events (``kv_events_port`` set): replica ``i`` publishes on ``kv_events_port + 2i`` and answers replay on
``kv_events_port + 2i + 1`` (0: ephemeral ports; see each replica's ``/kv_event_sources``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from kvgate.aio import stop_to_the_end
from kvgate.sim.faults import FaultError
from kvgate.sim.server import ApiError, Replica, ReplicaConfig

log = logging.getLogger(__name__)


class SimFleet:
    def __init__(
        self,
        replicas: int = 1,
        *,
        base_port: int = 0,
        kv_events_port: int | None = None,
        control_port: int | None = None,
        **replica_options: Any,
    ) -> None:
        if replicas < 1:
            raise ValueError("a fleet needs at least one replica")
        base = ReplicaConfig(**replica_options)
        self.replicas: list[Replica] = []
        for i in range(replicas):
            kv_pub: int | None = None
            kv_replay: int | None = 0
            if kv_events_port is not None:
                kv_pub = kv_events_port + 2 * i if kv_events_port else 0
                kv_replay = kv_events_port + 2 * i + 1 if kv_events_port else 0
            cfg = dataclasses.replace(
                base, port=base_port + i if base_port else 0, kv_events_port=kv_pub, kv_replay_port=kv_replay
            )
            self.replicas.append(Replica(cfg, index=i))
        self.control_port = control_port
        self._control: web.AppRunner | None = None

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.replicas))
        if self.control_port is not None:
            self._control = web.AppRunner(self._control_app(), access_log=None, shutdown_timeout=1.0)
            await self._control.setup()
            site = web.TCPSite(
                self._control, self.replicas[0].cfg.host, self.control_port, reuse_address=True
            )
            await site.start()
            server = site._server
            if not self.control_port and server is not None:
                self.control_port = (getattr(server, "sockets", None) or [])[0].getsockname()[1]

    async def close(self) -> None:
        """Close the control port and every replica (``Replica.close``): to its end also when cancelled
        meanwhile, the cancellation raised after (``stop_to_the_end``: the replicas' closes were cut)."""
        await stop_to_the_end(self._close(), "simulated fleet: closing", log)

    async def _close(self) -> None:
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        await asyncio.gather(*(r.close() for r in self.replicas), return_exceptions=True)

    async def stop_replica(self, i: int) -> None:
        await self.replicas[i].stop()

    async def start_replica(self, i: int) -> None:
        await self.replicas[i].start()

    async def __aenter__(self) -> SimFleet:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ----- control port -----

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/sim/replicas", self._list)
        app.router.add_post("/sim/replicas/{i}/{op}", self._op)
        return app

    def _describe(self) -> list[dict[str, Any]]:
        return [
            {"index": r.index, "url": r.url, "running": r.running, "faults": r.faults.as_dict()}
            for r in self.replicas
        ]

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._describe(), dumps=lambda o: orjson.dumps(o).decode())

    async def _op(self, request: web.Request) -> web.StreamResponse:
        try:
            i = int(request.match_info["i"])
            replica = self.replicas[i]
        except (ValueError, IndexError):
            return ApiError(404, f"no replica {request.match_info['i']!r}").response()
        op = request.match_info["op"]
        if op == "stop":
            await replica.stop()
        elif op == "start":
            await replica.start()
        elif op == "faults":
            try:
                body = orjson.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise FaultError("the body must be a JSON object")
                replica.faults.apply(body)  # (as the replica's /sim/faults: "clear" too)
            except (orjson.JSONDecodeError, FaultError) as e:
                return ApiError(400, str(e)).response()
        else:
            return ApiError(404, f"unknown operation {op!r}").response()
        return web.json_response(self._describe()[i], dumps=lambda o: orjson.dumps(o).decode())
