"""The parse-off-loop tests' set-up: a door's ``parse_body`` replaced by one that holds the parse of the
bodies a test picks (``hold_parse``) until the test lets it go, so a test can see what is served while a
parse is in progress (an 8 MiB hostile body's parse runs ~0.2-2 s: ``scripts/hostile_body_cost.py``).

A hold ends at ``HOLD_S`` at the latest: only so that a parse held on the event loop (the failure the tests
look for) gives the loop back in the end; a test asserts that no hold ended so (``still_held``), never a
duration."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import aiohttp
import pytest

HOLD_S = 10.0


class HeldParse:
    """Stands for ``parse_body``: the parses of bodies ``held(raw)`` picks wait for ``release`` (all of
    them) or a turn (``let_one``: one each), at most ``HOLD_S``."""

    def __init__(self, real: Callable[[str, Any], Any], held: Callable[[bytes], bool]) -> None:
        self.real, self.held = real, held
        self.entered = threading.Event()  # a held parse started
        self.release = threading.Event()
        self._turns = threading.Semaphore(0)
        self.held_out: list[bool] = []  # per held parse: True if its hold ran out (not let go)
        self.threads: list[str] = []  # the thread each parse ran on, in the order they started
        self.started: list[bytes] = []  # each parsed body's first 32 bytes, in the order they started

    def __call__(self, kind: str, raw: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.started.append(bytes(raw[:32]))
        if self.held(raw):
            self.entered.set()
            self.held_out.append(not self._wait())
        return self.real(kind, raw)

    def _wait(self) -> bool:
        end = time.monotonic() + HOLD_S
        while not self.release.is_set():
            if self._turns.acquire(timeout=0.01):
                return True
            if time.monotonic() > end:
                return False
        return True

    def let_one(self) -> None:
        """One held parse (the one waiting, or the next) may end."""
        self._turns.release()

    def still_held(self) -> bool:
        """No hold was let go by ``release`` nor ran out: what the test saw happened while held."""
        return not self.release.is_set() and self.held_out == []


def hold_parse(monkeypatch: pytest.MonkeyPatch, module: Any, held: Callable[[bytes], bool]) -> HeldParse:
    """``module.parse_body`` (the door's own name for it) replaced by a ``HeldParse`` for the test."""
    hp = HeldParse(module.parse_body, held)
    monkeypatch.setattr(module, "parse_body", hp)
    return hp


def tagged(tag: str) -> Callable[[bytes], bool]:
    """Picks the bodies whose first key is ``"model": tag`` (orjson keeps the order keys are given in)."""
    head = b'{"model":"' + tag.encode() + b'"'
    return lambda raw: bytes(raw[: len(head)]) == head


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    """POST a JSON body; its status once the whole answer is read."""
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
        await r.read()
        return r.status


class HeldThread:
    """The lane tests' set-up (``httpfront.offload`` alone): a parse that waits for ``release``, then records
    its body (``order``: the bodies, decoded, in the order parsed) and returns its length. ``hold_first``
    puts a first body on the parse thread and waits until its parse started, so every body sent after it
    is listed, in the order the test sends them, while the thread is held."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()
        self.order: list[str] = []

    def __call__(self, body: bytes) -> int:
        self.started.set()
        self.release.wait(60)
        self.order.append(body.decode())
        return len(body)

    def send(
        self, body: bytes, client: Hashable, share: int | None = None, limit: int = 0, keyed: bool = True
    ) -> asyncio.Future[int]:
        """``body`` to the lane as ``client``'s (``share``, ``limit``, ``keyed``: ``off_loop``'s bound)."""
        from kvgate.httpfront import offload

        return asyncio.ensure_future(offload.off_loop(self, body, client, share, limit, keyed))

    async def hold_first(
        self, body: bytes, client: Hashable, share: int | None = None, limit: int = 0
    ) -> asyncio.Future[int]:
        first = self.send(body, client, share, limit)
        assert await asyncio.to_thread(self.started.wait, 30)  # (the parse thread is held)
        return first


def from_host(host: str) -> aiohttp.ClientSession:
    """A client session whose connections come from ``host`` (a loopback address: a client of its own for
    the parse lane, which takes clients by peer host)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))
