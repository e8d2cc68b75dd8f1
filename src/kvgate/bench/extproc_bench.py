"""Benchmark: what the ext_proc Endpoint Picker adds per request, vs a do-nothing ext_proc server.

    python -m kvgate.bench.extproc_bench [--requests 400] [--reps 3] [--concurrency 1,150] [--tls both]

Each request is the full exchange Envoy drives (request headers, body in 16 KiB chunks, the EPP's
headers + re-chunked body, response headers, a JSON response body with ``usage``). Two servers run as
separate processes, each on the same flags:
- ``kvgate``: ``kvgate epp`` (parses the body, picks with the kvgate policy over 8 scraped endpoints);
- ``null``: an ext_proc server that buffers and echoes the body with a fixed destination, no parsing
  and no picking: the cost of gRPC + the protocol + this Python client, i.e. the floor.
kvgate's added latency is its figure minus the null server's, measured in the same run (both servers up
side by side, cells alternating between them, median of ``--reps``). The client is
Python too, so absolute figures include its cost; on a 2-core machine client and server share cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kvgate import lifeline
from kvgate.bench.ports import free_port
from kvgate.config.policies import POLICIES
from kvgate.entry import ArgumentParser, comma_list, nonneg_int, positive_int, prog

SMALL = 1_000  # bytes of prompt text
LARGE = 220_000  # the reference's > 1 s case: 220 KB prompts at 150 concurrency
METRICS_BODY = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.2\n"


def _free_port() -> int:
    """A port for a helper process to bind by number: spare and claimed (``kvgate.bench.ports``), not a
    port-0 probe's, which another process's port-0 bind could take before the helper binds it."""
    return free_port()


# ---- helper processes ---------------------------------------------------------------------------
async def _serve_metrics(ports: list[int]) -> None:
    """Static vLLM /metrics pages so the EPP's scraper has real endpoints to read."""
    from aiohttp import web

    async def handler(_r: web.Request) -> web.Response:
        return web.Response(text=METRICS_BODY)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for p in ports:
        await web.TCPSite(runner, "127.0.0.1", p).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class NullSession:
    """The floor: buffers and echoes the body with a fixed destination; no parsing, no picking."""

    DEST = "127.0.0.1:1"

    def __init__(self) -> None:
        self.body = bytearray()

    @staticmethod
    def _body_resp(body: bytes, eos: bool) -> Any:
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

        sbr = pb.StreamedBodyResponse(body=body, end_of_stream=eos)
        return pb.BodyResponse(
            response=pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=sbr))
        )

    def handle(self, msg: Any) -> list[Any]:
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

        from kvgate.extproc import headers as hdr
        from kvgate.extproc.session import chunks

        kind = msg.WhichOneof("request")
        if kind == "request_body":
            self.body += msg.request_body.body
            if not msg.request_body.end_of_stream:
                return []
            mutation = hdr.header_mutation({"x-gateway-destination-endpoint": self.DEST})
            common = pb.CommonResponse(clear_route_cache=True, header_mutation=mutation)
            out = [
                pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(response=common),
                    dynamic_metadata=hdr.destination_metadata(self.DEST),
                )
            ]
            pieces = list(chunks(bytes(self.body)))
            for i, piece in enumerate(pieces):
                out.append(pb.ProcessingResponse(request_body=self._body_resp(piece, i == len(pieces) - 1)))
            return out
        if kind == "response_headers":
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_body":
            rb = msg.response_body
            return [pb.ProcessingResponse(response_body=self._body_resp(rb.body, rb.end_of_stream))]
        return []


