"""Where ``kvgate serve``'s CPU goes in a ``vs_sglang.py`` pass, without vLLM (issue #16).

Two simulated vLLM servers (``kvgate sim``: block 128, 64 blocks, KV events on, the simulator's own
tokenizer reported at ``/server_info``) behind ``kvgate serve --kv-events auto`` (the precise profile, as
in front of real vLLM), the ``vs_sglang.py`` workload (8 tenants x ``--per-tenant``, ~400-word tenant
prompts, one streamed request at a time, ``--gap`` seconds apart). It reports kvgate's CPU (user +
system, all threads, from ``/proc/<pid>/task/*/schedstat``):

- idle: ``--idle`` seconds with no requests (the background: scrapes, KV-event intake, timers), per second;
- the pass: in total, inside request windows (send to end of stream) and between them.

``--stages`` runs the gateway under ``gateway_stages.py`` (the main thread's CPU charged to the request
path's stages: front, body parse, pick and its tokenizing, block keys and index match, accounting,
upstream reads, SSE relay, KV-event intake, scrape reads, and "other"), snapshotted before and after each
request, and prints per request each stage's CPU inside the request windows and over the whole run.

``--profile F`` runs the gateway under ``cProfile`` timed by its main thread's CPU clock (the event loop)
and writes the stats to F on exit; ``--top N`` prints the N functions with the most own time (the
profiler's own cost per call inflates call-heavy code: compare components by switching them off with
``--launcher`` instead). ``--base-src TREE/src`` runs that tree's gateway and this one's alternately
(``--rounds``) on the same servers: before and after a change, from one command.

    PYTHONPATH=src python scripts/realvllm/gateway_cpu.py [--gap 1.2] [--idle 20] [--profile /tmp/p.prof]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import free_ports, sched_ms, wait_http, workload

from kvgate import lifeline

MODEL = "tiny"
# The gateway under cProfile timed by its main thread's CPU clock (the default, wall time, charges a
# function for the time the process was preempted in it: on 2 cores, a write to loopback that wakes the
# simulator often is).
# Profiling starts at SIGUSR1 (after start-up), so only the measured window is in the stats.
PROFILED = """import cProfile, signal, sys, time
from kvgate.cli import main
out = sys.argv[1]
p = cProfile.Profile(time.thread_time)
signal.signal(signal.SIGUSR1, lambda *_: p.enable())
try:
    main(sys.argv[2:])
finally:
    p.disable()
    p.dump_stats(out)
