"""A worker that dies during the drain gives its rows of the shared segment back, as at any other time
(wk26, issue #15's review of the order between workers under worker death).

While it runs, the supervisor zeroes a dead worker's rows when it sees the death (``Supervisor._ended``:
in flight, queue marks, queue places). Once SIGTERM started the drain it no longer watched: a worker
killed then (SIGKILL, the OOM killer, a crash) left its requests in flight in the other workers' view for
good. A worker that drains on serves its flow-control queue (review s18-qa M3), so its gate stayed
saturated on requests that no longer ran, and its queued requests waited out the drain and were answered
503 while the pool was idle.

Real processes: ``kvgate serve --workers 2``, one model server behind a gate of one request in flight.
The request in flight holds the server (answered only after a minute); the worker that sent it is found
from its connection (``/proc``); requests queue over both workers; SIGTERM, then that worker is killed.
Every queued request at the other worker must be answered 200 (those at the killed one end with their
connection). The second test is the running case (a guard, passes on main 6c4d40fa): the order between
the workers when the worker holding a higher band's head is killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import drain_kit, workers_kit
from gateway.backend import Backend

HOLD = "hold"


class Holding(Backend):
    """Answers at once, except a prompt of ``HOLD``: answered once ``release`` is set (or after a minute);
    its peer's port kept."""

    def __init__(self) -> None:
        super().__init__("h")
        self.held_from: int | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()  # (the held request is answered when it is set, or after a minute)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if body.get("prompt") == HOLD:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.held_from = peer[1] if peer else None
            self.held.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60.0):
                    await self.release.wait()
        return await super()._generate(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app


def _owner(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """The process among ``pids`` holding the TCP connection from ``local_port`` to ``remote_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                local, remote = cols[1].rsplit(":", 1)[1], cols[2].rsplit(":", 1)[1]
                if int(local, 16) == local_port and int(remote, 16) == remote_port:
                    inode = cols[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None  # (not accepted yet: in a listener's queue)


async def _owned(local_port: int, remote_port: int, pids: list[int], within_s: float = 10.0) -> int:
    """``_owner``, polled until a worker has accepted the connection."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    pid = _owner(local_port, remote_port, pids)
    while pid is None:
        assert loop.time() < end, f"no worker among {pids} holds the connection {local_port}-{remote_port}"
        await asyncio.sleep(0.02)
        pid = _owner(local_port, remote_port, pids)
    return pid


async def _queued(s: aiohttp.ClientSession, admin: int) -> dict[str, float]:
    """Each worker's requests queued (its ``queue_size`` series summed)."""
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    per: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "inference_extension_flow_control_queue_size":
            for smp in fam.samples:
                per[smp.labels["worker"]] = per.get(smp.labels["worker"], 0.0) + smp.value
    return per


async def _until_queued(
    s: aiohttp.ClientSession,
    admin: int,
    n: int,
    within_s: float = 5.0,
    each: float | None = None,
    exactly: bool = False,
    answered: Callable[[], int] | None = None,
) -> dict[str, float]:
    """Each worker's queue once the fleet's holds ``n`` (``exactly``: no more; ``each``: ``n`` workers
    holding that many each; ``answered``: the requests already answered count as held, review
    s26-rev-wkv26 F4: one dispatched before the other worker saw the held one never queues), or after
    ``within_s``."""

    def done(per: dict[str, float]) -> bool:
        if each is not None:
            return sorted(per.values()) == [each] * n
        got = sum(per.values()) + (answered() if answered is not None else 0)
        return got == n if exactly else got >= n

    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    per = await _queued(s, admin)
    while not done(per) and loop.time() < end:
        await asyncio.sleep(0.02)
        per = await _queued(s, admin)
    return per


async def _post(s: aiohttp.ClientSession, port: int, prompt: str) -> Any:
    """The status, or the client error's name (the connection ended with its worker)."""
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 2})
    try:
        async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError as e:
        return type(e).__name__


async def test_a_worker_killed_during_the_drain_frees_its_slots_for_the_other_workers_queue(
    tmp_path: Path,
) -> None:
    b = await Holding().start()
    cfg = drain_kit.flow_controlled_config(
        tmp_path, b.address, "defaultRequestTTL: 60s", "limits:\n  drainTimeoutSeconds: 8\n"
    )
    stderr = tmp_path / "stderr"
    proc, port, admin = await drain_kit.serve_workers(cfg, stderr)
    loop = asyncio.get_running_loop()
    sent: list[asyncio.Task[Any]] = []
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            held = asyncio.create_task(_post(s, port, HOLD))
            await asyncio.wait_for(b.held.wait(), 30)
            assert b.held_from is not None
            pids = workers_kit.children(proc.pid, b"spawn_main")
            holder = await _owned(b.held_from, b.port, pids)
            per: dict[str, float] = {}
            end = loop.time() + 30.0
            while len([v for v in per.values() if v >= 1]) < 2:  # (a new connection each: both queue some)
                assert loop.time() < end and len(sent) < 40, f"the queue never spread over both: {per}"
                sent.append(asyncio.create_task(_post(s, port, f"q{len(sent)}")))
                per = await _until_queued(s, admin, len(sent), answered=lambda: sum(t.done() for t in sent))
            proc.send_signal(signal.SIGTERM)
            await drain_kit._refused(port, 15.0)  # (every worker draining: the supervisor is stopping)
            os.kill(holder, signal.SIGKILL)
            got = await asyncio.gather(*sent)
            await asyncio.gather(held, return_exceptions=True)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        for t in sent:
            t.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.stop()
    answered = [g for g in got if g == 200]
    assert answered and all(g == 200 or isinstance(g, str) for g in got), (
        f"the survivor's queue was not served after its peer died in the drain: {got} (queued {per})"
    )


