"""`kvgate bench soak`: hours of bad clients against a real ``kvgate serve``, then the bill.

A simulated fleet (``kvgate sim``, one process, a control port) behind a ``kvgate serve`` process, and
for ``--minutes``: well-behaved clients (streamed and whole answers), slow readers, stalled readers (a
tiny receive window, never read), clients that disconnect after the first event, slowloris clients
(one header byte at a time), and every ``--restart-every`` seconds one replica stopped and started
again. At the end the load stops while a last batch of stalled readers stays connected past the send
deadline. Reported (goals in brackets):

- gateway RSS at start and end (flat);
- 5xx answers to well-behaved clients, split into "lost, not started" (an error before any token:
  the gateway had other replicas to retry on; goal 0) and streams cut mid-way by a replica restart
  (expected: the SSE error event, no ``[DONE]``);
- slots held past the deadline: the gateway's in-flight gauge once only stalled clients remain and
  their send deadline has passed (goal 0);
- the gateway's own counters: send/header/body timeouts, refused connections.

Not in CI (``make soak``); every figure in docs/hardening.md names the command that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import yaml

from kvgate.bench import procs
from kvgate.entry import ArgumentParser, nonneg_int, nonneg_number, positive_int, positive_number, prog
from kvgate.k8s.tasks import wait_event

MODEL = "sim-model"


@dataclass
class Tally:
    ok: int = 0
    server_errors: int = 0  # 5xx answers to well-behaved clients
    lost_not_started: int = 0  # an error (5xx, reset) before any token
    cut_after_start: int = 0  # streams ended by the SSE error event (a replica restarted mid-way)
    client_errors: dict[int, int] = field(default_factory=dict)  # 4xx (429 under load is expected)
    slow_ok: int = 0
    stalled: int = 0
    disconnects: int = 0
    slowloris_408: int = 0
    slowloris_other: int = 0
    restarts: int = 0
    client_task_errors: int = 0  # a bad client's own failures (it starts again)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _request(stream: bool, max_tokens: int, rnd: random.Random) -> bytes:
    body = {
        "model": MODEL,
        "prompt": f"soak {rnd.randrange(1 << 30)} " + "lorem ipsum " * rnd.randrange(1, 40),
        "max_tokens": max_tokens,
        "stream": stream,
    }
    return orjson.dumps(body)


def _raw(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.rnd = random.Random(args.seed)
        self.port = 0
        self.ctl = 0
        self.stop = asyncio.Event()

    # -- well-behaved -----------------------------------------------------------------------------
    async def good_client(self, s: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/completions"
        t = self.tally
        while not self.stop.is_set():
            stream = self.rnd.random() < 0.6
            body = _request(stream, self.rnd.randrange(4, 64), self.rnd)
            try:
                async with s.post(url, data=body) as r:
                    if r.status >= 500:
                        t.server_errors += 1
                        t.lost_not_started += 1
                        await r.read()
                        continue
                    if r.status >= 400:
                        t.client_errors[r.status] = t.client_errors.get(r.status, 0) + 1
                        await r.read()
                        await asyncio.sleep(0.05)
                        continue
                    data = await r.read()
                if not stream or data.rstrip().endswith(b"data: [DONE]"):
                    t.ok += 1
                elif b'"error"' in data:
                    started = data.count(b"data: ") > 1  # token events before the error event
                    if started:
                        t.cut_after_start += 1
                    else:
                        t.lost_not_started += 1
                        t.server_errors += 1
                else:
                    t.lost_not_started += 1
            except (aiohttp.ClientError, TimeoutError):
                t.lost_not_started += 1

    # -- bad clients ------------------------------------------------------------------------------
    async def slow_reader(self, s: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/completions"
        while not self.stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.post(url, data=_request(True, 64, self.rnd)) as r:
                    async for _ in r.content.iter_chunked(256):
                        await asyncio.sleep(0.05)
                    self.tally.slow_ok += r.status == 200

    async def stalled_reader(self, hold_s: float) -> None:
        """A tiny receive window, a long stream, never a byte read; closed after ``hold_s``."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
            _, w = await asyncio.open_connection(sock=sock)
            w.write(_raw(self.port, _request(True, self.args.stall_tokens, self.rnd)))
            self.tally.stalled += 1
            await asyncio.sleep(hold_s)
            w.transport.abort()
        except OSError:
            sock.close()

    async def stalled_loop(self) -> None:
        while not self.stop.is_set():
            await self.stalled_reader(self.args.stall_hold)

    async def disconnector(self) -> None:
        """Reads the first event of a stream, then resets the connection."""
        while not self.stop.is_set():
            w = None
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.write(_raw(self.port, _request(True, 200, self.rnd)))
                async with asyncio.timeout(30):  # (not wait_for: it may drop a Ctrl-C, gh-86296)
                    await r.readuntil(b"data: ")
                self.tally.disconnects += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.tally.client_task_errors += 1
            finally:
                if w is not None:
                    w.transport.abort()
            await asyncio.sleep(0.1)

    async def slowloris(self) -> None:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'a' * 4000}\r\n".encode()
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(1)
                continue
            give_up = loop.time() + self.args.header_timeout + 1.5
            answer = asyncio.create_task(r.read(64))  # read while trickling: the 408 comes mid-way
            try:
                for i in range(len(head)):
                    if answer.done() or loop.time() > give_up or self.stop.is_set():
                        break
                    w.write(head[i : i + 1])
                    await w.drain()
                    await asyncio.sleep(0.2)
            except (ConnectionError, OSError):
                pass
            try:
                async with asyncio.timeout(2):  # (not wait_for: it may drop a Ctrl-C, gh-86296)
                    out = await answer
            except (OSError, TimeoutError):
                out = b""
            if out.startswith(b"HTTP/1.1 408"):
                self.tally.slowloris_408 += 1
            else:
                self.tally.slowloris_other += 1
            w.transport.abort()

    async def restarter(self, s: aiohttp.ClientSession) -> None:
        i = 0
        while not self.stop.is_set():
            # (not wait_for, which on Python 3.11 may return and drop a cancel landing as stop is set)
            if await wait_event(self.stop, self.args.restart_every):
                return
            base = f"http://127.0.0.1:{self.ctl}/sim/replicas/{i % self.args.replicas}"
            async with s.post(base + "/stop") as r:
                r.raise_for_status()
            await asyncio.sleep(2.0)
            async with s.post(base + "/start") as r:
                r.raise_for_status()
            self.tally.restarts += 1
            i += 1

    # -- the run ----------------------------------------------------------------------------------
    async def gauges(self, s: aiohttp.ClientSession) -> dict[str, float]:
        async with s.get(f"http://127.0.0.1:{self.port}/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("kvgate_gateway_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def run(self) -> dict[str, object]:
        a = self.args
        self.ctl = procs.free_port()
        sim, matches = await procs.start(
            "sim",
            procs.kvgate_cmd(
                "sim", "--replicas", str(a.replicas), "--base-port", "0", "--model", MODEL,
                "--time-scale", str(a.time_scale), "--control-port", str(self.ctl),
            ),
            r"replica \d+: (http://\S+)",
            count=a.replicas,
        )  # fmt: skip
        gw = None
        try:
            endpoints = [m.group(1) for m in matches]
            self.port = procs.free_port()
            cfg = {
                "listen": {"host": "127.0.0.1", "port": self.port},
                "pools": [{"name": "soak", "endpoints": endpoints, "models": [MODEL], "policy": a.policy}],
                "limits": {
                    "maxConcurrentRequests": a.max_concurrent,
                    "sendTimeoutSeconds": a.send_timeout,
                    "headerTimeoutSeconds": a.header_timeout,
                    "bodyTimeoutSeconds": a.header_timeout,
                },
                "health": {"ejectBaseSeconds": 1, "ejectMaxSeconds": 5},
            }
            tmp = Path(tempfile.mkdtemp(prefix="kvgate-soak-"))
            (tmp / "gw.yaml").write_text(yaml.safe_dump(cfg))
            gw, _ = await procs.start(
                "gateway",
                procs.kvgate_cmd("serve", "--config", str(tmp / "gw.yaml"), "--log-level", "ERROR"),
                None,
            )
            await procs.wait_http(f"http://127.0.0.1:{self.port}/readyz")
            pid = gw.proc.pid
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
                # Warm-up before the first RSS reading (imports, pools, first connections).
                await asyncio.sleep(2)
                rss_start = rss_kib(pid)
                t0 = time.monotonic()
                tasks = [asyncio.create_task(self.good_client(s)) for _ in range(a.clients)]
                tasks += [asyncio.create_task(self.slow_reader(s)) for _ in range(a.bad)]
                tasks += [asyncio.create_task(self.stalled_loop()) for _ in range(a.bad)]
                tasks += [asyncio.create_task(self.disconnector()) for _ in range(a.bad)]
                tasks += [asyncio.create_task(self.slowloris()) for _ in range(a.bad)]
                tasks.append(asyncio.create_task(self.restarter(s)))
                rss_peak = rss_start
                end = t0 + a.minutes * 60
                while time.monotonic() < end:
                    await asyncio.sleep(min(5.0, max(0.1, end - time.monotonic())))
                    rss_peak = max(rss_peak, rss_kib(pid))
                    if not gw.alive:
                        raise RuntimeError(f"the gateway died:\n{gw.tail()}")
                self.stop.set()
                # A last batch of stalled readers stays connected while everything else winds down.
                last = [asyncio.create_task(self.stalled_reader(a.final_wait * 2)) for _ in range(a.bad * 2)]
                t_stop = time.monotonic()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # Their streams fill the socket buffers (--stall-tokens), then block; the send deadline
                # must free every slot within --final-wait. What is still in flight then is held past it.
                released_after = None
                while time.monotonic() - t_stop < a.final_wait:
                    g = await self.gauges(s)
                    if g.get("kvgate_gateway_inflight_requests", -1) == 0:
                        released_after = round(time.monotonic() - t_stop, 1)
                        break
                    await asyncio.sleep(1)
                held = g.get("kvgate_gateway_inflight_requests", -1)
                for task in last:
                    task.cancel()
                await asyncio.sleep(1)
                rss_end = rss_kib(pid)
                elapsed = time.monotonic() - t0
        finally:
            if gw is not None:
                await gw.stop()
            await sim.stop()
        t = self.tally
        return {
            "minutes": round(elapsed / 60, 1),
            "rss_start_mib": round(rss_start / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1),
            "rss_peak_mib": round(rss_peak / 1024, 1),
            "ok": t.ok,
            "server_errors_5xx": t.server_errors,
            "lost_not_started": t.lost_not_started,
            "cut_after_start": t.cut_after_start,
            "client_errors_4xx": t.client_errors,
            "slots_held_past_deadline": held,
            "final_stalled_released_after_s": released_after,
            "slow_reader_streams": t.slow_ok,
            "stalled_clients": t.stalled,
            "disconnecting_clients": t.disconnects,
            "slowloris_408": t.slowloris_408,
            "slowloris_other": t.slowloris_other,
            "replica_restarts": t.restarts,
            "bad_client_errors": t.client_task_errors,
            "gateway_counters": {k: v for k, v in g.items() if "timeouts" in k or "refused" in k},
        }


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog("kvgate.bench.soak", "bench soak"),
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--minutes", type=positive_number, default=30.0)
    p.add_argument("--replicas", type=positive_int, default=3)
    p.add_argument("--clients", type=positive_int, default=16, help="well-behaved concurrent clients")
    p.add_argument("--bad", type=nonneg_int, default=4, help="clients of each bad kind")
    p.add_argument(
        "--restart-every", type=positive_number, default=60.0, help="seconds between replica restarts"
    )
    p.add_argument(
        "--send-timeout", type=positive_number, default=5.0, help="the gateway's limits.sendTimeoutSeconds"
    )
    p.add_argument(
        "--header-timeout", type=positive_number, default=3.0, help="limits.header/bodyTimeoutSeconds"
    )
    p.add_argument("--max-concurrent", type=positive_int, default=256)
    p.add_argument(
        "--stall-tokens",
        type=int,
        default=40_000,
        help="max_tokens of a stalled reader's stream (must outgrow the kernel's socket buffers, ~4 MB)",
    )
    p.add_argument(
        "--stall-hold", type=nonneg_number, default=60.0, help="seconds a stalled reader stays connected"
    )
    p.add_argument(
        "--final-wait",
        type=float,
        default=90.0,
        help="at the end: seconds for the last stalled readers' slots to be freed (fill + send deadline)",
    )
    p.add_argument("--time-scale", type=positive_number, default=10.0)
    p.add_argument("--policy", default="kvgate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = asyncio.run(Soak(args).run())
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = report["lost_not_started"] == 0 and report["slots_held_past_deadline"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
