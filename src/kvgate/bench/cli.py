"""`kvgate bench <scenario>`: fleet-simulator scenarios, the live side-by-side run, inference-perf.

Benchmarks written by other parts of the project (picker micro-benchmark, gateway overhead, ext_proc,
simulator capacity) keep their own arguments: ``kvgate bench <name> ...`` hands the rest of the
command line to their ``main(argv)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from kvgate.bench.argtypes import fleet_policies
from kvgate.bench.outdir import default_out
from kvgate.entry import ArgumentParser, positive_int, positive_number

# Other benchmark modules with their own CLI: name -> module.
DELEGATED = {
    "picker": "kvgate.bench.picker_micro",
    "sim-capacity": "kvgate.bench.sim_capacity",
    "gateway-overhead": "kvgate.bench.gateway_overhead",
    "gateway-ttft": "kvgate.bench.gateway_ttft",
    "extproc": "kvgate.bench.extproc_bench",
    "peers": "kvgate.bench.peers",
    "calibrate": "kvgate.sim.calibrate",
    "precise": "kvgate.bench.precise",
    "multiturn": "kvgate.bench.multiturn",
    "workers": "kvgate.bench.workers_sim",
    "multicluster": "kvgate.bench.multicluster",
    "soak": "kvgate.bench.soak",
    "epp-replicas": "kvgate.bench.epp_replicas",
    "flowcontrol": "kvgate.bench.flowcontrol_bench",
    "scrape-cpu": "kvgate.bench.scrape_cpu",
}


def _seed_list(text: str) -> list[int]:
    """``A-B`` (inclusive) or ``A,B,...``."""
    first, dash, last = text.partition("-")
    try:
        if dash:
            seeds = list(range(int(first), int(last) + 1))
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"not a seed list: {text!r} (A-B or A,B,...)")
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is listed twice: {text!r}")
    return seeds


def _parser(fleet: list[str]) -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="kvgate bench",
        description="Run a benchmark scenario and write JSON, a markdown table and PNG plots.",
        epilog=(
            "fleet scenarios (virtual clock, real picker): " + ", ".join(fleet) + "; "
            "live: the simulated fleet behind kvgate and the peer routers over HTTP; "
            "inference-perf: kubernetes-sigs inference-perf against kvgate; "
            "delegated (own options): " + ", ".join(DELEGATED)
        ),
    )
    p.add_argument("scenario", choices=[*fleet, "live", "inference-perf", "list"])
    p.add_argument("--quick", action="store_true", help="fewer load points, shorter runs")
    p.add_argument("--seed", type=int, help="default 0; not with --seeds")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=(),
        help="fleet scenarios only: run every load point for each of these seeds (A-B or A,B,..., each once; "
        "capacity from the first; not with --seed) and add a per-load summary over them (geomean ratios to "
        "sglang-cache-aware)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default results/<scenario>, git-ignored; docs/benchmarks to publish)",
    )
    p.add_argument("--policies", help="comma-separated policies (default: the scenario's list)")
    p.add_argument(
        "--qps",
        type=positive_number,
        help="live: fixed offered QPS (simulated); default: --load-fraction x measured capacity",
    )
    p.add_argument(
        "--capacity",
        choices=["served", "knee"],
        default="served",
        help="fleet scenarios: capacity = req/s served under overload (default, the published figures) or "
        "the knee (highest load whose p90 TTFT stays within 2x the unloaded p90)",
    )
    p.add_argument(
        "--no-own-knees",
        action="store_true",
        help="fleet scenarios with --capacity knee: skip each compared policy's own knee (the capacity "
        "and the sweep are unchanged; about half the wall time on shared-prefix --quick)",
    )
    p.add_argument("--duration", type=positive_number, help="live: simulated seconds measured per run")
    p.add_argument("--repeats", type=positive_int, default=1, help="live: interleaved rounds")
    p.add_argument("--no-netns", action="store_true", help="live: don't re-exec inside `unshare -n`")
    from kvgate.bench import live

    live.add_arguments(p)
    return p


def _policies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``--policies`` read for the scenario it is given to: fleet policies (or a YAML path), or the live
    run's policies and router kinds. A misspelt name was a traceback, or a live run of nothing (qa36c F5)."""
    try:
        if args.scenario == "live":
            from kvgate.bench import live

            return live.live_policies(args.policies)
        return fleet_policies(args.policies)
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --policies: {e}")


def main(argv: list[str] | None = None) -> int:
    # (The reaper is installed by the command line, ``kvgate.cli``, not here: an in-process caller
    # keeps its own signal handlers and exit.)
    args_in = list(argv or [])
    if args_in and args_in[0] in DELEGATED:
        try:
            mod = importlib.import_module(DELEGATED[args_in[0]])
        except ImportError as e:
            print(f"kvgate bench {args_in[0]}: not available ({e})", file=sys.stderr)
            return 2
        return int(mod.main(args_in[1:]) or 0)

    from kvgate.bench.scenarios import SCENARIOS

    parser = _parser(list(SCENARIOS))
    args = parser.parse_args(args_in)
    if args.seeds and args.seed is not None:
        parser.error("--seed and --seeds are exclusive (with --seeds, capacity is probed on the first seed)")
    if args.seeds and args.scenario not in SCENARIOS:
        parser.error(f"--seeds is for fleet scenarios, not {args.scenario!r}")
    if args.seed is None:
        args.seed = args.seeds[0] if args.seeds else 0
    if args.out is None:  # not the tracked docs/benchmarks (a run without --out overwrote its figures)
        args.out = default_out(args.scenario)
    policies = _policies(parser, args) if args.policies is not None else None
    if args.scenario == "list":
        for name, sc in SCENARIOS.items():
            print(f"{name:<14} {sc.title}")
        print(f"{'live':<14} simulated fleet behind kvgate, sglang-router, vllm-router over HTTP")
        print(f"{'inference-perf':<14} kubernetes-sigs inference-perf against kvgate")
        for name in DELEGATED:
            print(f"{name:<14} (delegated to {DELEGATED[name]})")
        return 0
    if args.scenario == "live":
        from kvgate.bench import live

        return live.main_from_args(args, policies)
    if args.scenario == "inference-perf":
        import kvgate.bench.inference_perf as inference_perf

        return inference_perf.run(out=args.out, quick=args.quick, seed=args.seed)
    from kvgate.bench.sweep import run_scenario

    run_scenario(
        SCENARIOS[args.scenario],
        quick=args.quick,
        seed=args.seed,
        seeds=args.seeds,
        out=args.out,
        policies=policies,
        capacity=args.capacity,
        own_knees=not args.no_own_knees,
    )
    return 0
