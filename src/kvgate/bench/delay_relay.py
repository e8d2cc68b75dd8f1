"""A userspace TCP relay that adds a fixed network round trip: ``python -m kvgate.bench.delay_relay``.

Why: the live multi-cluster benchmark needs 5-80 ms round trips between the global gateway and each
cluster's network namespace, and the kernel here has no ``netem`` qdisc (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"). So the cross-cluster paths go through this relay instead: it accepts a
connection, connects to its target, and forwards bytes both ways, each chunk held for the one-way delay
(RTT / 2) and written in the order it was read. What it emulates, per connection:
- the TCP handshake: a client's first bytes leave one RTT after it connected (a real client sends nothing
  before the SYN-ACK is back), and a refused or unreachable target is reported (the client's connection
  reset) one RTT after the connect;
- each chunk: read at t, written on the other side at t + RTT / 2 (never before an earlier chunk);
- close: an end-of-stream (FIN) travels like data, after what came before it; a reset or error on one side
  aborts the other side one-way delay later.
A dead target (a partition: its link cut, nothing reset) is found as the global gateway finds one on a
direct path: the upstream socket has the router's TCP keep-alive (``KEEPALIVE``: 5 s idle, 3 probes 2 s
apart) and ``TCP_USER_TIMEOUT`` for unacknowledged data, and when it fails the client's connection is
reset, so the gateway moves a request that has not started instead of waiting on a healthy loopback.
Not emulated: bandwidth, loss, jitter; the relay's own TCP is loopback/veth fast. Memory is bounded: each
direction holds at most ``MAX_QUEUED`` chunks of at most ``CHUNK`` bytes, and stops reading while full
(back-pressure reaches the sender through TCP).

Command line: ``--route LISTEN=TARGET@RTT_MS`` (repeatable), e.g. ``127.0.0.1:0=10.64.1.2:9090@40``;
port 0 picks a free port. Prints one ``relay LISTEN -> TARGET rtt R ms`` line per route once listening,
then ``relay ready``, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field

from kvgate.aio import cancel_all_and_wait, cancel_and_wait, stop_to_the_end
from kvgate.entry import ArgumentParser
from kvgate.sockopts import tcp_keepalive

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_QUEUED = 64  # chunks per direction: at most 4 MiB held per direction of a connection
CONNECT_TIMEOUT_S = 3.0
KEEPALIVE = (5, 2, 3)  # idle s, probe interval s, probes: kvgate.multicluster.router's upstream settings

_EOF = b""  # queued marker: the reading side sent FIN
_ABORT = None  # queued marker: the reading side failed (reset, error)


@dataclass(slots=True)
class Route:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    rtt_s: float

    @classmethod
    def parse(cls, text: str) -> Route:
        """``LISTEN_HOST:PORT=TARGET_HOST:PORT@RTT_MS``."""
        try:
            left, rest = text.split("=", 1)
            target, rtt = rest.rsplit("@", 1)
            lh, lp = left.rsplit(":", 1)
            th, tp = target.rsplit(":", 1)
            return cls(lh, int(lp), th, int(tp), float(rtt) / 1000.0)
        except ValueError:
            raise ValueError(
                f"bad route {text!r}: expected LISTEN_HOST:PORT=TARGET_HOST:PORT@RTT_MS"
            ) from None


@dataclass(slots=True)
class DelayRelay:
    """One listening socket relaying to one target with ``rtt_s`` added per round trip."""

    route: Route
    handshake: bool = True  # hold a connection's first bytes for one RTT (the emulated TCP handshake)
    port: int = 0
    connections: int = 0  # accepted so far
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: bool = False  # (from the start of ``close``: a connection whose task starts now is reset)

    @property
    def owd(self) -> float:
        return self.route.rtt_s / 2.0

    async def start(self) -> int:
        r = self.route
        self._closing = False
        self._server = await asyncio.start_server(self._handle, r.listen_host, r.listen_port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening, end every relayed connection (both its sockets closed) and wait until their
        tasks ended: to its end also when cancelled meanwhile, the cancellation raised after
        (``stop_to_the_end``; a cancel had raised at once while the connections still wound down). A
        connection accepted just before, whose task had not run yet (review s13-hard L3: it was relayed
        after ``close`` returned), is reset when its task runs (its first step, maybe after ``close``
        returned), without connecting to the target; the close waits until no task it knows is left."""
        await stop_to_the_end(self._close(), f"delay relay {self.port}: closing", log)

    async def _close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        seen: set[asyncio.Task[None]] = set()
        while left := self._tasks - seen:  # (until none is left; one abandoned as stuck only once)
            seen |= left
            await cancel_all_and_wait(list(left), "relayed connection", log)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        if self._closing:  # (accepted before the close, run after its start: not relayed)
            down_w.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            await self._relay(down_r, down_w)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        rtt = self.route.rtt_s
        _nodelay(down_w)
        try:  # (asyncio.timeout: Python 3.11's wait_for dropped a cancel landing as it connected, gh-86296)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_r, up_w = await asyncio.open_connection(self.route.target_host, self.route.target_port)
        except (OSError, TimeoutError):
            # The client learns of a refused / unreachable target when the RST would have come back.
            await _sleep_until(loop, accepted + rtt)
            down_w.transport.abort()
            return
        _nodelay(up_w)
        _keepalive(up_w)
        first_out = accepted + (rtt if self.handshake else 0.0)
        to_up = asyncio.create_task(self._pump(down_r, up_w, first_out))
        to_down = asyncio.create_task(self._pump(up_r, down_w, accepted))
        aborted = True
        try:
            # A clean end of one direction (FIN forwarded) waits for the other; a failure ends both.
            done, pending = await asyncio.wait({to_up, to_down}, return_when=asyncio.FIRST_COMPLETED)
            if pending and all(_clean(t) for t in done):
                done |= (await asyncio.wait(pending))[0]
            aborted = not all(_clean(t) for t in done)
        finally:
            try:
                await cancel_all_and_wait(
                    (to_up, to_down), "relay pump", log
                )  # (raises a cancel of the relay)
            finally:
                for w in (up_w, down_w):
                    if aborted:
                        w.transport.abort()
                    else:
                        w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, not_before: float) -> bool:
        """Copy ``src`` to ``dst``, each chunk delayed by the one-way delay, in order. True on a clean
        end of stream (FIN forwarded), False when either side failed (the caller aborts both)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(MAX_QUEUED)
        owd = self.owd

        async def read() -> None:
            while True:
                try:
                    data = await src.read(CHUNK)
                except (OSError, asyncio.IncompleteReadError):
                    await queue.put((max(loop.time(), not_before) + owd, _ABORT))
                    return
                # Released one-way delay after it was read (and never before the emulated handshake):
                # the times only grow, so the queue's order is the wire's order.
                await queue.put((max(loop.time(), not_before) + owd, data))
                if not data:
                    return

        reader = asyncio.create_task(read())
        try:
            while True:
                release, data = await queue.get()
                await _sleep_until(loop, release)
                if data is _ABORT:
                    return False
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return True
                try:
                    dst.write(data)
                    await dst.drain()
                except (OSError, ConnectionError):
                    return False
        finally:
            await cancel_and_wait(reader, "relay reader", log)  # (raises a cancel of the pump)


def _clean(t: asyncio.Task[bool]) -> bool:
    return not t.cancelled() and t.exception() is None and t.result()


def _nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _keepalive(w: asyncio.StreamWriter) -> None:
    """The global gateway's keep-alive on the upstream socket: a cut path fails here in ~11 s."""
    sock = w.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        tcp_keepalive(sock, *KEEPALIVE)


async def _sleep_until(loop: asyncio.AbstractEventLoop, t: float) -> None:
    delay = t - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def serve(routes: list[Route], handshake: bool = True) -> None:
    relays = [DelayRelay(r, handshake=handshake) for r in routes]
    for rl in relays:
        await rl.start()
        r = rl.route
        print(
            f"relay {r.listen_host}:{rl.port} -> {r.target_host}:{r.target_port} rtt {r.rtt_s * 1000:g} ms",
            flush=True,
        )
    print("relay ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for rl in relays:
        await rl.close()


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m kvgate.bench.delay_relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--route", action="append", default=[], help="LISTEN_HOST:PORT=TARGET_HOST:PORT@RTT_MS")
    p.add_argument("--no-handshake", action="store_true", help="don't hold first bytes for one RTT")
    args = p.parse_args(argv)
    try:
        routes = [Route.parse(r) for r in args.route]
    except ValueError as e:
        p.error(str(e))
    if not routes:
        p.error("at least one --route")
    try:
        import uvloop

        uvloop.run(serve(routes, handshake=not args.no_handshake))
    except ImportError:
        asyncio.run(serve(routes, handshake=not args.no_handshake))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
