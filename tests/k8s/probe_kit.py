"""Helpers shared by the liveness-probe tests (test_probe_*.py): a started pod reflector on injected time
with the probe on (60 s, 10 s timeout), the fake clock's advance, and API Status answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import web

from fake_time import FakeTime
from k8s.reflector_kit import create_pod, until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD


def status_response(
    code: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A Kubernetes ``Status`` failure answer (``code``/``reason``/``message``) with HTTP status ``code``."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
              "message": message}  # fmt: skip
    return web.json_response(status, status=code, headers=headers)


async def advance_to(ft: FakeTime, when: float) -> None:
    """Moves the fake clock to ``when``, stopping at every sleeper's wake-up on the way (and letting the
    loop run 50 ms of real time after each step)."""
    while ft.now < when:
        wake = ft.next_wake()
        step = when - ft.now if wake is None or wake <= ft.now else min(when, wake) - ft.now
        ft.advance(step)
        await asyncio.sleep(0.05)


async def advance(ft: FakeTime, seconds: float) -> None:
    """``advance_to`` ``seconds`` from now."""
    await advance_to(ft, ft.now + seconds)


async def advance_probes(ft: FakeTime, at: Sequence[float], answered: Callable[[int], bool]) -> None:
    """Moves the fake clock to each probe's send time in ``at`` in turn and waits (the state, 30 s deadline)
    until ``answered(n)`` holds for the n-th probe (from 1) before the clock may pass its timeout: one
    ``advance`` through several probes raced each real HTTP answer against 50 ms of real time, and a late
    answer (a loaded machine) lost to the probe's own timer (review rev-c35 F1)."""
    for n, when in enumerate(at, start=1):
        await advance_to(ft, when)
        await until(functools.partial(answered, n))


@contextlib.asynccontextmanager
async def probed_reflector(double: ApiServerDouble, ft: FakeTime, **kw: Any) -> AsyncIterator[Reflector]:
    """One pod on ``double`` and a reflector of the default namespace's pods on ``ft``'s clock and sleep
    (seed 1, probe after 60 s of silence, 10 s timeout, ``kw`` to the reflector), synced and watching with
    its probe asleep; at the end ``double`` unstalled, the reflector stopped and its client closed."""
    create_pod(double)
    client = await KubeClient.connect(server=double.url)
    r = Reflector(client, POD, namespace="default", clock=ft.clock, sleep=ft.sleep, seed=1,
                  probe_after_s=60.0, probe_timeout_s=10.0, **kw)  # fmt: skip
    r.start()
    try:
        await r.wait_synced()
        await until(lambda: r.watches >= 1 and ft.next_wake() is not None)
        yield r
    finally:
        double.unstall()
        await r.stop()
        await client.close()
