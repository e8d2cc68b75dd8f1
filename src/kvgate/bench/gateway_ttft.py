"""Time to first token a router adds on long prompts, and where kvgate spends it.

    kvgate bench gateway-ttft [--requests 64] [--repeats 3] [--api completions,chat]
                              [--paths direct,kvgate,kvgate-off,sglang-router:cache_aware] [--stages]

The real-vLLM comparison (docs/benchmarks/realvllm.md section 4.1) found client-side TTFT minus vLLM-side
TTFT ~19 ms through kvgate and ~5 ms through sglang-router on ~2k-token prompts. This isolates the router:
the same request shape (the ``vs_sglang.py`` workload: 8 tenants, a ~1.9k-token tenant prompt + a unique
user line, one request at a time, a new connection per request as ``urllib`` makes, streaming,
``max_tokens`` 4) against an instant backend on loopback, so client TTFT through a router minus the direct
TTFT is that router's cost. The backend answers vLLM's ``/server_info`` with a KV-events configuration and
the served model's tokenizer, so ``kvgate serve --kv-events auto`` runs the precise profile with the real
tokenizer (``tokenizer.json`` of the tiny Llama the vLLM tests build, ``--tokenizer``), exactly what it
ran in front of vLLM; ``kvgate-off`` is ``--kv-events off`` (approximate index).

``--stages`` times kvgate's per-request steps in this process on the same prompts (``perf_counter_ns``,
medians): body parse, chat rendering, tokenization, block keys, the whole ``Director.pick``, the
forwarded body and header block: the in-process part of the breakdown; the rest is HTTP and the event
loop (``--profile DIR`` writes a cProfile of the ``kvgate serve`` process under the same load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kvgate.bench.gateway_overhead import _spawn, _stop, _wait_line, split_request
from kvgate.bench.workloads import tenant_prompts
from kvgate.entry import ArgumentParser, nonneg_int, nonneg_number, positive_int, prog

PY = sys.executable
MODEL = "tiny"
DEFAULT_TOKENIZER = Path.home() / ".cache" / "kvgate" / "tiny-llama"
BASE_SRC: Path | None = None  # --base-src: another kvgate source tree, run as the ``@base`` paths
ROUTER_PORT = 18180
WARMUP = 16  # requests per path and API before measuring
BACKEND_PORTS = [18101, 18102]


def workload(requests: int, tenants: int = 8, prefix_words: int = 400, seed: int = 1) -> list[str]:
    """``scripts/realvllm/vs_sglang.py``'s prompts: a tenant's system text + a unique user line."""
    return tenant_prompts([i % tenants for i in range(requests)], tenants, prefix_words, seed)


def body(api: str, prompt: str) -> bytes:
    doc: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "temperature": 0, "stream": True}
    if api == "chat":
        system, _, user = prompt.partition("\nUser ")
        doc["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": "User " + user}]
    else:
        doc["prompt"] = prompt
    return json.dumps(doc).encode()


def path_of(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


# --- instant backend that looks like vLLM with KV events ---------------------------------------------


def _http(status: str, payload: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
        + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )  # fmt: skip


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_METRICS = (
    b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="tiny"} 0\n'
    b'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="tiny"} 0\n'
    b'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="tiny"} 0.1\n'
    b'# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{block_size="128",num_gpu_blocks="64"} 1\n'
)
_EVENT = b'data: {"id":"c","object":"text_completion","model":"tiny","choices":[{"index":0,"text":"hi"}]}\n\n'
_USAGE = (
    b'data: {"id":"c","object":"text_completion","model":"tiny","choices":[],'
    b'"usage":{"prompt_tokens":2000,"completion_tokens":4,"total_tokens":2004}}\n\n'
)
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _server_info(port: int, tokenizer: str) -> bytes:
    return json.dumps(
        {
            "vllm_config": {
                "kv_events_config": {
                    "enable_kv_cache_events": True,
                    "publisher": "zmq",
                    "endpoint": f"tcp://127.0.0.1:{port + 1000}",  # concrete: the gateway binds
                    "replay_endpoint": None,
                },
                "model_config": {"tokenizer": tokenizer},
            }
        }
    ).encode()


class _Backend(asyncio.Protocol):
    responses: dict[int, dict[bytes, bytes]] = {}
    first_token_s = 0.0  # --first-token-ms: response head at once, the first token this much later

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.table: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.table = self.responses[transport.get_extra_info("sockname")[1]]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (req := split_request(self.buf)) is not None:
            path, payload, self.buf = req
            assert self.transport is not None
            if path.startswith(b"/v1/") and path != b"/v1/models":
                rest = _chunk(_EVENT)
                if b'"include_usage":true' in payload.replace(b" ", b""):
                    rest += _chunk(_USAGE)
                rest += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
                if self.first_token_s > 0:  # as a model server: the head now, tokens after the prefill
                    self.transport.write(_STREAM_HEAD)
                    asyncio.get_running_loop().call_later(self.first_token_s, self.transport.write, rest)
                else:
                    self.transport.write(_STREAM_HEAD + rest)
            else:
                self.transport.write(self.table.get(path, _http("404 Not Found", b"{}")))


async def _backend(ports: list[int], tokenizer: str) -> None:
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    for p in ports:
        info = _http("200 OK", _server_info(p, tokenizer))
        _Backend.responses[p] = {
            b"/server_info": info,
            b"/health": _http("200 OK", b"ok", b"text/plain"),
            b"/metrics": _http("200 OK", _METRICS, b"text/plain"),
            b"/v1/models": _http("200 OK", models),
            b"/get_model_info": _http("200 OK", b'{"model_path":"tiny","is_generation":true}'),
            b"/get_server_info": _http("200 OK", b"{}"),
        }
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Backend, "127.0.0.1", p, reuse_address=True) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --- client: one request at a time, a new connection each (as urllib does) ----------------------------


def ttft_once(port: int, path: str, payload: bytes) -> float:
    req = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(req)
        buf = b""
        first = None
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
            if first is None and b"data:" in buf:
                first = time.perf_counter() - t0
            if b"[DONE]" in buf:
                break
    if first is None or b" 200 " not in buf[:16]:
        raise RuntimeError(f"bad answer from :{port}: {buf[:300]!r}")
    return first


def run_path(port: int, api: str, prompts: list[str], warmup: int = WARMUP) -> list[float]:
    """TTFT of each prompt after the first ``warmup`` (other users of the same tenants: warm code paths,
    not cached encodings of the measured prompts)."""
    bodies = [body(api, p) for p in prompts]
    for b in bodies[:warmup]:
        ttft_once(port, path_of(api), b)
    return [ttft_once(port, path_of(api), b) for b in bodies[warmup:]]


# --- routers -------------------------------------------------------------------------------------------


def start_router(name: str, profile_dir: Path | None, log_dir: Path) -> subprocess.Popen[bytes] | None:
    from kvgate.bench import peers

    urls = [f"http://127.0.0.1:{p}" for p in BACKEND_PORTS]
    if name == "direct":
        return None
    if name.startswith("kvgate"):
        # kvgate[-off][@base]: --kv-events off; @base: the kvgate of --base-src (before/after, same run)
        name, _, base = name.partition("@")
        mode = "off" if name == "kvgate-off" else "auto"
        env = {**os.environ, "PYTHONPATH": str(BASE_SRC)} if base else None
        prof: list[str] = []
        if profile_dir is not None:
            prof = ["-m", "cProfile", "-o", str(profile_dir / f"{name}-{int(time.time())}.prof")]
        proc = _spawn(
            [PY, *prof, "-m", "kvgate.cli", "serve", "--endpoints", ",".join(urls), "--model", MODEL,
             "--port", str(ROUTER_PORT), "--kv-events", mode, "--log-level", "INFO"], env=env
        )  # fmt: skip
        _wait_line(proc, b"listening", timeout=60)
        return proc
    peer_name, policy = name.rsplit(":", 1)
    peer = peers.PEERS[peer_name]
    proc = peers.launch(peer, urls, policy=policy, port=ROUTER_PORT, log_path=log_dir / f"{peer_name}.log")
    peers.wait_ready(proc, ROUTER_PORT, timeout=90)
    time.sleep(1.0)  # sglang-router answers 503 for a moment after /health
    return proc


def stop_router(proc: subprocess.Popen[bytes], graceful: bool) -> None:
    if graceful and proc.poll() is None:  # SIGINT: kvgate serve shuts down cleanly, cProfile writes
        os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    _stop(proc)


# --- in-process stage timings ------------------------------------------------------------------------


Timed = Any  # (api, stage, fn, xs) -> results


def stages(prompts: list[str], tokenizer: str) -> list[tuple[str, str, float]]:
    """(api, stage, median us) for kvgate's per-request steps on these prompts, in this process."""
    out: list[tuple[str, str, float]] = []

    def timed(api: str, stage: str, fn: Any, xs: list[Any]) -> list[Any]:
        res, ts = [], []
        for x in xs:
            t = time.perf_counter_ns()
            res.append(fn(x))
            ts.append(time.perf_counter_ns() - t)
        out.append((api, stage, statistics.median(ts) / 1e3))
        return res

    for api in ("completions", "chat"):
        _stages_of(api, prompts, tokenizer, timed)
    return out


