"""Precise (KV-event) vs approximate prefix scoring on the virtual-clock fleet simulator.

`kvgate bench precise [--quick] [--seed N] [--out docs/benchmarks]` runs the same seeded
workloads behind round robin, the reference profile with its approximate ``prefix-cache-scorer``, the
reference profile with ``precise-prefix-cache-scorer`` in its place (fed by the simulated engines' own
KV-cache events, delivered with a small virtual delay), and kvgate's default profile.

Three fleets: one where every customer's context fits (the approximate index is right, so both should
tie), one under KV pressure, where engines evict blocks the approximate index still believes cached
(it cannot see evictions or the decode blocks that compete for the cache), and one under heavy eviction
(1k-token answers fill most of a small cache), run at its own low offered load (``FIXED_QPS``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvgate.bench.outdir import default_out, out_help, wrote
from kvgate.config.picker import EndpointPickerConfig, load_config
from kvgate.entry import ArgumentParser, comma_list, positive_number, prog

# Registered here, not in ``scheduling.policies``: the precise scorer needs an event feed, which only
# the fleet simulator (engine sinks) or a deployment with KV events configured provides. Each is a named
# policy with its approximate ``prefix-cache-scorer`` swapped for the precise one (mode ``tokens``: the
# simulator's events carry token ids); kvgate's cost scorer then reads the precise matches by itself.
_HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _with_precise(policy: str, ttl: str) -> str:
    from kvgate.config.policies import POLICIES as NAMED

    text = NAMED[policy]
    plugin = (
        "- type: precise-prefix-cache-scorer\n  parameters:\n    mode: tokens\n"
        f"    indexName: fleetsim\n    speculativeTTL: {ttl}\n"
    )
    assert "- type: prefix-cache-scorer\n" in text, policy
    # The whole approximate entry, its parameters too (a second ``parameters`` key would replace these).
    text = re.sub(r"- type: prefix-cache-scorer\n(  parameters:\n(    .*\n)+)?", plugin, text)
    ref = "pluginRef: prefix-cache-scorer\n"
    return _HEAD + text.replace(ref, "pluginRef: precise-prefix-cache-scorer\n")


PRECISE_POLICIES: dict[str, str] = {
    # The reference profile with the precise scorer, crediting its picks until events confirm them.
    "reference-precise": _with_precise("reference", "2s"),
    # The same on engine events alone (no dispatch-time credit): what the precise index knows by itself.
    "reference-precise-events": _with_precise("reference", "0"),
    # kvgate's default profile with the cost scorer fed by the precise scorer's matches.
    "kvgate-precise": _with_precise("kvgate", "2s"),
}

POLICIES = [
    "round-robin",
    "reference",
    "reference-precise-events",
    "reference-precise",
    "kvgate",
    "kvgate-precise",
]


def precise_policy_config(name: str) -> EndpointPickerConfig:
    cfg = load_config(PRECISE_POLICIES[name])
    cfg.name = name
    return cfg


def _scenarios() -> list[Any]:
    from kvgate.bench import workloads
    from kvgate.bench.fleetsim import ReplicaSpec
    from kvgate.bench.scenarios import Scenario

    def customers(groups: int, output_len: int = 128, question_len: int = 128) -> Any:
        def make(seed: int, count: int) -> Any:
            return workloads.shared_prefix_stream(
                num_groups=groups, system_prompt_len=2048, question_len=question_len,
                output_len=output_len, count=count, seed=seed,
            )  # fmt: skip

        return make

    def fleet(name: str, title: str, replicas: Any, workload: Any) -> Any:
        # Every fleet here: 20 s measured after a 10 s warm-up, at the loads ``run`` gives it.
        return Scenario(
            name=name,
            title=title,
            replicas=replicas,
            workload=workload,
            load_fractions=[],
            duration=20.0,
            how_scaled="",
            warmup=10.0,
        )

    pressure = fleet(
        "kv-pressure",
        "4 x Llama-3-8B on H100 with 1,500 KV blocks (24k tokens) each, "
        "48 customers x 2k-token contexts (98k tokens of contexts for 96k of cache)",
        [ReplicaSpec("llama3-8b-h100", 4, {"num_gpu_blocks": 1500})],
        customers(48),
    )
    return [
        fleet(
            "fits",
            "4 x Llama-3-8B on H100, 24 customers x 2k-token contexts (all of them fit every replica)",
            [ReplicaSpec("llama3-8b-h100", 4)],
            customers(24),
        ),
        pressure,
        fleet(
            "evict-heavy",
            "4 x Llama-3-8B on H100 with 600 KV blocks (9.6k tokens) each, 16 customers x 2k-token "
            "contexts, 1k-token answers (decode blocks evict contexts all the time)",
            [ReplicaSpec("llama3-8b-h100", 4, {"num_gpu_blocks": 600})],
            customers(16, output_len=1024, question_len=64),
        ),
        replace(
            pressure,
            name="bypass",
            title=(
                "the kv-pressure fleet with 30% of the customers' requests sent to a random replica around "
                "kvgate (another gateway replica, direct clients): only KV events show what they cache "
                "and evict"
            ),
            extra={"bypass_fraction": 0.3},
        ),
    ]


# Scenarios whose capacity is far below the others' offered loads run at these instead of ``--qps``.
# ``bypass`` adds 30 QPS: at 40 its random share alone overloads replicas.
FIXED_QPS: dict[str, list[float]] = {"evict-heavy": [3.0], "bypass": [20.0, 30.0, 40.0]}


def run(quick: bool, seed: int, qps_list: list[float]) -> list[dict[str, Any]]:
    from kvgate.bench.sweep import run_point

    rows: list[dict[str, Any]] = []
    for sc in _scenarios():
        duration = sc.duration / 2 if quick else sc.duration
        for qps in FIXED_QPS.get(sc.name, qps_list):
            for policy in POLICIES:
                res = run_point(sc, policy, qps, duration, seed)
                row = dict(res.row)
                row["scenario"] = sc.name
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def _line(row: dict[str, Any]) -> str:
    hit = row.get("prefix_hit_rate")
    return (
        f"| {row['scenario']} | {row['qps']:g} | {row['policy']} | {_ms(row.get('ttft_p50'))} | "
        f"{_ms(row.get('ttft_p90'))} | {_ms(row.get('ttft_p99'))} | {row['output_tok_per_s']:,.0f} | "
        f"{'-' if hit is None else f'{hit * 100:.1f}'} | {row.get('preemptions', 0)} | {row['errors']} |"
    )


HEADER = (
    "| fleet | QPS | policy | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | out tok/s | hit rate % | preemptions "
    "| errors |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog=prog("kvgate.bench.precise", "bench precise"), description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="half-length measured windows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qps", default="20,40", help="comma-separated offered loads")
    ap.add_argument(
        "--out",
        default=str(default_out("precise")),
        help=out_help("precise", "precise-fleet.json/.md") + "; '' = none",
    )
    args = ap.parse_args(argv)
    try:  # (read here, not as the flag's type: the recorded command keeps the text as given)
        qps_list = comma_list(positive_number)(args.qps)
    except argparse.ArgumentTypeError as e:
        ap.error(f"argument --qps: {e}")
    print(HEADER, flush=True)
    rows = run(args.quick, args.seed, qps_list)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "precise-fleet.json").write_text(json.dumps(rows, indent=1, default=str))
        titles = "\n".join(f"- `{sc.name}`: {sc.title}" for sc in _scenarios())
        quick = ["--quick"] if args.quick else []
        cmd_argv = ["kvgate", "bench", "precise", *quick, "--seed", str(args.seed), "--qps", args.qps]
        cmd = shlex.join([*cmd_argv, "--out", args.out])  # quoted: runnable as recorded (a space in a path)
        body = "\n".join(_line(r) for r in rows)
        (out / "precise-fleet.md").write_text(
            f"# Precise vs approximate prefix scoring (fleet simulator)\n\nCommand: `{cmd}`\n\n"
            f"{titles}\n\n{HEADER}\n{body}\n"
        )
        wrote(out / "precise-fleet.json", out / "precise-fleet.md")
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