class _Raw:
    """One request on its own connection, written by hand: its client port tells which worker accepted it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def send(cls, port: int, prompt: str, objective: str) -> _Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 2})
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-gateway-inference-objective: {objective}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return cls(reader, writer)

    async def status(self) -> int | str:
        """The answer's status, or "closed" (the connection ended with no answer)."""
        try:
            line = await self.reader.readline()
        except ConnectionError:
            line = b""
        finally:
            self.writer.close()
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else "closed"


OBJECTIVES = "objectives:\n  - {name: critical, priority: 10}\n  - {name: batch, priority: -1}\n"


async def test_a_worker_killed_holding_a_higher_bands_head_lets_the_others_lower_band_go_once(
    tmp_path: Path,
) -> None:
    """The running case of the same review (a guard: passes on main 6c4d40fa). Worker A holds a critical
    request queued, worker B a batch one, behind one request in flight: B's batch head defers to A's mark
    (the order between workers). A is SIGKILLed; the slot then frees: B's batch request is sent (its
    dead peer's mark no longer holds it back) and answered 200, once; A's critical request ends with its
    connection and never reaches the server (no request moves between workers: none is sent twice)."""
    b = await Holding().start()
    cfg = drain_kit.flow_controlled_config(tmp_path, b.address, "defaultRequestTTL: 20s", OBJECTIVES)
    proc, port, admin = await drain_kit.serve_workers(cfg, tmp_path / "stderr")
    opened: list[_Raw] = []
    held: asyncio.Task[Any] | None = None
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            held = asyncio.create_task(_post(s, port, HOLD))
            await asyncio.wait_for(b.held.wait(), 30)
            pids = workers_kit.children(proc.pid, b"spawn_main")
            assert len(pids) == 2, pids
            # A worker sees the held request in flight one sync (5 ms, late under load) after its peer
            # sent it: a request it took before then went to the server (answered at once) and is sent
            # again under the next name; one it queued, it queues behind the held one for good.

            async def queued_at(prompt: str, objective: str, n: int) -> _Raw | None:
                r = await _Raw.send(port, prompt, objective)
                opened.append(r)
                end = asyncio.get_running_loop().time() + 30.0  # (worker processes, a loaded machine)
                while asyncio.get_running_loop().time() < end:
                    if prompt in [p.get("prompt") for _, _, p in b.received]:
                        return None  # (dispatched: its worker did not see the held one yet)
                    if sum((await _queued(s, admin)).values()) >= n:
                        return r
                    await asyncio.sleep(0.02)
                raise AssertionError(f"{prompt} neither queued nor sent")

            crit = None
            for k in range(10):
                crit = await queued_at(f"crit{k}", "critical", 1)
                if crit is not None:
                    break
            assert crit is not None, "every critical request went to the server: the pool never looked full"
            crit_prompt = f"crit{k}"
            a_pid = await _owned(port, crit.port, pids)
            batch = None
            for k in range(40):  # (a new connection each: the kernel spreads them; those at A leave)
                r = await queued_at(f"batch{k}", "batch", 2)
                if r is None:
                    continue
                if await _owned(port, r.port, pids) != a_pid:
                    batch = r
                    break
                r.writer.close()
                await _until_queued(s, admin, 1, 30.0, exactly=True)  # (it left A's queue)
            assert batch is not None, "no batch request queued at the other worker"
            batch_prompt = f"batch{k}"
            per = await _until_queued(s, admin, 2, 30.0, each=1.0)
            assert sorted(per.values()) == [1.0, 1.0], per  # (A: critical, B: batch)
            os.kill(a_pid, signal.SIGKILL)
            b.release.set()
            got_batch = await asyncio.wait_for(batch.status(), 30)
            got_crit = await asyncio.wait_for(crit.status(), 30)
            await asyncio.gather(held, return_exceptions=True)
    finally:
        for r in opened:
            r.writer.close()
        if held is not None:
            held.cancel()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await b.stop()
    prompts = [body.get("prompt") for _, _, body in b.received]
    assert got_batch == 200, f"B's batch request, its peer dead: {got_batch}"
    assert got_crit == "closed", got_crit
    assert prompts.count(batch_prompt) == 1, (batch_prompt, prompts)
    assert crit_prompt not in prompts, prompts