def _stages_of(api: str, prompts: list[str], tokenizer: str, timed: Timed) -> None:
    import orjson

    from kvgate.config.director import build_director
    from kvgate.config.policies import precise_policy
    from kvgate.datalayer.endpoint import Endpoint
    from kvgate.datalayer.kvindex import token_keys
    from kvgate.datalayer.store import EndpointStore
    from kvgate.openai.request import (
        CHAT,
        COMPLETIONS,
        RequestPolicy,
        inference_request,
        parse_body,
        render_chat,
    )
    from kvgate.scheduling import tokenize

    kind = CHAT if api == "chat" else COMPLETIONS
    raws = [body(api, p) for p in prompts]
    parsed = timed(api, "parse body (orjson, checks, chat rendering)", lambda r: parse_body(kind, r), raws)
    if api == "chat":
        timed(api, "  of which render_chat", lambda p: render_chat(p.body["messages"]), parsed)
    whole = tokenize.PromptTokenizer(tokenize.tokenizer_file(tokenizer))  # fresh: no cached encodings
    whole._front = None
    timed(api, "tokenize whole text (before)", lambda p: whole.encode(p.prompt_text), parsed)
    tok = tokenize.PromptTokenizer(tokenize.tokenizer_file(tokenizer))
    ids = timed(api, "tokenize piecewise (after)", lambda p: tok.encode(p.prompt_text), parsed)
    timed(api, "block keys (128-token blocks)", lambda i: token_keys(i, 128, 256), ids)

    def forwarded(p: Any) -> bytes:
        p.body["stream_options"] = {"include_usage": True}
        return orjson.dumps(p.body)

    timed(api, "re-serialize body (include_usage)", forwarded, parsed)
    store = EndpointStore()
    for port in BACKEND_PORTS:
        ep = Endpoint(address=f"127.0.0.1:{port}", pool="default")
        ep.metrics.block_size, ep.metrics.num_gpu_blocks = 128, 64
        store.add(ep)
    tokenize._BY_PATH.clear()  # the director loads its own tokenizer: nothing cached yet
    director = build_director(precise_policy(tokenizer, bind=True), store)
    policy = RequestPolicy()
    seq = iter(range(1 << 30))

    def pick(p: Any) -> Any:
        ireq = inference_request(p, request_id=f"r{next(seq)}", model=MODEL, policy=policy)
        result = director.pick(ireq)
        director.on_dispatched(ireq, result.primary)
        director.on_finished(ireq, result.primary, None, True)
        return result

    reparsed = [parse_body(kind, r) for r in raws]
    timed(api, "Director.pick, precise profile (tokenizes)", pick, reparsed)
    timed(api, "Director.pick again (encoding cached)", pick, reparsed)


