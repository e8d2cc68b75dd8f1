"""The simulated replica's admin routes under ``/sim/``: faults, stop/start (crash and restart), state."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from kvgate.sim.faults import FaultError
from kvgate.sim.replica_base import ApiError, ReplicaState, json_response

log = logging.getLogger(__name__)


class AdminRoutes(ReplicaState):
    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        try:
            self.faults.apply(body)
        except FaultError as e:
            raise ApiError(400, str(e)) from None
        return json_response(self.faults.as_dict())

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.faults.as_dict())

    async def _admin_stop(self, request: web.Request) -> web.StreamResponse:
        """Crash now (after answering); ``{"restart_after_s": X}`` restarts it X seconds later. Otherwise only
        ``Replica.start()`` or the fleet's control port can bring it back, since this port stops listening."""
        body = await self._body(request) if request.can_read_body else {}
        after = body.get("restart_after_s")
        if after is not None and (not isinstance(after, int | float) or isinstance(after, bool) or after < 0):
            raise ApiError(400, "restart_after_s must be a number >= 0", "restart_after_s")
        if self._closing:  # (no crash task the close would not wait for: review s13-hard L3)
            raise ApiError(503, "the replica is closing")
        self._bg.append(asyncio.get_running_loop().create_task(self._crash(after)))
        return json_response({"stopping": True, "port": self.port, "restart_after_s": after})

    async def _crash(self, restart_after: float | None) -> None:
        await asyncio.sleep(0.01)  # let the admin response go out first
        await self.stop()
        if restart_after is not None:
            await asyncio.sleep(restart_after)
            await self.start()

    async def _admin_start(self, request: web.Request) -> web.StreamResponse:
        # Reachable only while running (a stopped replica has no listening port): a no-op kept for symmetry.
        return json_response({"running": self.running, "port": self.port})

    async def _state(self, request: web.Request) -> web.StreamResponse:
        s = self.engine.stats()
        c = self.counters
        return json_response(
            {
                "running": self.running,
                "num_running": s.num_running,
                "num_waiting": s.num_waiting,
                "kv_cache_usage": s.kv_cache_usage,
                "pending": len(self._pending),
                "steps": c.steps,
                "steps_late": c.steps_late,
                "step_lag_s": c.step_lag_s,
                "step_lag_max_s": c.step_lag_max_s,
                "step_lag_sum_s": c.step_lag_sum_s,
                "step_time_s": c.step_time_s,
                "generation_tokens_total": s.generation_tokens_total,
                "faults": self.faults.as_dict(),
            }
        )
