"""What a router costs on the data path: kvgate vs the Rust peers, in front of the same instant backend.

    python -m kvgate.bench.gateway_overhead [--requests 3000] [--concurrency 64] [--repeats 3]
                                            [--paths direct,kvgate-rr,...] [--streams 10000] [--pin]

Everything runs on 127.0.0.1; as root the script re-executes itself inside a loopback-only network
namespace (``unshare -n`` + ``ip link set lo up``) so nothing can reach outside. Three processes per
measurement: a fast backend (raw asyncio protocol on uvloop, answers at once), the router under test,
and a lean load generator (keep-alive connections, one request in flight each). Paths are interleaved
across repeats and medians reported. The router's CPU per request comes from ``/proc/<pid>/stat``
(utime + stime, all threads) over the measured window only, and how it spread over the threads
(``/proc/<pid>/task/*/stat``): cores used at once on average, and the busiest thread's share. A router
path ending in ``/cpuN`` runs pinned to that CPU (e.g. ``kvgate/cpu1,sglang-router:cache_aware/cpu1``: one
core each, beside the unpinned paths), and each kvgate path's throughput is printed over each peer's
pinned alike. ``--pin`` pins every path alike instead: the router alone on the highest CPU, the load
generator and the backend on the others, the paths' order reversed in every other repeat; each repeat
prints the affinity the kernel reports for every router thread and the client side's CPU.

The second part measures how many concurrent streaming connections kvgate holds (the backend sends
one SSE chunk and holds each stream open) and its resident memory per held connection.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kvgate import lifeline
from kvgate.entry import ArgumentParser, nonneg_int, positive_int, prog

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b'{"model":"m","prompt":"Say hello to the benchmark","max_tokens":8}'
STREAM_BODY = b'{"model":"m","prompt":"Say hello","max_tokens":8,"stream":true}'
NOFILE = 200_000
_T = TypeVar("_T")

# --- fast backend -----------------------------------------------------------------------------------

_COMPLETION = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " hello", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15},
    },
    separators=(",", ":"),
).encode()
_METRICS = (
    b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 0\n'
    b'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 0\n'
    b'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
)
_INFO = json.dumps(
    {
        "model_path": "m",
        "tokenizer_path": "m",
        "is_generation": True,
        "served_model_name": "m",
        "version": "0.0.0",
    }
).encode()
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]}
).encode()


def _http(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_RESPONSES = {
    b"/v1/completions": _http("200 OK", _COMPLETION),
    b"/v1/chat/completions": _http("200 OK", _COMPLETION),
    b"/health": _http("200 OK", b"ok", b"text/plain"),
    b"/health_generate": _http("200 OK", b"ok", b"text/plain"),
    b"/metrics": _http("200 OK", _METRICS, b"text/plain"),
    b"/server_info": _http("200 OK", _INFO),
    b"/get_server_info": _http("200 OK", _INFO),
    b"/model_info": _http("200 OK", _INFO),
    b"/get_model_info": _http("200 OK", _INFO),
    b"/v1/models": _http("200 OK", _MODELS),
}
_STREAM_EVENT = (
    b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"hi"}]}\n\n'
)
_NOT_FOUND = _http("404 Not Found", b'{"error":"not found"}')
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def split_request(buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(path, body, rest of buf)`` of the first whole HTTP/1.1 request in ``buf`` (body framed by
    Content-Length, query string dropped), or None until all of it has arrived."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end]
    length = 0
    low = head.lower()
    i = low.find(b"content-length:")
    if i >= 0:
        j = low.find(b"\r\n", i)
        length = int(low[i + 15 : j if j >= 0 else None])
    total = end + 4 + length
    if len(buf) < total:
        return None
    path = head[head.find(b" ") + 1 : head.find(b" ", head.find(b" ") + 1)].split(b"?")[0]
    return path, buf[end + 4 : total], buf[total:]


class _BackendProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: enough parsing for the routers and the load generator."""

    hold_streams = False

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (req := split_request(self.buf)) is not None:
            path, body, self.buf = req
            self._respond(path, body)

    def _respond(self, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if b'"stream":true' in body.replace(b" ", b""):
            ev = _STREAM_EVENT
            if self.hold_streams:
                self.transport.write(_STREAM_HEAD + _chunk(ev))  # ...and never finish: a held stream
                return
            self.transport.write(_STREAM_HEAD + _chunk(ev) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return
        self.transport.write(_RESPONSES.get(path, _NOT_FOUND))


async def _backend(ports: list[int], hold: bool) -> None:
    _BackendProtocol.hold_streams = hold
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(_BackendProtocol, "127.0.0.1", p, backlog=4096, reuse_address=True)
        for p in ports
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --- load generator -----------------------------------------------------------------------------------


class _ClientProtocol(asyncio.Protocol):
    """One keep-alive connection; parses Content-Length and chunked responses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def request(self, raw: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        status = int(head[9:12])
        i = head.find(b"content-length:")
        if i >= 0:
            j = head.find(b"\r\n", i)
            total = end + 4 + int(head[i + 15 : j if j >= 0 else None])
            if len(self.buf) >= total:
                self.buf = self.buf[total:]
                self.waiter.set_result(status)
        elif b"chunked" in head:
            k = self.buf.find(b"\r\n0\r\n\r\n", end)
            if k >= 0 or self.buf[end + 4 : end + 9] == b"0\r\n\r\n":
                cut = k + 7 if k >= 0 else end + 9
                self.buf = self.buf[cut:]
                self.waiter.set_result(status)


def _request_bytes(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _loadgen(
    port: int, requests: int, concurrency: int, router_pid: int = 0, backend_pid: int = 0
) -> dict[str, Any]:
    """Send ``requests`` over ``concurrency`` connections. With ``router_pid``, also read the router's
    (and ``backend_pid``'s) CPU just before and just after the timed ``gather``, so that its CPU window
    is ``wall_s`` plus the reads only (no spawn, connects or teardown: ``window_figures``)."""
    loop = asyncio.get_running_loop()
    raw = _request_bytes(port, "/v1/completions", BODY)
    conns = [
        (await loop.create_connection(_ClientProtocol, "127.0.0.1", port))[1] for _ in range(concurrency)
    ]
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(c: _ClientProtocol) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            try:
                status = await c.request(raw)
            except ConnectionError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t)
            if status != 200:
                errors += 1

    watch = router_pid > 0
    if watch:
        ta = time.perf_counter()
        split0, bcpu0 = _tree_cpu_split_s(router_pid), _cpu_s(backend_pid or router_pid)
        threads0 = _tree_thread_cpu_s(router_pid)
        own0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    if watch:
        own1 = time.process_time()
        threads1 = _tree_thread_cpu_s(router_pid)
        split1, bcpu1 = _tree_cpu_split_s(router_pid), _cpu_s(backend_pid or router_pid)
        window = time.perf_counter() - ta
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    latencies.sort()
    n = len(latencies)
    out = {
        "requests": n,
        "errors": errors,
        "wall_s": wall,
        "rps": n / wall,
        "p50_ms": latencies[n // 2] * 1e3 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else 0.0,
        "loadgen_cpus": sorted(os.sched_getaffinity(0)),  # where this load generator was let run
    }
    if watch:
        out.update(window_figures(split0, split1, threads0, threads1, bcpu1 - bcpu0, window, n))
        # The client side's CPU over the same window (this process and the backend): near 1.0 per
        # CPU it may use, and the client, not the router, may be what limits the throughput.
        out["loadgen_cpu_us_per_req"] = (own1 - own0) * 1e6 / max(n, 1)
        out["client_cores"] = ((own1 - own0) + (bcpu1 - bcpu0)) / max(window, 1e-9)
    return out


def window_figures(
    split0: tuple[float, float],
    split1: tuple[float, float],
    threads0: dict[tuple[int, int], float],
    threads1: dict[tuple[int, int], float],
    backend_cpu_s: float,
    window_s: float,
    requests: int,
) -> dict[str, float]:
    """A router's CPU figures over one window of ``window_s`` (the load's ``wall_s`` plus the reads of
    ``/proc`` at its two ends): user, system and total CPU per request, the backend's CPU per request,
    and how the router's CPU spread over its threads (``thread_spread``, divided by this same window).
    ``tick_frac``: one clock tick (``/proc`` counts CPU in ticks, 10 ms) over the window, the
    resolution of ``cores`` and ``top_thread`` (so a thread can read up to ``1 + tick_frac``)."""
    per = 1e6 / max(requests, 1)
    user = (split1[0] - split0[0]) * per
    system = (split1[1] - split0[1]) * per  # the kernel's: socket reads and writes
    return {
        "user_us_per_req": user,
        "sys_us_per_req": system,
        "cpu_us_per_req": user + system,
        "backend_cpu_us_per_req": backend_cpu_s * per,
        "cpu_window_s": window_s,
        "tick_frac": 1.0 / CLK_TCK / max(window_s, 1e-9),
        **thread_spread(threads0, threads1, window_s),
    }


async def _hold_streams(port: int, n: int, rss: Callable[[], int], settle_s: float) -> dict[str, Any]:
    """Open ``n`` streaming requests through the router; count those whose first chunk arrived."""
    loop = asyncio.get_running_loop()
    raw = _request_bytes(port, "/v1/completions", STREAM_BODY)

    class Holder(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = loop.create_future()
            self.status = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(raw)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            if not self.status:
                self.status = data[9:12]
            if not self.got.done() and b"data:" in data:
                self.got.set_result(True)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.got.done():
                self.got.set_result(False)

    rss0 = rss()
    transports, holders = [], []
    t0 = time.perf_counter()
    failed_connect = 0
    for start in range(0, n, 500):
        batch = []
        for _ in range(min(500, n - start)):
            batch.append(loop.create_connection(Holder, "127.0.0.1", port))
        for res in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(res, BaseException):
                failed_connect += 1
            else:
                transports.append(res[0])
                holders.append(res[1])
    done, _ = await asyncio.wait([h.got for h in holders], timeout=settle_s)
    held = sum(1 for f in done if f.result())
    statuses = collections.Counter(h.status.decode() or "none" for h in holders)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    rss1 = rss()
    for t in transports:
        t.close()
    return {
        "asked": n,
        "held": held,
        "connect_failures": failed_connect,
        "open_s": elapsed,
        "statuses": dict(statuses),
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_per_conn_kb": (rss1 - rss0) / max(held, 1) / 1024,
    }


# --- orchestration ---------------------------------------------------------------------------------------


def _cpu_s(pid: int | str) -> float:
    user, system = _cpu_split_s(pid)
    return user + system


def _cpu_split_s(pid: int | str) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads, exited ones too) or of one thread
    (``"<pid>/task/<tid>"``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def _tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (``kvgate serve --workers N`` is a supervisor + N)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def _tree_cpu_s(pid: int) -> float:
    """CPU of a process and all its descendants (all threads)."""
    user, system = _tree_cpu_split_s(pid)
    return user + system


def _tree_cpu_split_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and all its descendants (all threads)."""
    user = system = 0.0
    for p in _tree_pids(pid):
        try:
            u, s = _cpu_split_s(p)
        except OSError:
            continue  # exited while we looked
        user += u
        system += s
    return user, system


def _tree_threads(pid: int, read: Callable[[int, str], _T]) -> dict[tuple[int, int], _T]:
    """``read(p, tid)`` of each thread of a process and its descendants, by (pid, tid); a thread (or
    process) that exits while we look is left out."""
    out: dict[tuple[int, int], _T] = {}
    for p in _tree_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                out[(p, int(tid))] = read(p, tid)
            except (OSError, ValueError):
                continue  # exited while we looked
    return out


def _tree_thread_cpu_s(pid: int) -> dict[tuple[int, int], float]:
    """CPU of each thread of a process and its descendants, by (pid, tid)."""
    return _tree_threads(pid, lambda p, tid: _cpu_s(f"{p}/task/{tid}"))


def thread_spread(
    before: dict[tuple[int, int], float], after: dict[tuple[int, int], float], wall_s: float
) -> dict[str, float]:
    """How a router's CPU over a window of ``wall_s`` spread over its threads: ``cores`` (all threads' CPU
    / wall: above 1.0 means it ran on more than one core at once), ``top_thread`` (the busiest thread's
    CPU / wall: one thread can give at most 1.0, plus one clock tick over the window, since ``/proc``
    counts in ticks) and ``busy_threads`` (threads that used >= 10 % of a core). ``before`` and ``after``
    must be read at the two ends of that same window. A thread that started in the window counts from
    zero."""
    deltas = [after[k] - before.get(k, 0.0) for k in after]
    wall = max(wall_s, 1e-9)
    return {
        "cores": sum(deltas) / wall,
        "top_thread": max(deltas, default=0.0) / wall,
        "busy_threads": float(sum(d >= 0.1 * wall for d in deltas)),
    }


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _spawn(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        lifeline.die_with_parent_argv(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kw,
    )


def _wait_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 30.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {needle!r}")
        if needle in line:
            return
    raise TimeoutError(f"no {needle!r} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_loadgen(
    port: int, requests: int, concurrency: int, router_pid: int = 0, backend_pid: int = 0
) -> dict[str, Any]:
    args = [str(port), str(requests), str(concurrency), str(router_pid), str(backend_pid)]
    out = subprocess.run(
        lifeline.die_with_parent_argv([PY, "-m", "kvgate.bench.gateway_overhead", "--_loadgen", *args]),
        capture_output=True,
        check=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


ROUTER_PORT = 18080
BASE_SRC: str | None = None  # --base-src: another kvgate source tree, run as the paths ending in @base
BACKEND_PORTS = [18001, 18002]


def _start_router(path: str, log_dir: Path) -> subprocess.Popen[bytes] | None:
    from kvgate.bench import peers

    workers = [f"http://127.0.0.1:{p}" for p in BACKEND_PORTS]
    if path == "direct":
        return None
    if path.startswith("kvgate"):
        # kvgate-rr | kvgate, optionally -w<N>: that many worker processes (--workers N); a trailing
        # @base runs the kvgate of --base-src instead (before/after in the same run).
        path, _, at_base = path.partition("@")
        env = {**os.environ, "PYTHONPATH": str(BASE_SRC)} if at_base and BASE_SRC else None
        base, _, w = path.partition("-w")
        policy = {"kvgate-rr": "round-robin", "kvgate": "kvgate"}[base]
        proc = _spawn(
            [
                PY,
                "-m",
                "kvgate.cli",
                "serve",
                "--endpoints",
                ",".join(workers),
                "--model",
                "m",
                "--policy",
                policy,
                "--port",
                str(ROUTER_PORT),
                "--log-level",
                "WARNING",
                "--workers",
                w or "1",
            ],
            env=env,
        )
        _wait_line(proc, b"listening")
        return proc
    name, policy = path.rsplit(":", 1)
    peer = peers.PEERS[name]
    proc = peers.launch(
        peer, workers, policy=policy, port=ROUTER_PORT, log_path=log_dir / f"{name}-{policy}.log"
    )
    peers.wait_ready(proc, ROUTER_PORT, timeout=90)
    return proc


DEFAULT_PATHS = (
    "direct",
    "kvgate-rr",
    "kvgate",
    "kvgate-rr-w2",
    "kvgate-w2",
    "sglang-router:round_robin",
    "sglang-router:cache_aware",
    "vllm-router:round_robin",
)


def split_pin(path: str) -> tuple[str, set[int] | None]:
    """``PATH/cpuLIST`` -> (PATH, the CPUs its router is pinned to); LIST is one CPU (``1``) or a range
    (``0-1``). No suffix: (PATH, None), the router may run on every CPU."""
    name, sep, pin = path.rpartition("/cpu")
    if not sep:
        return path, None
    lo, _, hi = pin.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
        raise ValueError(f"{path!r}: the pin is /cpuN or /cpuN-M")
    if name == "direct":
        raise ValueError("direct has no router to pin")
    cpus = set(range(int(lo), int(hi or lo) + 1))
    if not cpus <= os.sched_getaffinity(0):
        raise ValueError(f"{path!r}: this machine runs the bench on CPUs {sorted(os.sched_getaffinity(0))}")
    return name, cpus


@contextlib.contextmanager
def _pinned(cpus: set[int] | None) -> Iterator[None]:
    """Children started inside run on ``cpus`` only (they inherit the affinity, and so do their threads
    and children); the bench itself is unpinned again afterwards."""
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def pin_plan(cpus: set[int]) -> tuple[set[int], set[int]]:
    """``--pin``: (the router's CPUs, the load generator's and the backend's) out of the CPUs the bench
    may use: the router alone on the highest one, the client side on the others; the same for every
    path, so each router gets one core to itself and the load is made on another."""
    if len(cpus) < 2:
        raise ValueError(f"--pin needs two CPUs or more; this bench may use {sorted(cpus)}")
    top = max(cpus)
    return {top}, set(cpus) - {top}


def tree_affinity(pid: int) -> dict[tuple[int, int], set[int]]:
    """The CPUs each thread of a process and its descendants may run on, by (pid, tid), as the kernel
    has them (``sched_getaffinity`` of the thread): what was applied, not what was asked."""
    return _tree_threads(pid, lambda _p, tid: os.sched_getaffinity(int(tid)))


def cpus_text(cpus: set[int] | list[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "-"


def affinity_text(threads: dict[tuple[int, int], set[int]]) -> str:
    """``"cpu 1 (4 threads, 1 process)"``, or each distinct set with its thread count when they differ."""
    if not threads:
        return "none read"
    sets = collections.Counter(cpus_text(c) for c in threads.values())
    procs = len({p for p, _ in threads})
    body = "; ".join(f"cpu {k} ({n} thread{'s' * (n != 1)})" for k, n in sorted(sets.items()))
    return f"{body}, {procs} process{'es' * (procs != 1)}"


def repeat_order(paths: list[str], rep: int, alternate: bool) -> list[str]:
    """The order the paths are visited in repeat ``rep`` (0-based): as given, or reversed in every other
    repeat when ``alternate`` (so no path always follows the same one)."""
    return paths[::-1] if alternate and rep % 2 else list(paths)


def _isolated() -> bool:
    return os.environ.get("KVGATE_NETNS") == "1" or set(os.listdir("/sys/class/net")) <= {"lo"}


def _reexec_isolated(argv: list[str]) -> int | None:
    if _isolated() or os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    inner = " ".join([PY, "-m", "kvgate.bench.gateway_overhead", *[f"'{a}'" for a in argv]])
    cmd = ["unshare", "-n", "--", "sh", "-c", f"ip link set lo up && exec {inner}"]
    # (the re-executed bench, with its children, ends with this one: SIGTERM reaches its reaper)
    return subprocess.run(
        lifeline.die_with_parent_argv(cmd), env={**os.environ, "KVGATE_NETNS": "1"}
    ).returncode


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def run(args: argparse.Namespace) -> int:
    from kvgate.bench import peers

    _raise_nofile()
    paths = [p for p in args.paths.split(",") if p]
    pins = {p: split_pin(p) for p in paths}
    router_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    if args.pin:
        if any(cpus is not None for _, cpus in pins.values()):
            raise SystemExit("--pin pins every router alike: drop the /cpuN suffixes from --paths")
        router_cpus, client_cpus = pin_plan(os.sched_getaffinity(0))
        pins = {p: (p, router_cpus) for p in paths}
    for name, _ in pins.values():
        if ":" in name:
            peers.ensure_installed(peers.PEERS[name.split(":")[0]])
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "kvgate-bench-logs"
    log_dir.mkdir(exist_ok=True)
    print(
        f"machine: {os.cpu_count()} CPUs, {os.uname().release}, python {sys.version.split()[0]}; "
        f"isolated netns: {_isolated()}; {args.requests} requests x {args.repeats} repeats, "
        f"concurrency {args.concurrency}",
        flush=True,
    )
    if router_cpus is not None and client_cpus is not None:
        print(
            f"--pin: every router (its threads and children) on cpu {cpus_text(router_cpus)}, the load "
            f"generator and the backend on cpu {cpus_text(client_cpus)}; the paths' order reversed in "
            "every other repeat",
            flush=True,
        )
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    if args.requests > 0:
        with _pinned(client_cpus):
            backend = _spawn(
                [PY, "-m", "kvgate.bench.gateway_overhead", "--_backend", *map(str, BACKEND_PORTS)]
            )
        try:
            _wait_line(backend, b"ready")
            print(f"backend pid {backend.pid}: {affinity_text(tree_affinity(backend.pid))}", flush=True)
            for rep in range(args.repeats):
                # interleaved: each repeat visits every path once (in turn, or alternating with --pin)
                for path in repeat_order(paths, rep, alternate=args.pin):
                    name, cpus = pins[path]
                    with _pinned(cpus):
                        proc = _start_router(name, log_dir)
                    try:
                        port = BACKEND_PORTS[0] if proc is None else ROUTER_PORT
                        with _pinned(client_cpus):
                            _run_loadgen(port, args.warmup, args.concurrency)
                        pid = proc.pid if proc is not None else backend.pid
                        # The load generator reads the router's CPU (a process's own stat keeps its
                        # exited threads' CPU) at the two ends of its timed window: no spawn, connects
                        # or teardown in it (window_figures).
                        with _pinned(client_cpus):
                            r = _run_loadgen(port, args.requests, args.concurrency, pid, backend.pid)
                        # read after the load: the threads a router started on the way are in it
                        r["router_affinity"] = "-" if proc is None else affinity_text(tree_affinity(pid))
                        results[path].append(r)
                        print(
                            f"  rep {rep + 1} {path:<28} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                            f"p99 {r['p99_ms']:6.2f} ms  router CPU {r['cpu_us_per_req']:5.0f} us/req "
                            f"(user {r['user_us_per_req']:.0f}, sys {r['sys_us_per_req']:.0f})  "
                            f"cores {r['cores']:.2f} (top thread {r['top_thread']:.2f}, "
                            f"{r['busy_threads']:.0f} busy; +-{r['tick_frac']:.2f} over "
                            f"{r['cpu_window_s']:.2f} s)  errors {r['errors']}",
                            flush=True,
                        )
                        print(
                            f"      router on {r['router_affinity']}; load generator on cpu "
                            f"{cpus_text(r['loadgen_cpus'])}, {r['loadgen_cpu_us_per_req']:.0f} us/req; "
                            f"backend {r['backend_cpu_us_per_req']:.0f} us/req; client side "
                            f"{r['client_cores']:.2f} cores",
                            flush=True,
                        )
                    finally:
                        if proc is not None:
                            _stop(proc)
        finally:
            _stop(backend)
        _print_table(results)
    if args.streams:
        _print_streams(_streams(args.streams))
    return 0


def _print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    # "added" is over the direct path measured in this run; without one there is nothing to subtract
    # (it was printed against 0, i.e. the path's own latency under the name "added").
    direct = results.get("direct")
    d50 = _median(direct, "p50_ms") if direct else None
    d99 = _median(direct, "p99_ms") if direct else None
    print(
        "\n| path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | router CPU us/req "
        "| user / sys us | cores | top thread | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path, rows in results.items():
        if not rows:
            continue
        p50, p99 = _median(rows, "p50_ms"), _median(rows, "p99_ms")
        cpu = "-" if path == "direct" else f"{_median(rows, 'cpu_us_per_req'):.0f}"
        split = (
            "-"
            if path == "direct"
            else f"{_median(rows, 'user_us_per_req'):.0f} / {_median(rows, 'sys_us_per_req'):.0f}"
        )
        if path == "direct":
            added = ("-", "-")
        elif d50 is None or d99 is None:
            added = ("n/a", "n/a")
        else:
            added = (f"{p50 - d50:.1f}", f"{p99 - d99:.1f}")
        print(
            f"| {path} | {_median(rows, 'rps'):,.0f} | {p50:.1f} | {p99:.1f} | {added[0]} | {added[1]} "
            f"| {cpu} | {split} | {_median(rows, 'cores'):.2f} | {_median(rows, 'top_thread'):.2f} | "
            f"{sum(r['errors'] for r in rows)} |"
        )
    print(
        "(medians over repeats; direct = load generator straight to the backend; cores = the router's "
        "CPU seconds per second of the timed window, all threads; top thread = its busiest thread's; "
        "both +- one clock tick over the window, printed per repeat)",
        flush=True,
    )
    if not direct:
        print(
            "(added p50 / p99: n/a, no direct path measured in this run; add direct to --paths)", flush=True
        )
    for line in ratio_lines(results):
        print(line, flush=True)


def ratio_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Throughput of each kvgate path over each peer path pinned alike (both unpinned, or both to the same
    CPUs): the ratio of the medians, in how many repeats (paired by index) kvgate was ahead, and the
    median and range of the per-repeat ratios (a repeat's two paths run one after the other, under about
    the same load from the rest of the machine; the ratio of medians mixes repeats)."""
    out = []
    for k, krows in results.items():
        kname, kcpus = split_pin(k)
        if not kname.startswith("kvgate") or not krows:
            continue
        for peer, prows in results.items():
            pname, pcpus = split_pin(peer)
            if ":" not in pname or pcpus != kcpus or not prows:
                continue
            pairs = list(zip(krows, prows, strict=False))
            ahead = sum(a["rps"] > b["rps"] for a, b in pairs)
            paired = sorted(a["rps"] / b["rps"] for a, b in pairs)
            out.append(
                f"{k} / {peer}: throughput {_median(krows, 'rps') / _median(prows, 'rps'):.3f}x "
                f"({ahead} of {len(pairs)} repeats ahead; per repeat {statistics.median(paired):.3f}x "
                f"median, {paired[0]:.3f}-{paired[-1]:.3f}x), CPU per request "
                f"{_median(krows, 'cpu_us_per_req') / _median(prows, 'cpu_us_per_req'):.3f}x"
            )
    return out


def _streams(n: int) -> dict[str, Any]:
    backend = _spawn(
        [PY, "-m", "kvgate.bench.gateway_overhead", "--_backend", "--hold", str(BACKEND_PORTS[0])]
    )
    router: subprocess.Popen[bytes] | None = None
    try:
        _wait_line(backend, b"ready")
        router = _spawn(
            [
                PY,
                "-m",
                "kvgate.cli",
                "serve",
                "--endpoints",
                f"127.0.0.1:{BACKEND_PORTS[0]}",
                "--model",
                "m",
                "--policy",
                "round-robin",
                "--port",
                str(ROUTER_PORT),
                "--log-level",
                "ERROR",
            ]
        )
        _wait_line(router, b"listening")
        out = subprocess.run(
            lifeline.die_with_parent_argv(
                [
                    PY,
                    "-m",
                    "kvgate.bench.gateway_overhead",
                    "--_hold",
                    str(ROUTER_PORT),
                    str(n),
                    str(router.pid),
                ]
            ),
            capture_output=True,
            timeout=600,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode()[-2000:])
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        return result
    finally:
        if router is not None:
            _stop(router)
        _stop(backend)


def _print_streams(r: dict[str, Any]) -> None:
    print(
        f"\nconcurrent streams held by kvgate: {r['held']:,} of {r['asked']:,} asked "
        f"(connect failures {r['connect_failures']}, statuses {r['statuses']}, "
        f"opened in {r['open_s']:.1f}s); "
        f"kvgate RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB = "
        f"{r['rss_per_conn_kb']:.1f} KB per held stream",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("--_"):
        return _internal(argv)
    p = ArgumentParser(
        prog=prog("kvgate.bench.gateway_overhead", "bench gateway-overhead"),
        description=__doc__.split("\n")[0],
    )
    p.add_argument(
        "--requests", type=nonneg_int, default=3000, help="measured requests per path and repeat (0 = skip)"
    )
    p.add_argument("--warmup", type=nonneg_int, default=300)
    p.add_argument("--concurrency", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help="comma-separated: direct, kvgate-rr, kvgate (either with -w<N>: N workers, and @base: the "
        "kvgate of --base-src), sglang-router:<policy>, vllm-router:<policy>; a router path may end in "
        "/cpuN or /cpuN-M: that router (its threads and children) runs on those CPUs only",
    )
    p.add_argument(
        "--streams",
        type=nonneg_int,
        default=10_000,
        help="concurrent streams to hold through kvgate (0 = skip)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="every router (its threads and children) on the highest CPU the bench may use, the load "
        "generator and the backend on the others, the same for every path; the paths' order reversed in "
        "every other repeat; the affinity read back from the kernel is printed per repeat",
    )
    p.add_argument("--no-netns", action="store_true", help="do not re-exec inside a loopback-only namespace")
    p.add_argument(
        "--base-src", help="source tree of another kvgate, run as the kvgate paths ending in @base"
    )
    args = p.parse_args(argv)
    global BASE_SRC
    BASE_SRC = str(Path(args.base_src).resolve()) if args.base_src else None
    if not args.no_netns:
        rc = _reexec_isolated(argv)
        if rc is not None:
            return rc
    return run(args)


def _internal(argv: list[str]) -> int:
    import uvloop

    _raise_nofile()
    if argv[0] == "--_backend":
        hold = "--hold" in argv
        ports = [int(a) for a in argv[1:] if a != "--hold"]
        uvloop.run(_backend(ports, hold))
    elif argv[0] == "--_loadgen":
        print(json.dumps(uvloop.run(_loadgen(*(int(a) for a in argv[1:6])))))
    elif argv[0] == "--_hold":
        port, n, pid = int(argv[1]), int(argv[2]), int(argv[3])
        print(json.dumps(uvloop.run(_hold_streams(port, n, lambda: _rss_bytes(pid), settle_s=120))))
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