# --- orchestration -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_backend":
        import uvloop

        _Backend.first_token_s = float(argv[2]) / 1000
        uvloop.run(_backend([int(a) for a in argv[3:]], argv[1]))
        return 0
    p = ArgumentParser(
        prog=prog("kvgate.bench.gateway_ttft", "bench gateway-ttft"), description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--requests", type=positive_int, default=64, help="measured requests per path, API and repeat"
    )
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--api", default="completions,chat")
    p.add_argument("--paths", default="direct,kvgate,kvgate-off,sglang-router:cache_aware")
    p.add_argument(
        "--tokenizer", default=str(DEFAULT_TOKENIZER), help="the served model's tokenizer.json/dir"
    )
    p.add_argument("--stages", action="store_true", help="also time kvgate's steps in-process")
    p.add_argument("--profile", type=Path, help="write a cProfile of each kvgate serve run here")
    p.add_argument(
        "--hogs",
        type=nonneg_int,
        default=0,
        help="busy processes competing for the CPUs meanwhile (vLLM's spinning CPU workers and engines "
        "share the cores with the router in the real-vLLM runs)",
    )
    p.add_argument(
        "--first-token-ms",
        type=nonneg_number,
        default=0.0,
        help="the backend sends the response head at once and the first token this much later (a prefill)",
    )
    p.add_argument(
        "--base-src", type=Path, help="source tree of a kvgate to compare (paths kvgate@base, ...)"
    )
    args = p.parse_args(argv)
    from kvgate.bench import peers

    global BASE_SRC
    BASE_SRC = args.base_src.resolve() if args.base_src else None

    prompts = workload(args.requests + WARMUP)
    apis = [a for a in args.api.split(",") if a]
    paths = [x for x in args.paths.split(",") if x]
    for x in paths:
        if ":" in x:
            peers.ensure_installed(peers.PEERS[x.split(":")[0]])
    if args.stages:
        print("\nkvgate's steps in-process (median us per request over the same prompts):")
        print("| API | step | us |\n|---|---|---|")
        for api, stage, us in stages(prompts[WARMUP:], args.tokenizer):
            print(f"| {api} | {stage} | {us:,.1f} |", flush=True)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "kvgate-bench-logs"
    log_dir.mkdir(exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    chars = statistics.fmean(len(x) for x in prompts)
    print(f"\n{args.requests} requests x {args.repeats} repeats per path and API, one at a time, a new "
          f"connection each, streaming; prompts {chars:.0f} characters", flush=True)  # fmt: skip
    results: dict[tuple[str, str], list[float]] = {}
    backend = _spawn(
        [
            PY,
            "-m",
            "kvgate.bench.gateway_ttft",
            "--_backend",
            args.tokenizer,
            str(args.first_token_ms),
            *map(str, BACKEND_PORTS),
        ]
    )
    hogs = [_spawn([PY, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        _wait_line(backend, b"ready")
        for rep in range(args.repeats):
            for name in paths if rep % 2 == 0 else paths[::-1]:
                proc = start_router(name, args.profile, log_dir)
                try:
                    port = BACKEND_PORTS[0] if proc is None else ROUTER_PORT
                    for api in apis:
                        ts = run_path(port, api, prompts)
                        results.setdefault((name, api), []).extend(ts)
                        med, mean = 1e3 * statistics.median(ts), 1e3 * statistics.fmean(ts)
                        print(f"  rep {rep + 1} {name:<28} {api:<11} TTFT median {med:6.2f} ms  "
                              f"mean {mean:6.2f} ms", flush=True)  # fmt: skip
                finally:
                    if proc is not None:
                        stop_router(proc, graceful=args.profile is not None)
    finally:
        for h in hogs:
            _stop(h)
        _stop(backend)
    print_table(results, apis, paths)
    return 0


def print_table(results: dict[tuple[str, str], list[float]], apis: list[str], paths: list[str]) -> None:
    """The TTFT table; "added" only over the direct path measured in this run for that API ("n/a"
    without one: it was printed against 0, each path's own TTFT under the name "added")."""
    print("\n| path | API | TTFT median ms | mean ms | p90 ms | added median ms (vs direct) |")
    print("|---|---|---|---|---|---|")
    missing = False
    for api in apis:
        direct = results.get(("direct", api))
        base = statistics.median(direct) if direct else None
        for name in paths:
            ts = sorted(results.get((name, api), []))
            if not ts:
                continue
            med = statistics.median(ts)
            if name == "direct":
                added = "-"
            elif base is None:
                added, missing = "n/a", True
            else:
                added = f"{1e3 * (med - base):.2f}"
            print(f"| {name} | {api} | {1e3 * med:.2f} | {1e3 * statistics.fmean(ts):.2f} | "
                  f"{1e3 * ts[int(0.9 * (len(ts) - 1))]:.2f} | {added} |")  # fmt: skip
    if missing:
        print("(added: n/a, no direct path measured in this run; add direct to --paths)", flush=True)


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
