"""Where a freshly started ``kvgate serve``'s first requests spend their extra time, measured inside it.

``vs_sglang.py`` starts a new ``kvgate serve`` for every pass; session 23 found its first 8 requests
~7.5 ms slower than the rest at equal cache state (docs/benchmarks/realvllm.md §4.13). This starts one
``kvgate serve --kv-events auto`` (the same command) in front of two backends, sends ``vs_sglang.py``'s
prompts one at a time as it does (``timed``: a new client connection per request, streaming, the
``x-kvgate-timing`` marks), and records inside the serve process, per request (the interval from one
``Director.pick`` to the next, so a request's write, relay and the idle gap after it are its own):

- new upstream connections (``UpstreamPool._connect``: count and wall ms) and start-up warms;
- tokenizer library calls on the request path (``tokenize._ids``: count, ms) and the tokenizer's
  self-checks (``PromptTokenizer._self_check``: count, ms of the checking thread's CPU; before session 26
  on a worker thread for a process's first 8 prompts, since then at the tokenizer's load, start-up's row)
  and live checks (``PromptTokenizer._live_check``: the first 8 prompts' whole encodings on the checker
  thread, restored in session 26 after review s26-rev-wkv26 F1; ``live_check_loop_n``: those that ran on
  the event loop's thread, the request path: none);
- the event loop thread's CPU (``time.thread_time``) and the process's (all threads), so the CPU other
  threads used is their difference;
- modules imported (``sys.modules`` growth, named) and the process's threads (``/proc/self/task``);
- with ``--profile N``: a cProfile of the event loop thread per interval for the first N requests and one
  late request, and the functions whose own time differs most between them.

Backends: ``instant`` (default: ``kvgate bench gateway-ttft``'s instant vLLM look-alike on two ports; no
vLLM, no lock needed for counts) or ``vllm`` (two real vLLM CPU servers as ``vs_sglang.py`` starts them;
hold ``/work/team/live.lock``). ``--idle S`` waits S seconds between readiness and the first request
(``vs_sglang.py`` waits ~3 s: its sleep, the cache resets, the counter reads, its ``--gap``).

    PYTHONPATH=src python scripts/realvllm/first_requests.py [--backend vllm] [--seed 28] [--requests 40]
        [--gap 1.2] [--idle 3] [--profile 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import functools
import inspect
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import timed, wait_http, workload

from kvgate import lifeline
from kvgate.bench import gateway_ttft
from kvgate.realvllm.bench import reset_caches
from kvgate.realvllm.harness import MODEL_NAME, ServerSpec, fleet, free_ports

STEPS = (("in", "send", "recv"), ("parse", "recv", "parsed"), ("pick", "parsed", "picked"),
         ("write", "picked", "sent"), ("head", "sent", "head"), ("first", "head", "first"),
         ("relay", "first", "c_first"))  # fmt: skip
LATE = 20  # the request whose profile is the "warm" reference


# --- inside the serve process --------------------------------------------------------------------------


def _serve(out: str, profile_n: int, without: str, argv: list[str]) -> int:
    """``--_serve OUT N WITHOUT argv...``: instrument, run ``kvgate serve``, write the records to OUT at
    exit. WITHOUT ``self-checks``: the tokenizer's self-checks off (a diagnosis: what they cost)."""
    from kvgate import cli
    from kvgate.gateway import upstream
    from kvgate.requestcontrol.director import Director
    from kvgate.scheduling import tokenize

    if without not in ("nothing", "self-checks"):
        raise SystemExit(f"--without {without}: nothing or self-checks")
    if without == "self-checks":
        tokenize.SELF_CHECKS = 0
        tokenize.LIVE_CHECKS = 0

    main_tid = threading.get_ident()
    counts: list[dict[str, float]] = [{}]  # [0]: start-up (before the first pick); [i + 1]: request i
    modules: list[list[str]] = [[]]
    seen_mods = set(sys.modules)
    profiles: dict[int, Any] = {}
    prof: list[cProfile.Profile | None] = [None]

    def add(key: str, value: float = 1.0) -> None:
        row = counts[-1]
        row[key] = row.get(key, 0.0) + value

    def snapshot() -> dict[str, float]:
        return {"loop_cpu_ms": 1000 * time.thread_time(), "proc_cpu_ms": 1000 * time.process_time(),
                "threads": float(len(os.listdir("/proc/self/task")))}  # fmt: skip

    last = [snapshot()]

    def close_interval() -> None:
        now = snapshot()
        row = counts[-1]
        row["loop_cpu_ms"] = now["loop_cpu_ms"] - last[0]["loop_cpu_ms"]
        row["other_cpu_ms"] = (now["proc_cpu_ms"] - last[0]["proc_cpu_ms"]) - row["loop_cpu_ms"]
        row["threads"] = now["threads"]
        last[0] = now
        new = sorted(set(sys.modules) - seen_mods)
        seen_mods.update(new)
        modules[-1] = new

    orig_pick = Director.pick

    def pick(*a: Any, **k: Any) -> Any:
        p = prof[0]
        if p is not None:
            p.disable()
            profiles[len(counts) - 2] = p  # (the request whose interval ends here)
            prof[0] = None
        close_interval()
        counts.append({})
        modules.append([])
        i = len(counts) - 2  # this request's index
        if i < profile_n or i == LATE:
            prof[0] = cProfile.Profile()
            prof[0].enable()
        t = time.perf_counter()
        try:
            return orig_pick(*a, **k)
        finally:
            add("pick_ms", 1000 * (time.perf_counter() - t))

    Director.pick = pick  # type: ignore[method-assign]

    def wrap_sync(owner: Any, name: str, key: str, cpu: bool = False, where: bool = False) -> None:
        fn = getattr(owner, name, None)
        if fn is None:  # (a ``--base-src`` tree without it: main before session 26's live checks)
            return

        @functools.wraps(fn)
        def call(*a: Any, **k: Any) -> Any:
            clock = time.thread_time if cpu else time.perf_counter
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                add(key + "_n")
                if where and threading.get_ident() == main_tid:
                    add(key + "_loop_n")
                add(key + "_ms", 1000 * (clock() - t))

        setattr(owner, name, call)

    def wrap_async(owner: Any, name: str, key: str) -> None:
        fn = getattr(owner, name)
        assert inspect.iscoroutinefunction(fn)

        @functools.wraps(fn)
        async def call(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                add(key + "_n")
                add(key + "_ms", 1000 * (time.perf_counter() - t))

        setattr(owner, name, call)

    wrap_async(upstream.UpstreamPool, "_connect", "connect")
    wrap_async(upstream.UpstreamPool, "warm", "warm")
    wrap_sync(tokenize, "_ids", "tokenizer_call")
    wrap_sync(tokenize.PromptTokenizer, "_self_check", "self_check", cpu=True)
    wrap_sync(tokenize.PromptTokenizer, "_live_check", "live_check", cpu=True, where=True)

    def write() -> None:
        close_interval()
        doc: dict[str, Any] = {"main_tid": main_tid, "counts": counts, "modules": modules, "profiles": {}}
        for i, p in profiles.items():
            st = pstats.Stats(p)
            doc["profiles"][i] = [
                [f"{Path(f).name}:{line}:{fn}", nc, tt * 1000, ct * 1000]
                for (f, line, fn), (_, nc, tt, ct, _) in st.stats.items()  # type: ignore[attr-defined]
            ]
        Path(out).write_text(json.dumps(doc))

    atexit.register(write)
    return cli.main(argv)


# --- the client --------------------------------------------------------------------------------------


@contextlib.contextmanager
def backends(kind: str, log_dir: Path) -> Iterator[tuple[list[str], Callable[[], None]]]:
    """The backends' URLs and a function that empties their prefix caches."""
    if kind == "vllm":
        ports = free_ports(6)
        specs = [ServerSpec(ports[i], events_port=ports[2 + i], replay_port=ports[4 + i], num_gpu_blocks=64,
                            max_model_len=4096) for i in range(2)]  # fmt: skip
        with fleet(specs, log_dir) as servers:
            yield [s.url for s in servers], lambda: reset_caches(servers)
        return
    ports = free_ports(2)
    argv = [sys.executable, "-m", "kvgate.bench.gateway_ttft", "--_backend",
            str(gateway_ttft.DEFAULT_TOKENIZER), "0", *map(str, ports)]  # fmt: skip
    proc = subprocess.Popen(lifeline.die_with_parent_argv(argv), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
        yield [f"http://127.0.0.1:{p}" for p in ports], lambda: None
    finally:
        proc.terminate()
        proc.wait(15)


def one_run(args: argparse.Namespace, urls: list[str], log_dir: Path, variant: str) -> dict[str, Any]:
    """One fresh gateway. ``variant``: ``new`` (this tree), ``base`` (``--base-src``'s tree), each
    optionally ``+nocheck`` (the tokenizer's self-checks off)."""
    tree, _, nocheck = variant.partition("+")
    without = "self-checks" if nocheck else "nothing"
    env = {**os.environ, "PYTHONPATH": str(Path(args.base_src).resolve())} if tree == "base" else None
    port = free_ports(1)[0]
    fd, name = tempfile.mkstemp(prefix="kvgate-first-", suffix=".json", dir=log_dir)
    os.close(fd)
    cmd = [sys.executable, __file__, "--_serve", name, str(args.profile), without, "serve", "--endpoints",
           ",".join(urls), "--model", MODEL_NAME, "--port", str(port), "--kv-events", "auto"]  # fmt: skip
    logf = (log_dir / "kvgate.log").open("wb")
    gw = subprocess.Popen(lifeline.die_with_parent_argv(cmd), stdout=logf, stderr=subprocess.STDOUT,
                          start_new_session=True, env=env)  # fmt: skip
    recs = []
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", gw)
        time.sleep(args.idle)
        base = f"http://127.0.0.1:{port}"
        for p in workload(args.tenants, args.per_tenant, args.prefix_words, args.seed)[: args.requests]:
            time.sleep(args.gap)
            recs.append(timed(base, p))
    finally:
        if gw.poll() is None:
            os.killpg(gw.pid, signal.SIGINT)  # a clean stop: the wrapper writes at exit
        try:
            gw.wait(20)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait(5)
    inside = json.loads(Path(name).read_text() or "{}")
    return {"variant": variant, "records": recs, "inside": inside}


def table(run: dict[str, Any], first: int) -> None:
    recs, counts = run["records"], run["inside"].get("counts", [])
    start = counts[0] if counts else {}
    print(f"start-up (before the first pick): {fmt_counts(start)}")
    if run["inside"].get("modules"):
        print(f"  modules imported at start-up: {len(run['inside']['modules'][0])}")
    keys = ("connect_n", "connect_ms", "tokenizer_call_n", "tokenizer_call_ms", "self_check_n",
            "self_check_ms", "live_check_n", "live_check_ms", "pick_ms", "loop_cpu_ms", "other_cpu_ms",
            "threads")  # fmt: skip
    print("request: kvgate's marks (ms) | inside the serve process, the interval from this pick to the next")
    rows = []
    for i, r in enumerate(recs):
        c = counts[i + 1] if i + 1 < len(counts) else {}
        mods = run["inside"]["modules"][i + 1] if i + 1 < len(run["inside"].get("modules", [])) else []
        row = {k: 1000 * (r[b] - r[a]) for k, a, b in STEPS if a in r and b in r}
        row["ttft"] = 1000 * (r["c_first"] - r["send"])
        row.update({k: c.get(k, 0.0) for k in keys})
        row["modules"] = float(len(mods))
        rows.append(row)
        if i < first + 2:
            print(f"  {i:2d} " + " ".join(f"{k} {v:.2f}" for k, v in row.items())
                  + (f" new modules: {mods[:6]}" if mods else ""))  # fmt: skip
    for label, part in ((f"1-{first}", rows[:first]), (f"{first + 1}-", rows[first:])):
        if part:
            print(f"  mean {label:5s} " + " ".join(f"{k} {statistics.fmean(r[k] for r in part):.2f}"
                                                 for k in part[0]))  # fmt: skip


def summary(runs: list[dict[str, Any]], first: int) -> None:
    """Per variant, over its runs: mean TTFT and kvgate's steps on requests 1-``first`` and the rest."""
    print(f"by variant (means over its runs' requests 1-{first} / {first + 1}-, ms):")
    for variant in dict.fromkeys(r["variant"] for r in runs):
        recs = [r["records"] for r in runs if r["variant"] == variant]
        cells = []
        for label, a, b in (("ttft", "send", "c_first"), *STEPS):
            parts = [[1000 * (x[b] - x[a]) for rs in recs for x in (rs[:first] if k == 0 else rs[first:])
                      if a in x and b in x] for k in (0, 1)]  # fmt: skip
            if all(parts):
                cells.append(f"{label} {statistics.fmean(parts[0]):.2f} / {statistics.fmean(parts[1]):.2f}")
        print(f"  {variant:12s} ({len(recs)} runs) " + ", ".join(cells))


def fmt_counts(c: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.items()))


def profile_diff(run: dict[str, Any], top: int) -> None:
    profs = run["inside"].get("profiles", {})
    late = {f: (nc, tt) for f, nc, tt, _ in profs.get(str(LATE), [])}
    for i in sorted((k for k in profs if k != str(LATE)), key=int):
        rows = []
        for f, nc, tt, _ in profs[i]:
            lnc, ltt = late.get(f, (0, 0.0))
            rows.append((tt - ltt, f, nc, lnc, tt))
        rows.sort(reverse=True)
        total = sum(tt for *_, tt in rows)
        print(f"request {i}: loop-thread profile {total:.2f} ms own time (request {LATE}: "
              f"{sum(tt for _, tt in late.values()):.2f}); own time above request {LATE}'s:")  # fmt: skip
        for d, f, nc, lnc, tt in rows[:top]:
            print(f"    {d:+7.3f} ms  {f}  (calls {nc} vs {lnc}, own {tt:.3f} ms)")


def main() -> int:
    if sys.argv[1:2] == ["--_serve"]:
        return _serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("instant", "vllm"), default="instant")
    ap.add_argument("--seed", type=int, default=28)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--per-tenant", type=int, default=5)
    ap.add_argument("--prefix-words", type=int, default=400)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--gap", type=float, default=1.2)
    ap.add_argument("--idle", type=float, default=3.0, help="seconds from readiness to the first request")
    ap.add_argument("--runs", type=int, default=1, help="fresh kvgate serves, one after another")
    ap.add_argument("--first", type=int, default=8)
    ap.add_argument("--profile", type=int, default=0, help="cProfile the first N requests (and one late)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument(
        "--variants",
        default="new",
        help="comma list taken in turn by the runs: new (this tree's kvgate), base (--base-src's), "
        "either with +nocheck (the tokenizer's self-checks off: a diagnosis)",
    )
    ap.add_argument("--base-src", help="another kvgate source tree (the 'base' variant)")
    ap.add_argument("--json")
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="kvgate-first-"))
    runs = []
    with backends(args.backend, log_dir) as (urls, reset):
        variants = args.variants.split(",")
        if any(v.startswith("base") for v in variants) and not args.base_src:
            ap.error("a base variant needs --base-src")
        for k in range(args.runs):
            reset()  # every fresh gateway meets empty caches, as each vs_sglang.py pass does
            runs.append(one_run(args, urls, log_dir, variants[k % len(variants)]))
    for k, run in enumerate(runs):
        print(
            f"--- run {k} ({args.backend} backends, seed {args.seed}, gap {args.gap} s, idle {args.idle} s, "
            f"{run['variant']})"
        )
        table(run, args.first)
        if args.profile:
            profile_diff(run, args.top)
    summary(runs, args.first)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