"""


def free_run(n: int) -> int:
    """A port P with P .. P + n - 1 all free (the simulator numbers its replicas' ports from a base)."""
    for _ in range(100):
        p = free_ports(1)[0]
        try:
            with contextlib.ExitStack() as st:
                for q in range(p, p + n):
                    st.enter_context(socket.create_server(("127.0.0.1", q)))
            return p
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def cpu_s(pid: int, main_only: bool = False) -> float:
    """CPU seconds of every thread of ``pid`` so far (schedstat: ns, not /proc/stat's 10 ms ticks), or of
    its main thread (the event loop) alone."""
    return sched_ms([pid], main_only)[0] / 1000


def stream(base: str, prompt: str) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True, "temperature": 0,
            "stream": True}  # fmt: skip
    req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        for _ in r:
            pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-tenant", type=int, default=5)
    ap.add_argument("--prefix-words", type=int, default=400)
    ap.add_argument("--gap", type=float, default=1.2)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds with no requests, measured first")
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--profile", help="run the gateway under cProfile, stats written here at exit")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--then-profile",
        action="store_true",
        help="measure unprofiled first, then a second gateway under --profile (seed + 100)",
    )
    ap.add_argument("--vllm", action="store_true", help="two real vLLM CPU servers instead of the simulator")
    ap.add_argument("--perf", help="perf record -g the gateway from readiness on, data written here")
    ap.add_argument("--base-src", help="another kvgate tree's src: its gateway and this one's, alternating")
    ap.add_argument("--rounds", type=int, default=2, help="with --base-src: rounds of (before, after)")
    ap.add_argument(
        "--launcher",
        help="a python file run as the gateway instead of ``-m kvgate.cli`` (same "
        "arguments), e.g. one that switches a component off to see what it costs",
    )
    ap.add_argument("--serve-arg", action="append", default=[], help="extra ``kvgate serve`` argument")
    ap.add_argument(
        "--stages",
        action="store_true",
        help="run the gateway under gateway_stages.py: its main thread's CPU per request by stage",
    )
    ap.add_argument(
        "--py-spy",
        nargs=2,
        metavar=("BIN", "OUT"),
        help="sample the gateway with py-spy (BIN) from readiness on; raw folded stacks to OUT",
    )
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="kvgate-gwcpu-"))
    with contextlib.ExitStack() as stack:
        if args.vllm:  # two real vLLM CPU servers, as vs_sglang.py starts them
            from kvgate.realvllm.harness import ServerSpec, fleet

            ports = free_ports(6)
            specs = [ServerSpec(ports[i], events_port=ports[2 + i], replay_port=ports[4 + i],
                                num_gpu_blocks=64, max_model_len=4096) for i in range(2)]  # fmt: skip
            urls = [s.url for s in stack.enter_context(fleet(specs, log_dir))]
        else:
            sim_port, events_port = free_run(2), free_run(4)
            sim_cmd = [sys.executable, "-m", "kvgate.cli", "sim", "--replicas", "2", "--profile", "tiny",
                       "--block-size", "128", "--num-gpu-blocks", "64", "--max-model-len", "4096",
                       "--model", MODEL, "--base-port", str(sim_port),
                       "--kv-events-port", str(events_port)]  # fmt: skip
            urls = [f"http://127.0.0.1:{sim_port + i}" for i in range(2)]
            sim = subprocess.Popen(
                lifeline.die_with_parent_argv(sim_cmd),
                stdout=(log_dir / "sim.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            stack.callback(lambda: (sim.terminate(), sim.wait(20)))
            for u in urls:
                wait_http(u + "/health", sim)
        if args.base_src:  # the code before and this tree, alternating, on the same servers
            base = str(Path(args.base_src).resolve())
            for r in range(args.rounds):
                for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    print(f"round {r}, {label}:", flush=True)
                    measure(args, urls, log_dir, None, base if label == "before" else None)
        else:
            measure(args, urls, log_dir, args.profile if not args.then_profile else None)
        if args.then_profile:  # a second gateway, profiled, on the same servers
            args.seed += 100
            measure(args, urls, log_dir, args.profile)
    if args.profile and os.path.exists(args.profile):
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(args.top)
    return 0


def measure(
    args: argparse.Namespace, urls: list[str], log_dir: Path, profile: str | None, src: str | None = None
) -> None:
    """One gateway (``src``: another kvgate tree's ``src``, else this one's): idle, then the passes."""
    gw_port = free_ports(1)[0]
    gw = spy = None
    try:
        stages = str(log_dir / f"stages-{gw_port}.json") if args.stages and not profile else None
        prof = (
            ["-c", PROFILED, profile]
            if profile
            else [str(Path(__file__).resolve().parent / "gateway_stages.py"), stages]
            if stages
            else [args.launcher]
            if args.launcher
            else ["-m", "kvgate.cli"]
        )
        gw_cmd = [sys.executable, *prof, "serve", "--endpoints", ",".join(urls), "--model", MODEL,
                  "--port", str(gw_port), "--kv-events", "auto", *args.serve_arg]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": src} if src else None
        gw = subprocess.Popen(
            lifeline.die_with_parent_argv(gw_cmd),
            stdout=(log_dir / "gw.log").open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(base + "/readyz", gw)
        time.sleep(1.0)
        notes = [ln for ln in (log_dir / "gw.log").read_text().splitlines() if "KV events" in ln]
        print("gateway:", notes[:2], flush=True)
        if profile or stages:
            gw.send_signal(signal.SIGUSR1)
        if args.perf:
            spy = subprocess.Popen(
                lifeline.die_with_parent_argv(
                    ["perf", "record", "-F", "2000", "-g", "-p", str(gw.pid), "-o", args.perf]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        if args.py_spy:
            spy = subprocess.Popen(
                lifeline.die_with_parent_argv(
                    [
                        args.py_spy[0],
                        "record",
                        "-p",
                        str(gw.pid),
                        "-o",
                        args.py_spy[1],
                        "--format",
                        "raw",
                        "-r",
                        "1000",
                        "--nonblocking",
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        c0 = cpu_s(gw.pid)
        time.sleep(args.idle)
        idle = cpu_s(gw.pid) - c0
        print(f"idle {args.idle:.0f} s: {1000 * idle / args.idle:.2f} ms CPU per second", flush=True)
        for p in range(args.passes):
            # Each pass its own tenants (seed + pass): every prefix new to the servers and to the gateway's
            # tokenizer cache, as for vs_sglang.py's fresh gateway per pass after a cache reset.
            prompts = workload(8, args.per_tenant, args.prefix_words, args.seed + p)
            inside = inside_main = 0.0
            t0, c0, m0 = time.monotonic(), cpu_s(gw.pid), cpu_s(gw.pid, True)
            for pr in prompts:
                time.sleep(args.gap)
                if stages:  # a snapshot before the window (given 20 ms to land)
                    gw.send_signal(signal.SIGUSR2)
                    time.sleep(0.02)
                a, am = cpu_s(gw.pid), cpu_s(gw.pid, True)
                stream(base, pr)
                inside += cpu_s(gw.pid) - a
                inside_main += cpu_s(gw.pid, True) - am
                if stages:  # and after it (the request's own bookkeeping after its last byte included)
                    time.sleep(0.02)
                    gw.send_signal(signal.SIGUSR2)
            wall, total, main = time.monotonic() - t0, cpu_s(gw.pid) - c0, cpu_s(gw.pid, True) - m0
            n = len(prompts)
            print(f"pass {p}: {n} requests, {wall:.1f} s: CPU {1000 * total:.0f} ms, main thread "
                  f"{1000 * main:.0f} ms; per request inside its window {1000 * inside / n:.2f} ms (main "
                  f"{1000 * inside_main / n:.2f}); between requests {1000 * (total - inside) / wall:.2f} ms "
                  f"per second (main {1000 * (main - inside_main) / wall:.2f})", flush=True)  # fmt: skip
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
    if stages:
        print_stages(stages, args.passes)


def print_stages(path: str, passes: int) -> None:
    """Per request, by stage: inside the request windows (the SIGUSR2 pairs) and over the whole passes
    (windows and the background between them), from ``gateway_stages.py``'s snapshots."""
    doc = json.loads(Path(path).read_text())
    if doc["missing"]:
        print("stages not in this tree (not wrapped):", ", ".join(doc["missing"]))
    snaps = doc["snapshots"]
    first, last, pairs = snaps[0], snaps[-1], list(zip(snaps[1:-1:2], snaps[2:-1:2], strict=False))
    n = len(pairs)
    inside = {k: sum(b["stages"][k] - a["stages"][k] for a, b in pairs) for k in first["stages"]}
    calls = {k: sum(b["calls"][k] - a["calls"][k] for a, b in pairs) for k in first["calls"]}
    whole = {k: last["stages"][k] - first["stages"][k] for k in first["stages"]}
    main_in = sum(b["main_s"] - a["main_s"] for a, b in pairs)
    main_all = last["main_s"] - first["main_s"]
    inside["other (event loop, coroutines)"] = main_in - sum(inside.values())
    whole["other (event loop, coroutines)"] = main_all - sum(whole.values())
    print(f"main thread CPU by stage, {n} requests ({passes} pass(es)), ms per request: inside the "
          f"request windows | whole run incl. between requests (calls per request inside)")  # fmt: skip
    for k in sorted(inside, key=lambda k: -inside[k]):
        c = f"{calls[k] / n:.1f}" if k in calls else "-"
        print(f"  {k:34s} {1000 * inside[k] / n:7.3f} | {1000 * whole[k] / n:7.3f}   ({c})")
    print(f"  {'total (main thread)':34s} {1000 * main_in / n:7.3f} | {1000 * main_all / n:7.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