async def _serve_null(port: int, cert_dir: str | None) -> None:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from kvgate.extproc.tls import load, server_credentials

    class Null(pb_grpc.ExternalProcessorServicer):
        async def Process(self, it: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
            session = NullSession()
            async for msg in it:
                for resp in session.handle(msg):
                    yield resp

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_ExternalProcessorServicer_to_server(Null(), server)
    if cert_dir:
        server.add_secure_port(f"127.0.0.1:{port}", server_credentials(load(cert_dir, None, None)))
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def _inprocess(policy: str, sizes: list[int], n: int) -> list[str]:
    """CPU time per request of the protocol + pick alone (no gRPC, no client), kvgate vs the null session.

    ``time.process_time`` counts only this process's CPU, so the figure holds on a busy machine."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.context import AddressIndex, build_epp_director
    from kvgate.extproc.session import Session, SessionContext
    from kvgate.extproc.testing import ENVOY_CHUNK, header_map

    store = EndpointStore.from_addresses([f"127.0.0.1:{18000 + i}" for i in range(8)])
    ctx = SessionContext(
        build_epp_director(None, store, policy=policy), AddressIndex(store), clock=time.monotonic
    )
    req_headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(HEADERS)))
    resp_headers = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=header_map({":status": "200", "content-type": "application/json"})
        )
    )
    resp_body = pb.ProcessingRequest(response_body=pb.HttpBody(body=REPLY, end_of_stream=True))
    rows = []
    for size in sizes:
        bodies = [_body(i, size) for i in range(64)]
        messages = [
            [req_headers]
            + [
                pb.ProcessingRequest(
                    request_body=pb.HttpBody(
                        body=b[j : j + ENVOY_CHUNK], end_of_stream=j + ENVOY_CHUNK >= len(b)
                    )
                )
                for j in range(0, len(b), ENVOY_CHUNK)
            ]
            + [resp_headers, resp_body]
            for b in bodies
        ]
        runs: dict[str, list[float]] = {"null": [], "kvgate": []}
        for _rep in range(5):  # alternate, so warm-up and drift hit both alike; report the median
            for name in ("null", "kvgate"):
                t0 = time.process_time()
                for i in range(n):
                    session: Any = NullSession() if name == "null" else Session(ctx)
                    for msg in messages[i % len(messages)]:
                        session.handle(msg)
                    if name == "kvgate":
                        session.close()
                runs[name].append((time.process_time() - t0) * 1000 / n)
        cost = {name: float(np.median(v)) for name, v in runs.items()}
        rows.append(
            f"| {size:>7} | {n:>5} | {cost['null']:>8.3f} | {cost['kvgate']:>8.3f} | "
            f"{cost['kvgate'] - cost['null']:>+8.3f} |"
        )
    return rows


@contextlib.contextmanager
def _process(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        lifeline.die_with_parent_argv(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args[:4]} exited before it was ready")
            if "ready" in line:
                break
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- the load ------------------------------------------------------------------------------------
@dataclass
class Cell:
    server: str
    tls: bool
    prompt_bytes: int
    concurrency: int
    requests: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Server CPU (user + system) per request: robust to a busy machine where wall-clock figures are not.
    cpu_ms: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


def _body(i: int, size: int) -> bytes:
    # Distinct prefixes per request so the prefix index does real work (no trivially shared prompt).
    words = f"request {i} " + "lorem ipsum dolor sit amet " * (size // 27 + 1)
    return orjson.dumps({"model": "m", "prompt": words[:size], "max_tokens": 16})


REPLY = orjson.dumps({"id": "x", "model": "m", "choices": [{"text": "ok"}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 16}})  # fmt: skip
HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run_cell(
    target: str, root: bytes | None, server: str, size: int, conc: int, total: int, pid: int
) -> Cell:
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from kvgate.extproc.testing import Exchange, channel

    ch = channel(target, root_cert=root)
    stub = pb_grpc.ExternalProcessorStub(ch)
    bodies = [_body(i, size) for i in range(min(total, 64))]
    lat: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def one(i: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with Exchange(stub, timeout=60) as ex:
                out = await ex.send_request(HEADERS, bodies[i % len(bodies)])
                if out.immediate is not None or not out.destination:
                    errors += 1
                    return
                await ex.send_response(200, {"content-type": "application/json"}, [REPLY])
        except Exception:
            errors += 1
            return
        lat.append(time.perf_counter() - t0)

    async def worker() -> None:
        for i in counter:
            await one(i)

    for i in range(min(conc, 8)):  # warm the channel and the server
        await one(i)
    lat.clear()
    errors = 0
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    cpu_ms = (_cpu_seconds(pid) - cpu0) * 1000 / max(1, len(lat))
    await ch.close()
    arr = np.asarray(lat) * 1000 if lat else np.asarray([float("nan")])
    p50, p99 = float(np.percentile(arr, 50)), float(np.percentile(arr, 99))
    return Cell(server, root is not None, size, conc, len(lat), elapsed, p50, p99, errors, cpu_ms)


def _server_cmd(server: str, port: int, tls_on: bool, certs: str, endpoints: str, policy: str) -> list[str]:
    py = sys.executable
    if server == "null":
        return [py, "-m", "kvgate.bench.extproc_bench", "--serve-null", str(port)] + (
            ["--cert-dir", certs] if tls_on else []
        )
    cmd = [py, "-m", "kvgate.cli", "epp", "--host", "127.0.0.1", "--port", str(port),
           "--grpc-health-port", str(_free_port()), "--metrics-port", str(_free_port()),
           "--endpoints", endpoints, "--model", "m", "--policy", policy,
           # Scrape once a second: the per-request CPU figure should not carry 8 x 20 scrapes/s of
           # background work that grows with the cell's duration rather than with its requests.
           "--scrape-interval", "1.0",
           "--log-level", "warning"]  # fmt: skip
    return cmd + (["--cert-path", certs] if tls_on else ["--plaintext"])


async def _bench(ns: argparse.Namespace, certs: str, root: bytes) -> list[Cell]:
    """Both servers stay up side by side; cells alternate null / kvgate rep by rep, so drift in the
    shared machine's load hits both alike."""
    cells: list[Cell] = []
    metric_ports = [_free_port() for _ in range(8)]
    endpoints = ",".join(f"127.0.0.1:{p}" for p in metric_ports)
    modes = {"both": [False, True], "on": [True], "off": [False]}[ns.tls]
    servers = ns.servers
    metrics_cmd = [sys.executable, "-m", "kvgate.bench.extproc_bench", "--serve-metrics",
                   ",".join(map(str, metric_ports))]  # fmt: skip
    with _process(metrics_cmd):
        for tls_on in modes:
            ports = {name: _free_port() for name in servers}
            with contextlib.ExitStack() as stack:
                pids = {
                    name: stack.enter_context(
                        _process(_server_cmd(name, ports[name], tls_on, certs, endpoints, ns.policy))
                    ).pid
                    for name in servers
                }
                for size in (int(s) for s in ns.sizes.split(",")):
                    for conc in ns.concurrency:
                        total = max(ns.requests, conc * 4)
                        for _rep in range(ns.reps):
                            for name in servers:
                                host = "localhost" if tls_on else "127.0.0.1"
                                ca = root if tls_on else None
                                target = f"{host}:{ports[name]}"
                                cell = await _run_cell(target, ca, name, size, conc, total, pids[name])
                                print(_row(cell), flush=True)
                                cells.append(cell)
    return cells


def _median(cells: list[Cell]) -> list[Cell]:
    """One row per (server, tls, size, concurrency): the median over reps of each figure."""
    groups: dict[tuple[str, bool, int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.server, c.tls, c.prompt_bytes, c.concurrency), []).append(c)
    out = []
    for (server, tls_on, size, conc), cs in groups.items():
        med = float(np.median([c.rps for c in cs]))
        n = sum(c.requests for c in cs)
        p50, p99 = float(np.median([c.p50_ms for c in cs])), float(np.median([c.p99_ms for c in cs]))
        cpu = float(np.median([c.cpu_ms for c in cs]))
        out.append(Cell(server, tls_on, size, conc, n, n / med, p50, p99, sum(c.errors for c in cs), cpu))
    return out


HEADER = (
    "| server | tls   | prompt  | conc | reqs  | picks/s  | p50 ms   | p99 ms   | err | server CPU ms/req |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _row(c: Cell) -> str:
    mode = "TLS" if c.tls else "plain"
    return (
        f"| {c.server:<6} | {mode:<5} | {c.prompt_bytes:>7} | {c.concurrency:>4} | {c.requests:>5} | "
        f"{c.rps:>8.1f} | {c.p50_ms:>8.2f} | {c.p99_ms:>8.2f} | {c.errors} | {c.cpu_ms:>6.3f} |"
    )


def _added(cells: list[Cell]) -> list[str]:
    null = {(c.tls, c.prompt_bytes, c.concurrency): c for c in cells if c.server == "null"}
    out = []
    for c in cells:
        base = null.get((c.tls, c.prompt_bytes, c.concurrency))
        if c.server == "kvgate" and base is not None:
            out.append(f"| {'TLS' if c.tls else 'plain':<5} | {c.prompt_bytes:>7} | {c.concurrency:>4} | "
                       f"{c.p50_ms - base.p50_ms:>+9.2f} | {c.p99_ms - base.p99_ms:>+9.2f} | "
                       f"{c.rps / base.rps if base.rps else float('nan'):>6.2f} | "
                       f"{c.cpu_ms - base.cpu_ms:>+8.3f} |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=prog("kvgate.bench.extproc_bench", "bench extproc"), description=__doc__)
    p.add_argument(
        "--requests", type=positive_int, default=400, help="requests per cell (at least 4 x concurrency)"
    )
    p.add_argument(
        "--reps", type=positive_int, default=3, help="alternating null/kvgate repetitions per cell"
    )
    p.add_argument("--concurrency", type=comma_list(positive_int), default="1,150")
    p.add_argument(
        "--sizes", type=comma_list(positive_int), default=f"{SMALL},{LARGE}", help="prompt sizes in bytes"
    )
    p.add_argument("--tls", choices=("both", "on", "off"), default="both")
    p.add_argument("--servers", type=comma_list(str, ("null", "kvgate")), default="null,kvgate")
    p.add_argument("--policy", choices=POLICIES, default="kvgate")
    p.add_argument("--json", help="write the cells here")
    p.add_argument(
        "--inprocess-requests", type=nonneg_int, default=2000, help="requests per size, in-process (0: skip)"
    )
    p.add_argument("--inprocess-only", action="store_true", help="skip the gRPC section")
    p.add_argument("--serve-metrics", help=argparse.SUPPRESS)
    p.add_argument("--serve-null", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cert-dir", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.serve_metrics:
        asyncio.run(_serve_metrics([int(x) for x in ns.serve_metrics.split(",")]))
        return 0
    if ns.serve_null:
        asyncio.run(_serve_null(ns.serve_null, ns.cert_dir))
        return 0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    sizes = ns.sizes
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} python={platform.python_version()} "
          f"load average before the run: {load}")  # fmt: skip
    if ns.inprocess_requests > 0:
        print("\nin-process CPU per request (protocol + pick, no gRPC; process CPU time, median of 5)")
        print("| prompt  | reqs  | null ms  | kvgate ms | added ms |")
        print("|---|---|---|---|---|")
        for row in _inprocess(ns.policy, sizes, ns.inprocess_requests):
            print(row, flush=True)
    if ns.inprocess_only:
        return 0
    print("\nfull exchange over gRPC (client and servers are separate processes)")
    print(HEADER)
    from kvgate.extproc.tls import self_signed

    pair = self_signed(("localhost", "127.0.0.1"))
    with tempfile.TemporaryDirectory() as certs:
        Path(certs, "tls.crt").write_bytes(pair.cert_pem)
        Path(certs, "tls.key").write_bytes(pair.key_pem)
        cells = asyncio.run(_bench(ns, certs, pair.cert_pem))
    medians = _median(cells)
    print(f"\nmedian of {ns.reps} reps per cell (reqs = total over reps)")
    print(HEADER)
    for c in sorted(medians, key=lambda c: (c.tls, c.prompt_bytes, c.concurrency, c.server != "null")):
        print(_row(c))
    print("\nkvgate minus null (same run, medians): added latency, throughput ratio, added server CPU")
    print("| tls   | prompt  | conc | +p50 ms   | +p99 ms   | rps x  | +CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    for line in _added(medians):
        print(line)
    if ns.json:
        rows = [c.__dict__ | {"rps": c.rps} for c in cells]
        Path(ns.json).write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
