"""kvgate serve's ``x-kvgate-timing`` steps without vLLM: the same marks ``vs_sglang.py`` and
``proxy_split.py`` print, in front of ``kvgate bench gateway-ttft``'s instant backend (one endpoint that
looks like vLLM with KV events, the tiny Llama's tokenizer at ``/server_info``; the response head at once,
the first token ``--first-token-ms`` later). What a step costs when no vLLM process shares the cores.

``--split``: the serve process also times the pick's parts (``perf_counter_ns`` wrappers on the
tokenizer, the precise scorer's match, the profile run, ``Director.pick`` and the in-flight hooks,
installed in the serve process before it starts) and this prints their medians and means per call and
calls per measured request. Each call is tagged with the number of ``Director.pick`` calls so far, and
those tagged at or before the last warm-up request's pick are dropped: the tokenizer's load-time probe and
the warm-up requests' calls (the warm-up tenant texts' new pieces: more calls per request than the
measured ones make) are not counted. Wrapping costs ~1 us per call.

    PYTHONPATH=src python scripts/realvllm/gateway_marks.py [--requests 40] [--first-token-ms 20] [--split]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import timed, wait_http

from kvgate import lifeline
from kvgate.bench import gateway_ttft
from kvgate.realvllm.harness import free_ports

STEPS = (
    ("client -> gateway has the request", "send", "recv"),
    ("parse, headers", "recv", "parsed"),
    ("pick (tokenize, score, admit)", "parsed", "picked"),
    ("write upstream", "picked", "sent"),
    ("upstream: request -> response head", "sent", "head"),
    ("upstream: response head -> first chunk", "head", "first"),
    ("relay -> client first chunk", "first", "c_first"),
)
WARMUP = 16


def _serve_split(out: str, argv: list[str]) -> int:
    """In the serve process (``--_serve OUT ...``): wrap the pick's parts, run ``kvgate serve``, write
    every call's (picks so far, duration in ns) per part to OUT at exit."""
    from kvgate import cli
    from kvgate.requestcontrol.director import Director
    from kvgate.scheduling import tokenize
    from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer
    from kvgate.scheduling.profile import SchedulerProfile

    times: dict[str, list[tuple[int, int]]] = {}
    picks = [0]  # Director.pick calls so far: one per request (one endpoint, no retries)
    orig_pick = Director.pick

    def counting_pick(*a: Any, **k: Any) -> Any:
        picks[0] += 1
        return orig_pick(*a, **k)

    Director.pick = counting_pick  # type: ignore[method-assign]

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        got = times.setdefault(label, [])

        @functools.wraps(fn)
        def timed_call(*a: Any, **k: Any) -> Any:
            t = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                got.append((picks[0], time.perf_counter_ns() - t))

        setattr(owner, name, timed_call)

    wrap(Director, "pick", "Director.pick")
    wrap(SchedulerProfile, "run", "  profile run (producers, filters, scorers, picker)")
    wrap(PrecisePrefixCacheScorer, "prepare", "    precise prefix: tokens, keys, index match")
    wrap(tokenize.PromptTokenizer, "encode", "      tokenizer: a prompt's ids")
    wrap(tokenize, "_ids", "        tokenizer library call (one piece)")
    wrap(Director, "on_dispatched", "Director.on_dispatched")
    wrap(Director, "on_first_token", "Director.on_first_token")
    wrap(Director, "on_finished", "Director.on_finished")
    atexit.register(lambda: Path(out).write_text(json.dumps(times)))
    return cli.main(argv)


def main() -> int:
    if sys.argv[1:2] == ["--_serve"]:
        return _serve_split(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40, help=f"measured, after {WARMUP} unmeasured")
    ap.add_argument("--first-token-ms", type=float, default=20.0)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--split", action="store_true", help="also time the pick's parts in the serve process")
    args = ap.parse_args()
    backend_port, gateway_port = free_ports(2)
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv(
            [
                sys.executable,
                "-m",
                "kvgate.bench.gateway_ttft",
                "--_backend",
                str(gateway_ttft.DEFAULT_TOKENIZER),
                str(args.first_token_ms),
                str(backend_port),
            ]
        ),
        stdout=subprocess.PIPE,
    )
    gateway = None
    split = None
    head = [sys.executable, "-m", "kvgate.cli"]
    if args.split:
        fd, name = tempfile.mkstemp(prefix="kvgate-pick-split-", suffix=".json")
        os.close(fd)
        split = Path(name)
        head = [sys.executable, __file__, "--_serve", name]
    try:
        assert backend.stdout is not None
        backend.stdout.readline()  # "ready"
        gateway = subprocess.Popen(
            lifeline.die_with_parent_argv(
                [
                    *head,
                    "serve",
                    "--endpoints",
                    f"http://127.0.0.1:{backend_port}",
                    "--model",
                    gateway_ttft.MODEL,
                    "--port",
                    str(gateway_port),
                    "--kv-events",
                    "auto",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        recs = []
        for i, prompt in enumerate(gateway_ttft.workload(args.requests + WARMUP)):
            rec = timed(f"http://127.0.0.1:{gateway_port}", prompt)
            if i >= WARMUP:
                recs.append(rec)
            time.sleep(args.gap)
        print(f"{len(recs)} requests, first token after {args.first_token_ms} ms:")
        for label, a, b in STEPS:
            ms = [1000 * (r[b] - r[a]) for r in recs]
            print(f"  {label:40s} median {statistics.median(ms):7.3f}  mean {statistics.fmean(ms):7.3f} ms")
    finally:
        if gateway is not None and gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGINT)  # a clean stop: the --split wrapper writes at exit
        for p in (gateway, backend):
            if p is not None:
                if p is backend:
                    p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
    if split is not None:
        _print_split(json.loads(split.read_text() or "{}"), args.requests)
        split.unlink()
    return 0


def _print_split(times: dict[str, list[list[int]]], requests: int) -> None:
    """Each part's calls during the measured requests: those tagged with a pick after the first WARMUP
    requests' (calls at load time, tagged 0, and during the warm-up are dropped exactly)."""
    print("inside the serve process (perf_counter_ns wrappers):")
    for label, pairs in times.items():
        kept = [n for i, n in pairs if i > WARMUP]
        per = len(kept) / requests
        if kept:
            us = [n / 1e3 for n in kept]
            print(f"  {label:52s} {per:4.1f} calls/request  median {statistics.median(us):7.1f}  "
                  f"mean {statistics.fmean(us):7.1f} us")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
