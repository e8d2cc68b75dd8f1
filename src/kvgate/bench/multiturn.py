"""`kvgate bench multiturn`: the mixed multi-turn / burst / decode-heavy family (``bench.mixed``) in the
fleet simulator, kvgate against sglang-router's cache_aware (kvgate's reimplementation) and round robin,
on the tuning set and the validation set, at a load fraction of a knee-based capacity. ``--live`` runs
the same family over real HTTP against the real sglang-router and vllm-router instead
(``kvgate.bench.live_multiturn``, its own options).

Capacity (``--capacity knee``, the default): the highest offered load whose p90 TTFT stays within 2x the
unloaded p90 (``find_knee``), over a ladder of loads, under the best of the probe policies. ``served``
instead takes the req/s served when offered far more than the fleet can take (the older definition:
under overload a policy that finishes many short requests scores well while its TTFT has exploded).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvgate.bench import report
from kvgate.bench.argtypes import family_capacities, fleet_policies
from kvgate.bench.fleetsim import FleetConfig, FleetSim
from kvgate.bench.mixed import FAMILIES, TUNING_SET, VALIDATION_SET, Family, mixed_workload
from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.report import KNEE_FACTOR, find_knee
from kvgate.bench.workloads import RequestSpec
from kvgate.entry import ArgumentParser, nonneg_number, positive_number

DEFAULT_POLICIES = ["kvgate", "sglang-cache-aware", "round-robin"]


class MixedFleetSim(FleetSim):
    """The fleet simulator plus per-class figures: TTFT and server-side hit rate for session turns,
    burst requests and one-offs, and how often a session's turn went to another replica than its
    previous turn (``session_moves``: each one recomputes the whole context there)."""

    def __init__(self, cfg: FleetConfig, specs: Sequence[RequestSpec]) -> None:
        super().__init__(cfg, specs)
        self._cls: dict[str, str] = {}
        self._holder: dict[str, int] = {}
        self.session_turns = 0
        self.session_moves = 0
        self._ttft: dict[str, list[float]] = {}
        self._hits: dict[str, list[int]] = {}

    def _arrive(self, spec: RequestSpec) -> None:
        rid = f"r{self._n}"
        super()._arrive(spec)
        live = self._live.get(rid)
        if live is None or live.bypass:
            return
        session = spec.session
        self._cls[rid] = "session" if session else ("burst" if spec.group.startswith("t") else "oneoff")
        if session:
            prev = self._holder.get(session)
            if live.measured:
                self.session_turns += 1
                self.session_moves += prev is not None and prev != live.index
            self._holder[session] = live.index

    def _on_finished(self, sim: Any, t: float) -> None:
        live = self._live.get(sim.request_id)
        cls = self._cls.pop(sim.request_id, None)
        if cls and live is not None and live.measured and live.first is not None:
            self._ttft.setdefault(cls, []).append(live.first - live.start)
            h = self._hits.setdefault(cls, [0, 0])
            h[0] += sim.num_cached_tokens
            h[1] += sim.num_prompt_tokens
        super()._on_finished(sim, t)

    def class_figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session_turns": self.session_turns, "session_moves": self.session_moves}
        for cls, v in self._ttft.items():
            out[f"{cls}_ttft_p90"] = report.pct(v, 90)
            cached, prompt = self._hits[cls]
            out[f"{cls}_hit"] = cached / prompt if prompt else None
        return out


def mixed_sim(
    fam: Family, policy: str, qps: float, seed: int, duration: float = 120.0, warmup: float = 30.0
) -> MixedFleetSim:
    """One family's mixed workload at ``qps`` on its fleet, ready to ``run()`` (the analysis scripts
    under ``scripts/`` wrap its methods first)."""
    specs = list(mixed_workload(fam, qps=qps, horizon=warmup + duration, seed=seed))
    cfg = FleetConfig(
        replicas=fam.fleet(),
        policy=policy,
        qps=qps,
        duration=duration,
        warmup=warmup,
        max_requests=len(specs) + 1,
        drain=120.0,
        seed=seed,
    )
    return MixedFleetSim(cfg, specs)


def run_once(
    fam: Family, policy: str, qps: float, seed: int, duration: float, warmup: float
) -> dict[str, Any]:
    sim = mixed_sim(fam, policy, qps, seed, duration, warmup)
    row = sim.run().row
    row.update(sim.class_figures())
    row["family"] = fam.name
    return row


def capacity(
    fam: Family, seed: int, policies: Sequence[str], mode: str, duration: float, warmup: float, log: Any
) -> dict[str, Any]:
    """Fleet capacity for one family (req/s) and how it was found."""
    # Served rate under overload first: it also scales the knee ladder.
    over = 40.0
    served = {}
    for pol in policies:
        r = run_once(fam, pol, over, seed, duration, warmup)
        served[pol] = r["req_per_s"]
        log(f"    served at {over:g} req/s offered, {pol}: {served[pol]:.2f} req/s")
    top = max(served.values())
    if mode == "served":
        return {"mode": mode, "capacity": top, "served": served}
    base = min((run_once(fam, pol, 0.1 * top, seed, duration, warmup)["ttft_p90"] or 0.0) for pol in policies)
    ladder = [round(top * f, 3) for f in (0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35)]
    knees: dict[str, float] = {}
    curves: dict[str, list[tuple[float, float | None]]] = {}
    for pol in policies:
        pts: list[tuple[float, float | None]] = []
        for q in ladder:
            p90 = run_once(fam, pol, q, seed, duration, warmup)["ttft_p90"]
            pts.append((q, p90))
            if p90 is None or p90 > KNEE_FACTOR * base:
                break  # past the knee: higher loads cannot count
        curves[pol] = pts
        knees[pol] = find_knee(pts, base)
        log(f"    knee {pol}: {knees[pol]:.2f} req/s (unloaded p90 {base:.3f} s)")
    return {
        "mode": mode,
        "capacity": max(knees.values()) or ladder[0],
        "unloaded_p90_s": base,
        "knee": knees,
        "curves": curves,
        "served": served,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--live" in argv:  # the same family over real HTTP with the real peer routers
        from kvgate.bench import live_multiturn

        return live_multiturn.main([a for a in argv if a != "--live"])
    p = ArgumentParser(prog="kvgate bench multiturn", description=__doc__.split("\n\n")[0])
    p.add_argument("--live", action="store_true", help="run live (see kvgate.bench.live_multiturn)")
    p.add_argument("--set", choices=["tuning", "validation", "both"], default="both")
    p.add_argument("--policies", type=fleet_policies, default=",".join(DEFAULT_POLICIES))
    p.add_argument("--capacity", choices=["knee", "served"], default="knee")
    p.add_argument("--load", type=positive_number, default=0.8, help="fraction of capacity to measure at")
    p.add_argument("--duration", type=positive_number, default=120.0, help="measured virtual seconds per run")
    p.add_argument("--warmup", type=nonneg_number, default=30.0)
    p.add_argument("--probe-policies", type=fleet_policies, default="kvgate,sglang-cache-aware")
    p.add_argument("--qps", type=positive_number, help="skip the capacity search: measure at this req/s")
    p.add_argument(
        "--capacities",
        type=family_capacities,
        help="skip the capacity search with known capacities per family, e.g. a=11.77,b=10.96,c=8.74",
    )
    add_out(p, "multiturn", "fleet-multiturn.json/.md")
    args = p.parse_args(argv)
    policies, probe = args.policies, args.probe_policies
    sets = {"tuning": TUNING_SET, "validation": VALIDATION_SET}
    chosen = list(sets) if args.set == "both" else [args.set]
    wall0 = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    caps: dict[str, dict[str, Any]] = {}
    for fam_name, val in (args.capacities or {}).items():
        caps[fam_name] = {"mode": "given", "capacity": val}
    rows: list[dict[str, Any]] = []
    for set_name in chosen:
        for fam_name, seed in sets[set_name]:
            fam = FAMILIES[fam_name]
            if args.qps is not None:
                qps = args.qps
            else:
                if fam_name not in caps:  # capacity per family, from its set's first seed
                    log(f"family {fam_name}: capacity ({args.capacity}) with seed {seed}")
                    caps[fam_name] = capacity(
                        fam, seed, probe, args.capacity, args.duration, args.warmup, log
                    )
                qps = round(args.load * caps[fam_name]["capacity"], 3)
            for pol in policies:
                r = run_once(fam, pol, qps, seed, args.duration, args.warmup)
                r["set"] = set_name
                rows.append(r)
                log(
                    f"  {set_name} {fam_name}/{seed} {pol:>18} @ {qps:.2f} req/s: "
                    f"p50 {report._fmt(r['ttft_p50'], digits=3)} s, "
                    f"p90 {report._fmt(r['ttft_p90'], digits=3)} s, "
                    f"hit {report._fmt(r['prefix_hit_rate'], digits=3)}, "
                    f"session moves {r['session_moves']}/{r['session_turns']}"
                )
    # Ratios to sglang-cache-aware, per run and geometric mean per set.
    summary: dict[str, dict[str, Any]] = {}
    for set_name in chosen:
        for pol in policies:
            ratios90: list[float] = []
            ratios50: list[float] = []
            for r in rows:
                if r["set"] != set_name or r["policy"] != pol:
                    continue
                ref = next(
                    (x for x in rows if x["set"] == set_name and x["policy"] == "sglang-cache-aware"
                     and x["family"] == r["family"] and x["seed"] == r["seed"]), None)  # fmt: skip
                if ref is None:
                    continue
                for key, acc in (("ttft_p90", ratios90), ("ttft_p50", ratios50)):
                    v = _ratio(r[key], ref[key])
                    if v:
                        acc.append(v)
            summary.setdefault(set_name, {})[pol] = {
                "p90_vs_sglang_geomean": statistics.geometric_mean(ratios90) if ratios90 else None,
                "p50_vs_sglang_geomean": statistics.geometric_mean(ratios50) if ratios50 else None,
                "hit_rate_mean": statistics.fmean(
                    r["prefix_hit_rate"] or 0.0 for r in rows if r["set"] == set_name and r["policy"] == pol
                ),
            }
    wall = time.perf_counter() - wall0
    payload = {
        "benchmark": "multiturn",
        "load_fraction": args.load,
        "capacity": caps,
        "duration_virtual_s": args.duration,
        "warmup_virtual_s": args.warmup,
        "summary": summary,
        "rows": rows,
        "wall_s": wall,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
    base = args.out / "fleet-multiturn"
    report.write_json(base.with_suffix(".json"), payload)
    table = report.markdown_table(
        rows, [("set", "set"), ("family", "family"), ("seed", "seed"), ("policy", "policy"), ("QPS", "qps")]
    )
    lines = [
        "| set | policy | p90 TTFT vs sglang (geomean) | p50 vs sglang | mean hit rate |",
        "|---|---|---|---|---|",
    ]
    for set_name, by_pol in summary.items():
        for pol, s in by_pol.items():
            f = report._fmt
            lines.append(
                f"| {set_name} | {pol} | {f(s['p90_vs_sglang_geomean'])} | {f(s['p50_vs_sglang_geomean'])} "
                f"| {f(s['hit_rate_mean'], digits=3)} |"
            )
    per_class = [
        "| set | family | seed | policy | session TTFT p90 s | session hit | session moves / turns "
        "| burst TTFT p90 s | burst hit | one-off TTFT p90 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f3 = report._fmt
    for r in rows:
        per_class.append(
            f"| {r['set']} | {r['family']} | {r['seed']} | {r['policy']} "
            f"| {f3(r.get('session_ttft_p90'), digits=3)} "
            f"| {f3(r.get('session_hit'), digits=3)} | {r['session_moves']} / {r['session_turns']} "
            f"| {f3(r.get('burst_ttft_p90'), digits=3)} | {f3(r.get('burst_hit'), digits=3)} "
            f"| {f3(r.get('oneoff_ttft_p90'), digits=3)} |"
        )
    cap_lines = [f"- family {k}: {v['mode']} capacity {v['capacity']:.2f} req/s" for k, v in caps.items()]
    base.with_suffix(".md").write_text(
        "# Mixed multi-turn / burst / decode-heavy family (fleet simulator)\n\n"
        f"Load: {args.load:g} x capacity. Virtual seconds per run: {args.duration:g} "
        f"(+{args.warmup:g} warm-up). "
        f"Wall time: {wall:.0f} s.\n\n"
        + "\n".join(cap_lines)
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + table
        + "\n\nPer class:\n\n"
        + "\n".join(per_class)
        + "\n"
    )
    print("\n".join(cap_lines))
    print("\n".join(lines))
    print(table)
    wrote(base.with_suffix(".json"), base.with_suffix(".md"))
    return 0
