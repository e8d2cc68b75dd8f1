"""A test backend that can go down and come back on its own port (qa30's ``Switchable``): no port is
ever re-bound."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.backend import Backend


class Switchable(Backend):
    """A backend that can be "down": requests reset, ``/metrics`` and ``/health`` answer 503 (a server
    that died behind a port that is still bound, e.g. a sidecar), and come back (``down = False``)."""

    down = False

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="down")
        return await super()._metrics(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.down else 200, text="")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        return await super()._generate(request)
