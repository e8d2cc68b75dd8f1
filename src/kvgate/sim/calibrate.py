"""Print the simulator's calibration as markdown (the tables in ``docs/simulator.md``).

    python -m kvgate.sim.calibrate [--profiles NAME ...] [--prompt 1024] [--output 128]

1. Per measured profile: the step-time model next to every measured H100/H200 point, with the error.
2. Per profile: TTFT and ITL from the engine itself on the virtual clock, for a burst of B requests
   (B = 1, 64, 256) with distinct ``--prompt``-token prompts and ``--output`` output tokens each, plus the
   TTFT of one more such request arriving once all B are decoding (a "probe").
3. With ``--speed``: how fast the virtual-clock driver runs a fleet (CPU time against simulated time).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc

from kvgate.entry import ArgumentParser, prog
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.profiles import get_profile, load_measurements, profile_names
from kvgate.sim.types import SimRequest
from kvgate.sim.vclock import VirtualClock, VirtualReplica

BATCHES = (1, 64, 256)


def fit_rows(name: str) -> list[tuple[str, float, float, float]]:
    """(point, measured ms, model GPU ms, model step ms incl. overhead) per measured point."""
    p = get_profile(name)
    model_name, gpu = name.rsplit("-", 1)
    data = load_measurements(gpu)[model_name]
    m = p.model
    rows = []
    for k, v in data["prefill_ms"].items():
        sim = m.prefill_ms(int(k))
        rows.append((f"prefill {k}", float(v), sim, sim + m.overhead_ms))
    for k, v in data["decode_ms"].items():
        b, c = (int(x) for x in k.split("x"))
        sim = m.decode_ms(b, c)
        rows.append((f"decode {k}", float(v), sim, sim + m.overhead_ms))
    return rows


def fit_table(name: str) -> str:
    rows = fit_rows(name)
    errs = [abs(s - v) / v * 100 for _, v, s, _ in rows]
    out = [
        f"### {name}: {len(rows)} measured points, mean |error| {statistics.fmean(errs):.1f}%, "
        f"max {max(errs):.1f}%",
        "",
        "| point | measured ms | model GPU ms | error | model step ms (+overhead) |",
        "|---|---|---|---|---|",
    ]
    for label, v, s, full in rows:
        out.append(f"| {label} | {v:.2f} | {s:.2f} | {(s - v) / v * 100:+.1f}% | {full:.2f} |")
    return "\n".join(out)


def burst(name: str, batch: int, prompt: int, output: int) -> dict[str, float]:
    """B requests arriving together on one replica; TTFT p50 / max, ITL p50, preemptions."""
    clock = VirtualClock()
    gaps: list[float] = []
    last: dict[str, float] = {}

    def on_token(req: SimRequest, _tok: int, t: float) -> None:
        prev = last.get(req.request_id)
        if prev is not None:
            gaps.append(t - prev)
        last[req.request_id] = t

    engine = Engine(EngineConfig(profile=name))
    vocab = engine.config.vocab_size
    reqs = [
        SimRequest(f"b{i}", [(i * 7919 + j) % vocab for j in range(prompt)], max_tokens=output)
        for i in range(batch + 1)
    ]
    probe = reqs.pop()
    started = 0

    def on_first(_req: SimRequest, _t: float) -> None:
        nonlocal started
        started += 1
        if started == batch:  # every burst request is decoding now: send the probe
            clock.call_soon(rep.submit, probe)

    rep = VirtualReplica(clock, engine, on_token=on_token, on_first_token=on_first)
    for r in reqs:
        rep.submit(r)
    clock.run()
    ttft = sorted((r.first_token_time or 0.0) - r.arrival_time for r in reqs)
    return {
        "ttft_p50": statistics.median(ttft) * 1000,
        "ttft_max": ttft[-1] * 1000,
        "probe_ttft": ((probe.first_token_time or 0.0) - probe.arrival_time) * 1000,
        "itl_p50": statistics.median(gaps) * 1000 if gaps else 0.0,
        "tpot": statistics.fmean(
            ((r.finish_time or 0.0) - (r.first_token_time or 0.0)) / max(1, output - 1) for r in reqs
        )
        * 1000,
        "preemptions": float(engine.stats().num_preemptions),
        "kv_blocks": float(engine.config.num_gpu_blocks),
    }


def latency_table(names: list[str], prompt: int, output: int) -> str:
    out = [
        f"Burst of B requests, {prompt}-token distinct prompts, {output} output tokens, one replica "
        "(profile defaults):",
        "",
        "| profile | B | TTFT p50 ms | TTFT max ms | probe TTFT ms | ITL p50 ms | mean TPOT ms "
        "| preemptions | KV blocks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for b in BATCHES:
            r = burst(name, b, prompt, output)
            out.append(
                f"| {name} | {b} | {r['ttft_p50']:.1f} | {r['ttft_max']:.1f} | {r['probe_ttft']:.1f} "
                f"| {r['itl_p50']:.2f} | "
                f"{r['tpot']:.2f} | {int(r['preemptions'])} | {int(r['kv_blocks'])} |"
            )
    return "\n".join(out)


def fleet_speed(replicas: int, requests: int, qps: float, profile: str, seed: int = 1) -> str:
    """Poisson arrivals of shared-prefix requests spread at random over ``replicas`` virtual replicas."""
    rng = random.Random(seed)
    clock = VirtualClock()
    b0 = time.process_time()
    fleet = [VirtualReplica(clock, Engine(EngineConfig(profile=profile))) for _ in range(replicas)]
    build = time.process_time() - b0
    prefixes = [[rng.randrange(50_000) for _ in range(512)] for _ in range(32)]
    t = 0.0
    for i in range(requests):
        t += rng.expovariate(qps)
        prompt = prefixes[rng.randrange(32)] + [rng.randrange(50_000) for _ in range(rng.randrange(16, 512))]
        req = SimRequest(f"q{i}", prompt, max_tokens=rng.randrange(16, 256))
        clock.call_at(t, fleet[rng.randrange(replicas)].submit, req)
    t0, c0 = time.perf_counter(), time.process_time()
    clock.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = sum(r.steps for r in fleet)
    tokens = sum(r.engine.generation_tokens_total for r in fleet)
    done = sum(r.engine.requests_finished for r in fleet)
    return (
        f"| {replicas} | {requests} | {qps:.0f} | {done} | {steps} | {tokens} | {clock.now:.1f} | {wall:.2f} "
        f"| {cpu:.2f} | {clock.now / cpu:.1f}x | {steps / cpu:,.0f} | {build:.2f} |"
    )


def decode_step_cost(batch: int = 256, steps: int = 2000, slices: int = 20) -> str:
    """CPU cost of ``step()`` in steady decode (``batch`` requests at ~1k context, no driver around it).

    Reports the mean over all ``steps`` and the best of ``slices`` equal slices: on a shared machine the
    mean carries other processes' cache and core contention, the best slice is closer to the code's own
    cost.
    """
    engine = Engine(EngineConfig(profile="llama3-8b-h100"))
    for i in range(batch):
        engine.add_request(SimRequest(f"d{i}", [i, *range(1023)], max_tokens=10**6), 0.0)
    while engine.step(0.0).num_prefill_tokens:
        pass
    per_slice = steps // slices
    times = []
    for _ in range(slices):
        t0 = time.process_time()  # CPU time: the machine may be shared
        for _ in range(per_slice):
            engine.step(0.0)
        times.append((time.process_time() - t0) / per_slice)
    mean, best = sum(times) / len(times), min(times)
    return (
        f"Steady decode, {batch} requests at ~1k context, {per_slice * slices} steps: "
        f"{mean * 1e6:.0f} CPU us "
        f"per step, {mean / batch * 1e6:.2f} CPU us per token (best slice of {per_slice} steps: "
        f"{best * 1e6:.0f} us per step, {best / batch * 1e6:.2f} us per token; the simulated H100 step: "
        f"{engine.profile.model.decode_ms(batch, 1024) + engine.profile.model.overhead_ms:.1f} ms)."
    )


def engine_footprint(replicas: int = 300, profile: str = "llama3-8b-h100") -> str:
    """Memory (tracemalloc) and CPU time to build ``replicas`` idle engines (a big fleet pays it upfront)."""
    EngineConfig(profile=profile)  # fit the profile outside the measurement
    tracemalloc.start()
    t0 = time.process_time()
    engines = [Engine(EngineConfig(profile=profile)) for _ in range(replicas)]
    cpu = time.process_time() - t0
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (
        f"{len(engines)} idle `{profile}` engines ({engines[0].config.num_gpu_blocks} KV blocks each): "
        f"{size / 1e6:.1f} MB, {cpu:.2f} CPU s to build."
    )


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog=prog("kvgate.sim.calibrate", "bench calibrate"), description=__doc__.splitlines()[0]
    )
    ap.add_argument("--profiles", nargs="*", default=None, help="profiles (default: all)")
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens per request in the bursts")
    ap.add_argument("--output", type=int, default=128, help="output tokens per request in the bursts")
    ap.add_argument("--no-fit", action="store_true", help="skip the per-point fit tables")
    ap.add_argument("--speed", action="store_true", help="only time the virtual-clock driver on a fleet")
    args = ap.parse_args(argv)
    if args.speed:
        print(
            "| replicas | requests | QPS | finished | steps | output tokens | sim s | wall s | CPU s "
            "| sim/CPU | steps per CPU s | build CPU s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for replicas, requests, qps in ((10, 2000, 100.0), (100, 5000, 1000.0), (300, 20000, 3000.0)):
            print(fleet_speed(replicas, requests, qps, "llama3-8b-h100"))
        print()
        print(decode_step_cost())
        print()
        print(engine_footprint())
        return 0
    names = args.profiles or profile_names()
    for n in names:
        get_profile(n)  # fail early on a typo
    measured = [n for n in names if get_profile(n).derivation == "measured"]
    if not args.no_fit:
        summary = ["| profile | points | mean abs error | max abs error |", "|---|---|---|---|"]
        for n in measured:
            errs = [abs(s - v) / v * 100 for _, v, s, _ in fit_rows(n)]
            summary.append(f"| {n} | {len(errs)} | {statistics.fmean(errs):.1f}% | {max(errs):.1f}% |")
        print("## Step-time model vs measured points\n")
        print("\n".join(summary))
        for n in measured:
            print()
            print(fit_table(n))
        print()
    print("## TTFT and ITL from the engine\n")
    print(latency_table(names, args.prompt, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
