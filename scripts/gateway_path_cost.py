"""CPU of one request through the gateway's own code, sockets left out: this tree against another.

    PYTHONPATH=src python scripts/gateway_path_cost.py --base-src <other checkout>/src \\
        [--requests 5000] [--rounds 7] [--repeats 3] [--policy kvgate] [--flow-control]

What ``kvgate bench gateway-overhead`` sends (a non-streamed ``POST /v1/completions`` with its short
prompt, answered with its fixed completion), through the real front (``httpfront``), proxy, picker
(``kvgate serve``'s pool for ``--policy``, two endpoints, no scrapes), upstream client and metrics, in
one process, with the two sockets replaced by in-memory transports: the client's request is handed to
the front's ``data_received``, the upstream's answer to the upstream connection's one loop turn after
the request is written (as a reply from a socket would be). So the figure is the gateway's Python work
per request (and the event loop's turns), without the kernel's socket reads and writes, which the
end-to-end benchmark measures too and which are the same for both trees.

Each repeat runs the base tree then this tree, each in a fresh process: warmed, then ``--rounds``
rounds of ``--requests`` sequential requests, CPU time (``process_time``) per request for each round;
a process's figure is its fastest round (the least disturbed by other work on the machine). Prints
every process's figure, the medians over repeats and the ratio (this / base). ``--flow-control``: the
pool's picker (``--policy``'s) with the ``flowControl`` gate on and a concurrency detector it never
saturates: flow control's path for a request admitted at once (the usual case).

``--picks``: the picker alone, in the same alternating processes. Two figures per process, each its
fastest of ``--rounds`` rounds (CPU time): ``bench``, one request's picker work on the bench's path
(``Director.pick``, ``on_dispatched``, ``on_first_token``, ``on_finished`` for its short prompt on two
never-scraped endpoints, ``--policy``), per request; ``trace``, the seeded generated workload of
``kvgate.bench.picktrace`` (8 scraped endpoints, shared prefixes up to overflowing the hashed window,
LoRA, subset hints, sheddable requests, first tokens, finishes, scrapes, ejections; ``--trace-steps``
events): the CPU time of the Director's calls (picks, dispatches, first tokens, finishes; not the
generator's), per pick; ``hash``, the trace's prompt hashing alone (the prefix scorer's ``block_hashes``
calls of one run of the trace, recorded, then replayed ``--rounds`` times, each from an empty span memo),
per pick of the trace. Every process also returns a digest of the trace's picks (endpoints chosen, errors,
and the explanation of every 50th pick): the script fails unless both trees' digests are equal, i.e.
the two pickers decide alike on it. The trace generator is this tree's file, loaded by path, so both
trees run the same workload.

``--parts`` (this tree only, one process, no ``--base-src``): where the ``bench`` figure's CPU goes: the
same request with one part of the picker stubbed out at a time (the cost scorer's score and post-pick
hook; the prefix scorer's producer; the observers' calls; the three accounting calls), and the
``round-robin`` policy, each the fastest of ``--rounds`` rounds of ``--requests``, rounds interleaved
across the variants. A diagnostic: a stubbed picker decides differently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _costkit import in_memory_gateway, request_flow
from tree_runs import HERE_SRC, alternate, run_in_tree, trees

# ``--stages``: the request path's synchronous functions, each call's CPU charged to its stage exclusive of
# the wrapped calls it makes (as ``realvllm/gateway_stages.py`` charges them in a live gateway); what no
# wrapped call covers (the event loop, task and future machinery, the coroutines' own code: ``_run``,
# ``_entry``, ``_dispatch``, ``UpstreamPool.request``, ``_Conn._wait``) is "other". A target this tree
# lacks is skipped (its CPU lands in whatever wraps it, or "other").
PATH_STAGES: list[tuple[str, str, str]] = [
    ("front: read, parse head", "kvgate.httpfront.server", "FrontProtocol.data_received"),
    ("front: task per request", "kvgate.httpfront.server", "FrontProtocol._next"),
    ("front: answer head, write", "kvgate.httpfront.server", "_head"),
    ("front: answer head, write", "kvgate.httpfront.server", "FrontProtocol.send"),
    ("prepare: body parse", "kvgate.gateway.proxy", "parse_body"),
    ("prepare: headers", "kvgate.gateway.proxy", "_filter_headers"),
    # (the ``InferenceRequest`` is built inline in ``_prepare`` since cpu21: "prepare (rest)" has it)
    ("prepare (rest)", "kvgate.gateway.proxy", "Proxy._prepare"),
    ("pick", "kvgate.requestcontrol.director", "Director.pick"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_dispatched"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_first_token"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_finished"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_whole"),  # (a whole reply: one call)
    ("metrics", "kvgate.openai.requeststats", "RequestStats.start"),
    ("metrics", "kvgate.openai.requeststats", "RequestStats.stop"),
    ("metrics", "kvgate.openai.requeststats", "RequestStats.observe"),
    ("metrics", "kvgate.openai.requeststats", "RequestStats.flow"),
    ("upstream: read, parse", "kvgate.gateway.upstream", "_Conn.data_received"),
    ("upstream: release", "kvgate.gateway.upstream", "UpstreamResponse.release"),
    ("answer: usage read", "kvgate.gateway.proxy", "usage_from_body"),
    ("answer (rest)", "kvgate.gateway.proxy", "Proxy._whole"),
]


def _wrap_stages(totals: dict[str, float], on: list[bool]) -> list[str]:
    """Wrap ``PATH_STAGES`` (CPU time, exclusive of nested wrapped calls) into ``totals``; returns the
    targets this tree lacks."""
    import functools
    import importlib
    import inspect
    import time

    # (CPU time: a system call, ~1 us, so each wrapped call costs ~2 us more, part of it charged to its stage
    # and part to its caller's: the figures are for comparing trees and stages, the unwrapped total is
    # ``--_measure``'s; wall time is no use on a shared machine)
    clock = time.process_time
    stack: list[float] = []
    missing = []

    def wrap(stage: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def w(*a: Any, **k: Any) -> Any:
            if not on[0]:
                return fn(*a, **k)
            t0 = clock()
            stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                el = clock() - t0
                child = stack.pop()
                totals[stage] += el - child
                totals[stage + "#calls"] += 1
                if stack:
                    stack[-1] += el

        return w

    for stage, mod_name, path in PATH_STAGES:
        totals.setdefault(stage, 0.0)
        totals.setdefault(stage + "#calls", 0.0)
        try:
            owner: Any = importlib.import_module(mod_name)
            *owners, name = path.split(".")
            for o in owners:
                owner = getattr(owner, o)
            fn = inspect.getattr_static(owner, name)
        except (ImportError, AttributeError):
            missing.append(path)
            continue
        if isinstance(fn, staticmethod | classmethod) or inspect.iscoroutinefunction(fn):
            raise SystemExit(f"--stages: {mod_name}:{path} is not a plain function")
        setattr(owner, name, wrap(stage, fn))
        if mod_name == "kvgate.gateway.proxy" and not owners:  # (a module function the proxy imported)
            for src in ("kvgate.openai.request", "kvgate.openai.usage"):
                mod = importlib.import_module(src)
                if getattr(mod, name, None) is fn:
                    setattr(mod, name, getattr(owner, name))
    return missing


def _measure(
    requests: int, rounds: int, policy: str, flow: bool = False, stages: bool = False, picker_file: str = ""
) -> dict[str, Any]:
    import asyncio
    import itertools
    import time

    import uvloop
    import yaml

    from kvgate.bench.gateway_overhead import _COMPLETION, BODY, _request_bytes

    totals: dict[str, float] = {}
    wrapped = [False]
    missing = _wrap_stages(totals, wrapped) if stages else []
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.gateway.server import GatewayServer

    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(_COMPLETION)).encode()
        + b"\r\n\r\n"
        + _COMPLETION
    )
    request = _request_bytes(18080, "/v1/completions", BODY)
    picker_doc = yaml.safe_load(Path(picker_file).read_text()) if picker_file else None

    async def main() -> dict[str, Any]:
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], policy)
        if flow:  # --flow-control: the policy's picker with the gate on, never saturated (no wait)
            from kvgate.config.policies import policy_yaml

            raw = yaml.safe_load(policy_yaml(policy))
            raw["featureGates"] = ["flowControl"]
            raw["saturationDetector"] = {
                "type": "concurrency-detector",
                "parameters": {"maxConcurrency": 1000},
            }
            cfg.pools[0].picker_config = raw
        if picker_doc is not None:  # --picker-config: the pool's picker from this file instead of --policy's
            cfg.pools[0].picker_config = picker_doc
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        front, proto, client = in_memory_gateway(cfg, gw, itertools.repeat(reply).__next__)
        loop = asyncio.get_running_loop()

        async def one() -> bytes:
            client.got = loop.create_future()
            proto.data_received(request)
            return await client.got

        for _ in range(2000):
            answer = await one()
        if not answer.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
        tune_gc()  # as kvgate serve does after its start-up
        if stages:
            return await _stages_rounds(one, requests, rounds, totals, wrapped, missing, front)
        per_round = []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(requests):
                await one()
            per_round.append((time.process_time() - t0) / requests * 1e6)
        front.close_all()
        return {"us_per_request": min(per_round), "rounds": per_round}

    result: dict[str, Any] = uvloop.run(main())
    return result


async def _stages_rounds(
    one: Any,
    requests: int,
    rounds: int,
    totals: dict[str, float],
    on: list[bool],
    missing: list[str],
    front: Any,
) -> dict[str, Any]:
    """``--stages``: ``rounds`` rounds with the stage wrappers on (the fastest round counts), then 20
    requests counted call by call (``sys.setprofile``): Python functions entered (a coroutine's resume
    counts as an entry), of those coroutine frames (created or resumed: the awaits that suspended and
    the coroutine calls), C functions called from Python (uvloop's own Cython methods are not seen),
    and tasks created (a counting task factory)."""
    import asyncio
    import inspect
    import sys
    import time

    best: dict[str, float] | None = None
    best_total = float("inf")
    for _ in range(rounds):
        for k in totals:
            totals[k] = 0.0
        on[0] = True
        t0 = time.process_time()
        for _ in range(requests):
            await one()
        total = time.process_time() - t0
        on[0] = False
        if total < best_total:
            best_total, best = total, dict(totals)
    assert best is not None
    per = {k: v / requests * 1e6 for k, v in best.items() if not k.endswith("#calls")}
    per["other (loop, tasks, coroutines)"] = best_total / requests * 1e6 - sum(per.values())
    per |= {k: v / requests for k, v in best.items() if k.endswith("#calls")}
    counts = {"python calls": 0, "coroutine steps": 0, "C calls": 0, "tasks": 0}
    coro = inspect.CO_COROUTINE

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            counts["python calls"] += 1
            if frame.f_code.co_flags & coro:
                counts["coroutine steps"] += 1
        elif event == "c_call":
            counts["C calls"] += 1

    loop = asyncio.get_running_loop()
    me = asyncio.current_task()

    def factory(lp: Any, c: Any, **kw: Any) -> Any:
        counts["tasks"] += 1
        return asyncio.Task(c, loop=lp, **kw)

    n = 20
    loop.set_task_factory(factory)
    sys.setprofile(prof)
    for _ in range(n):
        await one()
    sys.setprofile(None)
    loop.set_task_factory(None)
    assert asyncio.current_task() is me
    front.close_all()
    counted = {k: v / n for k, v in counts.items()}
    return {"stages": per, "total": best_total / requests * 1e6, "counts": counted, "missing": missing}


def _load_picktrace() -> Any:
    """This tree's ``kvgate.bench.picktrace``, loaded by path (the process may run another tree's kvgate)."""
    import importlib.util

    path = HERE_SRC / "kvgate" / "bench" / "picktrace.py"
    spec = importlib.util.spec_from_file_location("_picktrace", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _measure_picks(
    requests: int, rounds: int, policy: str, steps: int, picker_file: str = ""
) -> dict[str, Any]:
    import gc
    import hashlib
    import time

    from kvgate.bench.gateway_overhead import BODY
    from kvgate.gateway.cli import tune_gc

    picktrace = _load_picktrace()
    prompt = json.loads(BODY)
    trace_policy: Any = "kvgate"
    if picker_file:  # --picker-config: bench and trace both on this file's picker
        import yaml

        with open(picker_file) as f:
            policy = trace_policy = yaml.safe_load(f)
    d, _store, _clock = picktrace.build(policy, 2, 0, scraped=False)
    one = request_flow(d, prompt)  # (a fresh Usage(6, 8) each request)

    for i in range(2000):
        one(i)
    tune_gc()
    bench = []
    for k in range(rounds):
        t0 = time.process_time()
        for i in range(requests):
            one(k * requests + i)
        bench.append((time.process_time() - t0) / requests * 1e6)
    trace = []
    digest = ""
    for _ in range(rounds):
        td, store, clock = picktrace.build(trace_policy, 8, 1)
        gc.collect()
        spent = [0.0]
        out = picktrace.run(td, store, clock, 1, steps, explain_every=50, spent=spent)
        trace.append(spent[0] / len(out) * 1e6)
        got = hashlib.sha256(repr(out).encode()).hexdigest()[:16]
        if digest and got != digest:
            raise RuntimeError("the trace's picks differ between rounds of one process")
        digest = got
    hashing = _hashing(picktrace, steps, rounds)
    return {
        "bench": min(bench),
        "trace": min(trace),
        "hash": min(hashing),
        "digest": digest,
        "rounds": bench,
        "trace_rounds": trace,
    }


def _hashing(picktrace: Any, steps: int, rounds: int) -> list[float]:
    """The approximate prefix scorer's prompt hashing on the trace's prompts: its ``block_hashes`` calls
    in one run of the trace, recorded, then replayed (each round from an empty span memo, where the tree
    has one), CPU time per pick of the trace."""
    import time

    from kvgate.scheduling import prefix
    from kvgate.scheduling.plugins import prefix_cache

    calls: list[tuple[Any, ...]] = []
    hasher = prefix_cache.block_hashes

    def record(*a: Any) -> list[int]:
        calls.append(a)
        return hasher(*a)

    prefix_cache.block_hashes = record
    try:
        td, store, clock = picktrace.build("kvgate", 8, 1)
        picks = len(picktrace.run(td, store, clock, 1, steps))
    finally:
        prefix_cache.block_hashes = hasher
    out = []
    clear = getattr(prefix, "clear_spans", lambda: None)
    for _ in range(rounds):
        clear()
        t0 = time.process_time()
        for a in calls:
            hasher(*a)
        out.append((time.process_time() - t0) / picks * 1e6)
    return out


def _parts(requests: int, rounds: int) -> dict[str, float]:
    import time

    from kvgate.bench.gateway_overhead import BODY
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY, PrefixMatch
    from kvgate.scheduling.types import InferenceRequest, Usage

    prompt = json.loads(BODY)

    def build(variant: str) -> Any:
        policy = "round-robin" if variant == "round-robin policy" else "kvgate"
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], policy)
        d = build_pools(cfg)[0].director
        if policy == "kvgate":
            prof = d.profiles["default"]
            cost, prefix = prof.scorers[0][0], prof.producers[0]
            if variant == "no cost scorer":
                cost.score = lambda c, eps: [1.0] * len(eps)
                cost.on_picked = lambda c, ep: None
            elif variant == "no prefix producer":
                prefix.prepare = lambda c, eps: c.data.__setitem__(CYCLE_KEY, PrefixMatch([], {}, 64))
            elif variant == "no observers":
                d._observers = []
                d._usage_observers = []
            elif variant == "no accounting":
                d.on_dispatched = d.on_first_token = d.on_finished = lambda *a, **k: None
        return d

    def cycle(d: Any, start: int) -> float:
        t0 = time.process_time()
        for i in range(start, start + requests):
            r = InferenceRequest(
                f"b{i}", "m", prompt_text=prompt["prompt"], prompt_tokens=6, max_tokens=prompt["max_tokens"]
            )
            ep = d.pick(r).endpoints[0]
            d.on_dispatched(r, ep)
            d.on_first_token(r, ep, learn=False)
            d.on_finished(r, ep, Usage(6, 8), True)
        return (time.process_time() - t0) / requests * 1e6

    names = [
        "all",
        "no cost scorer",
        "no prefix producer",
        "no observers",
        "no accounting",
        "round-robin policy",
    ]
    ds = {n: build(n) for n in names}
    for d in ds.values():
        cycle(d, 0)
    tune_gc()
    best = {n: float("inf") for n in names}
    for k in range(rounds):
        for n in names:
            best[n] = min(best[n], cycle(ds[n], (k + 1) * requests))
    return best


def _run(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    mode = ["--_picks", str(args.trace_steps)] if args.picks else ["--_measure"]
    flow = ["flow"] if args.flow_control and not args.picks else []
    picker = getattr(args, "picker_config", None)
    cfg = [f"cfg={Path(picker).resolve()}"] if picker else []
    argv = [*mode, str(args.requests), str(args.rounds), args.policy, *flow, *cfg]
    return run_in_tree(__file__, src, argv, 600)


def _file(rest: list[str]) -> str:
    return next((a[4:] for a in rest if a.startswith("cfg=")), "")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        rest = sys.argv[5:]
        print(
            json.dumps(
                _measure(
                    int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], "flow" in rest, picker_file=_file(rest)
                )
            )
        )
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--_stages":
        print(json.dumps(_measure(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], stages=True)))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--_picks":
        steps = int(sys.argv[2])
        got = _measure_picks(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], steps, _file(sys.argv[6:]))
        print(json.dumps(got))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", type=Path, help="the other tree's src/ (the baseline)")
    p.add_argument("--requests", type=int, default=5000, help="requests per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds per process (its fastest counts)")
    p.add_argument("--repeats", type=int, default=3, help="processes per tree, alternating")
    p.add_argument("--policy", default="kvgate", help="the pool's policy (kvgate, round-robin, ...)")
    p.add_argument("--picks", action="store_true", help="the picker alone (bench path and seeded trace)")
    p.add_argument(
        "--picker-config",
        help="an EndpointPickerConfig YAML file: the pool's picker (and with --picks the bench's and the"
        " trace's) instead of --policy's",
    )
    p.add_argument(
        "--flow-control",
        action="store_true",
        help="the pool's picker with the flowControl gate (a concurrency detector it never saturates)",
    )
    p.add_argument("--trace-steps", type=int, default=20_000, help="--picks: events in the seeded trace")
    p.add_argument("--parts", action="store_true", help="this tree's picker on the bench path, part by part")
    p.add_argument(
        "--stages",
        action="store_true",
        help="the request's CPU by stage (wrapped functions, exclusive) and its calls counted, per tree",
    )
    args = p.parse_args()
    if args.stages:
        return _main_stages(args)
    if args.parts:
        best = _parts(args.requests, args.rounds)
        for name, us in best.items():
            print(f"{name:<20} {us:6.2f} us/request")
        return 0
    if args.base_src is None:
        p.error("--base-src is required (but with --parts)")
    if args.picks:
        return _main_picks(args)
    srcs = trees(args.base_src)
    figures: dict[str, list[float]] = {name: [] for name in srcs}
    for rep, name, r in alternate(args.base_src, args.repeats, lambda src: _run(src, args)):
        figures[name].append(r["us_per_request"])
        rounds = " ".join(f"{x:.1f}" for x in r["rounds"])
        us = r["us_per_request"]
        print(f"repeat {rep} {name:<4} {us:7.2f} us/request  (rounds: {rounds})", flush=True)
    base, this = (statistics.median(figures[n]) for n in srcs)
    print(f"\nmedian base {base:.2f} us/request, this {this:.2f} us/request: ratio {this / base:.3f}")
    flow = ", flow control on" if args.flow_control else ""
    pol = (
        f"picker config {args.picker_config}"
        if getattr(args, "picker_config", None)
        else f"policy {args.policy}"
    )
    print(f"({pol}{flow}; base {srcs['base']}; this {srcs['this']})")
    return 0


def _main_stages(args: argparse.Namespace) -> int:
    """``--stages``: each tree (this one, and ``--base-src``'s if given) in ``--repeats`` alternating
    processes; per stage the median over processes of its us per request."""
    srcs = trees(args.base_src) if args.base_src is not None else {"this": HERE_SRC}
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in srcs}
    argv = ["--_stages", str(args.requests), str(args.rounds), args.policy]
    for _ in range(args.repeats):
        for name, src in srcs.items():
            got[name].append(run_in_tree(__file__, src, argv, 600))
    names = list(srcs)
    stages = [k for k in dict.fromkeys(k for n in names for r in got[n] for k in r["stages"]) if "#" not in k]
    title = f"us per request (median of {args.repeats} processes)"
    print(f"{title:<40}" + "".join(f"{n:>10}" for n in names))
    for st in stages:
        row = [statistics.median(r["stages"].get(st, 0.0) for r in got[n]) for n in names]
        ncalls = "/".join(f"{got[n][0]['stages'].get(st + '#calls', 0):g}" for n in names)
        note = "" if st.startswith("other") else f"   ({ncalls} calls)"
        print(f"{st:<40}" + "".join(f"{x:10.2f}" for x in row) + note)
    totals = [statistics.median(r["total"] for r in got[n]) for n in names]
    print(f"{'total (wrappers included, ~2 us a call)':<40}" + "".join(f"{x:10.2f}" for x in totals))
    keys = list(dict.fromkeys(k for n in names for k in got[n][0]["counts"]))
    print(
        "\ncalls per request (one process, 20 requests): "
        + "; ".join(
            f"{n}: " + ", ".join(f"{k} {got[n][0]['counts'].get(k, 0):g}" for k in keys) for n in names
        )
    )
    for n in names:
        if got[n][0]["missing"]:
            print(f"{n}: not in this tree (not wrapped): {', '.join(got[n][0]['missing'])}")
    print(f"(policy {args.policy}; " + "; ".join(f"{n} {s}" for n, s in srcs.items()) + ")")
    return 0


def _main_picks(args: argparse.Namespace) -> int:
    srcs = trees(args.base_src)
    figures: dict[str, dict[str, list[float]]] = {n: {"bench": [], "trace": [], "hash": []} for n in srcs}
    digests: dict[str, set[str]] = {n: set() for n in srcs}
    for rep, name, r in alternate(args.base_src, args.repeats, lambda src: _run(src, args)):
        digests[name].add(r["digest"])
        for k in ("bench", "trace", "hash"):
            figures[name][k].append(r[k])
        rounds = " ".join(f"{x:.1f}" for x in r["rounds"])
        print(
            f"repeat {rep} {name:<4} bench {r['bench']:6.2f} us/request (rounds: {rounds}); "
            f"trace {r['trace']:6.2f} us/pick (hashing {r['hash']:5.2f}); picks digest {r['digest']}",
            flush=True,
        )
    print()
    for k, unit in (("bench", "request"), ("trace", "pick"), ("hash", "pick")):
        base, this = (statistics.median(figures[n][k]) for n in srcs)
        print(f"{k}: median base {base:.2f} us/{unit}, this {this:.2f} us/{unit}: ratio {this / base:.3f}")
    pol = (
        f"picker config {args.picker_config} for both"
        if getattr(args, "picker_config", None)
        else f"policy {args.policy} for bench, kvgate for trace"
    )
    print(f"({pol}; base {srcs['base']}; this {srcs['this']})")
    if digests["base"] != digests["this"]:
        print(f"PICKS DIFFER: base {sorted(digests['base'])}, this {sorted(digests['this'])}")
        return 1
    print(f"same picks on the trace in both trees (digest {next(iter(digests['this']))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
