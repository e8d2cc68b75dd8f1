"""Subprocesses for live benchmarks: start one, read the addresses it prints, always stop it.

Every server here binds 127.0.0.1 on a port it picks (or we pick) and prints where it listens; we
wait for that line with a deadline, keep draining its output into a bounded ring (so a chatty
process can never block on a full pipe), and stop it with SIGTERM then SIGKILL of its own process
group — never anything we did not start. (What a bench leaves running when it is itself terminated is
``kvgate.bench.reaper``'s.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvgate import lifeline
from kvgate.aio import stop_to_the_end
from kvgate.bench import ports, reaper
from kvgate.k8s.tasks import wait_event

log = logging.getLogger(__name__)


def free_port() -> int:
    """A 127.0.0.1 port for servers that need one given (peer routers): outside the kernel's ephemeral
    range, so no port-0 bind takes it before the server binds it (``kvgate.bench.ports``)."""
    return ports.free_port()


def kvgate_cmd(*args: str) -> list[str]:
    """``kvgate <args>`` with this interpreter (works from a venv without the script on PATH)."""
    return [sys.executable, "-m", "kvgate.cli", *args]


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _reader: asyncio.Task[None] | None = None
    start_time: int | None = None  # its leader's, from /proc at start (None: unknown)

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def _ours(self) -> bool:
        """Whether group ``pid`` is still the one it led: not when a process now at its pid is not it
        (its exit was collected, so the pid was free: any group of that id is someone else's; or the
        start time differs). Checked just before each signal. (Left: the pid reused by a process that
        led a group of its own and exited meanwhile, its children still running.)"""
        st = lifeline.stat(self.proc.pid)
        if st is None:  # its leader gone: the group's members (if any) are its own (the id stays taken)
            return True
        if self.proc.returncode is not None:
            return False
        return self.start_time is None or st[3] == self.start_time

    def _kill(self, sig: int) -> None:
        if not self._ours():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _running(self) -> bool:
        """It, or a process of its group (a child it left behind), still runs."""
        if not self._ours():
            return False
        return self.proc.returncode is None or reaper.group_alive(self.proc.pid)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to its process group; SIGKILL to the group once ``grace`` passed with any of it
        still running (its leader may have ended and left children); then its leader collected (its
        exit status known) and the rest of its group ended (both at most ``grace`` after the SIGKILL),
        its output reader ended, its pipe closed
        and the group's orphans collected (``reaper.collect_orphans``). Cancelled meanwhile (a Ctrl-C),
        it sends SIGKILL at once instead of waiting out the grace, and does all the rest before it
        raises the cancellation, once (``stop_to_the_end``; before, it raised right after the SIGKILL:
        the leader not collected, the pipe left open, the orphans left zombies). It never swallows the
        caller's cancellation (no ``asyncio.wait_for``, which on Python 3.11 may drop one, CPython
        gh-86296; no ``suppress(CancelledError)`` around an await)."""
        hurry = asyncio.Event()  # (set at the caller's cancel: SIGKILL now)
        await stop_to_the_end(
            self._stop(grace, hurry), f"{self.name}: stopping", log, 2 * grace + 10.0, on_cancel=hurry.set
        )

    async def _stop(self, grace: float, hurry: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._running():
                self._kill(signal.SIGTERM)
                deadline = loop.time() + grace
                while self._running() and loop.time() < deadline and not hurry.is_set():
                    await wait_event(hurry, 0.05)  # (a group: no event for its end)
                if self._running():
                    self._kill(signal.SIGKILL)
            # Its leader collected (by asyncio's child watcher) before the pipe is closed and the
            # orphans are: not proc.wait(), which on Python 3.11 waits for the output pipe too, which
            # a child in a session of its own may hold. Then the rest of its group ended too: a member
            # killed with it may take longer to die (freeing its memory: an engine process's GBs) and
            # would become a zombie only after ``collect_orphans`` looked (review s15-hard M1).
            deadline = loop.time() + grace
            while self.proc.returncode is None and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            while self._running() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        except BaseException:  # (this stop's own task cancelled: ``asyncio.run`` ending on an interrupt)
            if self._running():
                self._kill(signal.SIGKILL)
            raise
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.wait([self._reader])
            if self.proc.returncode is not None:
                reaper.collect_orphans(self.proc.pid)  # (its children it left, ours as a subreaper)
                # Its pipe closed too (asyncio closes the transport only once the output reached its
                # end; one left open is closed when collected, an error once the loop closed).
                transport = getattr(self.proc, "_transport", None)
                if transport is not None:
                    transport.close()


async def start(
    name: str,
    cmd: Sequence[str],
    ready: str | None,
    *,
    count: int = 1,
    wait_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> tuple[Proc, list[re.Match[str]]]:
    """Start ``cmd``; wait until ``count`` output lines match the ``ready`` regex; return the matches.
    ``ready=None``: return at once (the caller polls an HTTP endpoint instead).

    Raises ``RuntimeError`` with the process's last output lines if it exits or times out first.
    """
    proc = await asyncio.create_subprocess_exec(
        *lifeline.die_with_parent_argv(cmd),  # (SIGTERM when the bench dies, even by SIGKILL)
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, so stop() reaches its children too
    )
    st = lifeline.stat(proc.pid)  # (not collected yet: its pid cannot have been reused)
    p = Proc(name, proc, start_time=None if st is None else st[3])
    pattern = re.compile(ready or r"\A(?!x)x")  # never matches when ready is None
    matches: list[re.Match[str]] = []
    found = asyncio.Event()

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            p.lines.append(line)
            if len(matches) < count:
                m = pattern.search(line)
                if m:
                    matches.append(m)
                    if len(matches) >= count:
                        found.set()
        found.set()  # EOF: the process is gone

    p._reader = asyncio.create_task(read())
    if ready is None:
        return p, []
    try:
        # (not wait_for, which on Python 3.11 may return as the line arrives and drop a Ctrl-C that
        # lands in the same turn: the bench would go on; kvgate.k8s.tasks.wait_event)
        ready_in_time = await wait_event(found, wait_s)
    except BaseException:  # cancelled (Ctrl-C) while it starts: not left running
        await p.stop()
        raise
    if not ready_in_time:
        await p.stop()
        raise RuntimeError(f"{name}: not ready after {wait_s:.0f} s; last output:\n{p.tail()}")
    if len(matches) < count:
        await p.stop()
        raise RuntimeError(f"{name}: exited (rc {proc.returncode}) before ready; last output:\n{p.tail()}")
    return p, matches


async def exit_code(p: Proc, limit_s: float) -> int:
    """``p``'s exit status once it ended; ``RuntimeError`` with its last output lines if it still runs
    after ``limit_s`` (it is left to the caller's ``stop``). Polled: not ``asyncio.wait_for(proc.wait(),
    ...)``, which on Python 3.11 may drop the caller's cancellation (gh-86296), raised ``TimeoutError``
    past the bench's ``RuntimeError`` handling, and waits for the output pipe too (a child may hold it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while (rc := p.proc.returncode) is None:
        if loop.time() >= deadline:
            raise RuntimeError(f"{p.name}: still running after {limit_s:.0f} s; last output:\n{p.tail()}")
        await asyncio.sleep(0.1)
    return rc


async def wait_http(url: str, wait_s: float = 30.0, ok: Sequence[int] = (200,)) -> None:
    """Poll ``url`` until it answers one of ``ok``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last = ""
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status in ok:
                        return
                    last = f"http {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                last = type(e).__name__
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {wait_s:.0f} s ({last})")
