"""`kvgate bench workers`: ``--workers N`` in the fleet simulator, 1 vs N workers on the same run.

Each worker is a complete picker (its own ``Director``, prefix index and ``InFlight`` counts) over its
own ``Endpoint`` objects; all workers read the same scraped metrics. Every request goes to a worker
drawn at random (the kernel spreads connections over ``SO_REUSEPORT`` listeners). With ``shared`` the
workers' in-flight counts go through the real ``gateway.shared_inflight`` table (shared memory), synced
every ``SHARED_INFLIGHT_SYNC_S`` of virtual time as the gateway does; without it each worker balances
on its own share only. With ``gossip`` the workers' prefix indexes converge through the gateway's
own ``gateway.prefix_gossip.PrefixGossip`` (same recording, batching, encoding and applying): each
worker flushes every ``PREFIX_GOSSIP_S`` of virtual time and the datagrams reach the other workers
``GOSSIP_DELAY_S`` later (a modelled local-socket hop plus an event-loop turn). Reported: hit rate
and TTFT for each mode. Two bounds the gateway does not reach: ``shared-index`` (one prefix index for
every worker) and ``gossip-shared-wait`` (gossip, and the ``kvgate-cost-scorer``'s list of requests
waiting on a prefix, its ``sharedCopy`` input, shared by the workers at once instead of per worker).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import shlex
import sys
from typing import Any

from kvgate.bench import report
from kvgate.bench.argtypes import family_capacities
from kvgate.bench.fleetsim import FleetConfig
from kvgate.bench.mixed import FAMILIES, TUNING_SET, VALIDATION_SET, mixed_workload
from kvgate.bench.multiturn import MixedFleetSim
from kvgate.bench.outdir import add_out, wrote
from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.entry import ArgumentParser, comma_list, nonneg_number, positive_int, positive_number
from kvgate.gateway.prefix_gossip import PREFIX_GOSSIP_S, PrefixGossip
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import SHARED_INFLIGHT_SYNC_S
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest, PickResult

GOSSIP_DELAY_S = 0.002  # modelled: datagram hop + the receiving worker's event loop getting to it


class WorkerDirectors:
    """Looks like one Director to the fleet simulator; each request is handled by one of ``inner``."""

    def __init__(self, inner: list[Any], endpoints: list[list[Endpoint]], seed: int) -> None:
        self.inner = inner
        self.handle = inner[0].handle
        self._eps = endpoints  # per worker, aligned with endpoints[0] (the simulator's own)
        self._pos = {ep.address: i for i, ep in enumerate(endpoints[0])}
        self._rng = random.Random(seed ^ 0x3A11)
        self._owner: dict[str, int] = {}

    def _mine(self, req: InferenceRequest, ep: Endpoint) -> tuple[Any, Endpoint]:
        w = self._owner.get(req.request_id, 0)
        return self.inner[w], self._eps[w][self._pos[ep.address]]

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        w = self._rng.randrange(len(self.inner))
        self._owner[req.request_id] = w
        res = self.inner[w].pick(req, explain)
        # Back to the simulator's own endpoint objects (it indexes replicas by them).
        res.endpoints = [self._eps[0][self._pos[ep.address]] for ep in res.endpoints]
        return res

    def on_dispatched(self, req: InferenceRequest, ep: Endpoint) -> None:
        d, mine = self._mine(req, ep)
        d.on_dispatched(req, mine)

    def on_first_token(self, req: InferenceRequest, ep: Endpoint) -> None:
        d, mine = self._mine(req, ep)
        d.on_first_token(req, mine)

    def on_usage(self, req: InferenceRequest, ep: Endpoint, usage: Any) -> None:
        d, mine = self._mine(req, ep)
        d.on_usage(req, mine, usage)

    def on_finished(self, req: InferenceRequest, ep: Endpoint, usage: Any, ok: bool) -> None:
        d, mine = self._mine(req, ep)
        d.on_finished(req, mine, usage, ok)
        self._owner.pop(req.request_id, None)


def _positive_seconds(text: str) -> float:
    """``--gossip-interval``: 0 or less would hang virtual time (the flush rescheduled at one instant);
    infinity would never flush (the run silently measures no gossip at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds and finite, got {text}")
    return value


def run_workers(
    family: str,
    seed: int,
    qps: float,
    workers: int,
    shared: bool,
    duration: float,
    warmup: float,
    shared_index: bool = False,
    gossip: bool = False,
    shared_wait: bool = False,
    gossip_s: float = PREFIX_GOSSIP_S,
) -> dict[str, Any]:
    """One run. ``shared_index``: every worker uses worker 0's approximate prefix index (not something
    the gateway does today: the upper bound of prefix state converging between workers).
    ``shared_wait``: every worker's cost scorer uses worker 0's waiting-on-prefix list (a bound too).
    ``gossip_s``: how often each worker flushes its gossip (the gateway's ``PREFIX_GOSSIP_S``)."""
    if not 0 < gossip_s < math.inf:  # 0: the flush rescheduled at one virtual instant forever; inf: never
        raise ValueError(f"gossip_s must be > 0 and finite, got {gossip_s}")
    fam = FAMILIES[family]
    specs = list(mixed_workload(fam, qps=qps, horizon=warmup + duration, seed=seed))
    cfg = FleetConfig(replicas=fam.fleet(), policy="kvgate", qps=qps, duration=duration, warmup=warmup,
                      max_requests=len(specs) + 1, drain=120.0, seed=seed)  # fmt: skip
    sim = MixedFleetSim(cfg, specs)
    views: list[SharedInFlight] = []
    owner = None
    if workers > 1:
        main_eps = sim.endpoints
        # Same scraped metrics object for every worker (one truth), own in-flight counts each.
        eps = [main_eps] + [
            [Endpoint(address=e.address, metrics=e.metrics) for e in main_eps] for _ in range(workers - 1)
        ]

        inner = [sim.director] + [
            build_director(
                policy_config("kvgate"), EndpointStore(eps[w]), clock=sim.clock.time, seed=seed + w
            )
            for w in range(1, workers)
        ]
        sim.director = WorkerDirectors(inner, eps, seed)
        if shared_index:
            index = inner[0].handle.find(PrefixCacheScorer).index
            for d in inner[1:]:
                d.handle.find(PrefixCacheScorer).index = index
        if shared_wait:  # (the scorer's own maps, shared: the bound, no gateway mechanism behind it)
            first = inner[0].handle.find(KVGateCostScorer)
            for d in inner[1:]:
                other = d.handle.find(KVGateCostScorer)
                other._waiting, other._waiting_at = first._waiting, first._waiting_at
        if gossip:
            gossips: list[PrefixGossip] = []

            def sender(w: int) -> Any:
                def send(data: bytes) -> None:
                    for o, g in enumerate(gossips):
                        if o != w:
                            sim.clock.call_later(GOSSIP_DELAY_S, g.receive, data)

                return send

            gossips = [
                PrefixGossip([d.handle.find(PrefixCacheScorer).index], w, sender(w))
                for w, d in enumerate(inner)
            ]

            def flush() -> None:
                for g in gossips:
                    g.flush()
                if sim._live or sim.clock.now < warmup + duration:
                    sim.clock.call_later(gossip_s, flush)

            sim.clock.call_at(0.0, flush)
        if shared:
            owner = SharedInFlight.create(workers, multiprocessing.get_context("spawn").Lock(), slots=64)
            views = [
                SharedInFlight.attach(owner.name, owner.lock, workers, w, slots=64) for w in range(workers)
            ]

            def sync() -> None:
                for view, mine in zip(views, eps, strict=True):
                    view.sync(mine)
                if sim._live or sim.clock.now < warmup + duration:
                    sim.clock.call_later(SHARED_INFLIGHT_SYNC_S, sync)

            sim.clock.call_at(0.0, sync)
    try:
        row = sim.run().row
    finally:
        for v in views:
            v.close()
        if owner is not None:
            owner.close()
    row.update(sim.class_figures())
    row.update(
        {
            "family": family,
            "workers": workers,
            "shared_inflight": shared,
            "shared_index": shared_index,
            "gossip": gossip,
            "shared_wait": shared_wait,
            "gossip_s": gossip_s if gossip else None,
        }
    )
    return row


def _index_mode(r: dict[str, Any]) -> str:
    if r["workers"] == 1:
        return "-"
    if r["shared_index"]:
        return "shared (bound)"
    if not r.get("gossip"):
        return "per worker"
    mode = "per worker + gossip"
    if r.get("gossip_s") != PREFIX_GOSSIP_S:
        mode += f" every {r['gossip_s'] * 1000:g} ms"
    return mode + (", waiting list shared (bound)" if r.get("shared_wait") else "")


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    """Per set and mode: geomean p90 TTFT and mean hit rate over its runs, the p90 ratio to 1 worker."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        inflight = "shared" if r["shared_inflight"] else ("-" if r["workers"] == 1 else "per worker")
        groups.setdefault((r["set"], f"{r['workers']} / {inflight} / {_index_mode(r)}"), []).append(r)
    head = "| set | workers / in-flight / prefix index | runs | p90 TTFT geomean ms | vs 1 worker | hit |"
    out = [head, "|---|---|---|---|---|---|"]
    one: dict[str, float] = {}
    for (set_name, mode), rs in groups.items():
        p90s = [r["ttft_p90"] for r in rs if r.get("ttft_p90")]
        geo = math.exp(sum(math.log(v) for v in p90s) / len(p90s)) if len(p90s) == len(rs) and p90s else None
        if mode.startswith("1 /") and geo is not None:
            one[set_name] = geo
        ratio = f"{geo / one[set_name]:.3f}x" if geo is not None and set_name in one else "-"
        hits = [r["prefix_hit_rate"] for r in rs if r.get("prefix_hit_rate") is not None]
        hit = f"{sum(hits) / len(hits):.3f}" if hits else "-"
        out.append(f"| {set_name} | {mode} | {len(rs)} | {report._fmt(geo, 1000, 0)} | {ratio} | {hit} |")
    return out


MODES = ("1", "shared", "gossip", "own", "shared-index", "gossip-shared-wait")  # (main's all_modes)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="kvgate bench workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=["tuning", "validation", "both"], default="tuning")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument(
        "--capacities",
        type=family_capacities,
        default="a=11.77,b=10.96,c=8.74",
        help="knee capacity per family",
    )
    p.add_argument("--load", type=positive_number, default=0.8)
    p.add_argument(
        "--modes",
        type=comma_list(str, MODES),
        default="1,shared,gossip,own,shared-index",
        help="1 worker; N with shared in-flight; N with shared in-flight and prefix gossip (what the gateway "
        "does); N with per-worker in-flight; N sharing one prefix index (the upper bound of converging "
        "prefix state); gossip-shared-wait: gossip, and the cost scorer's waiting-on-prefix list shared at "
        "once (the upper bound of sharing it)",
    )
    p.add_argument(
        "--gossip-interval",
        type=_positive_seconds,
        default=PREFIX_GOSSIP_S,
        help=f"seconds between a worker's gossip flushes (the gateway's: {PREFIX_GOSSIP_S})",
    )
    p.add_argument("--duration", type=positive_number, default=120.0)
    p.add_argument("--warmup", type=nonneg_number, default=30.0)
    add_out(p, "workers", "fleet-workers.json/.md")
    args = p.parse_args(argv)
    caps = args.capacities
    runs = {"tuning": TUNING_SET, "validation": VALIDATION_SET}
    chosen = [*runs] if args.set == "both" else [args.set]
    if missing := sorted({fam for name in chosen for fam, _ in runs[name]} - set(caps)):
        p.error(f"argument --capacities: no capacity for family {', '.join(missing)} (of --set {args.set})")
    n = args.workers
    # mode -> (workers, shared in-flight, shared index, gossip, shared waiting list)
    all_modes = {"1": (1, False, False, False, False), "shared": (n, True, False, False, False),
                 "gossip": (n, True, False, True, False), "own": (n, False, False, False, False),
                 "shared-index": (n, True, True, False, False),
                 "gossip-shared-wait": (n, True, False, True, True)}  # fmt: skip
    modes = [all_modes[m] for m in args.modes]
    rows: list[dict[str, Any]] = []
    for name in chosen:
        for fam, seed in runs[name]:
            qps = round(args.load * caps[fam], 3)
            for w, shared, shared_index, gossip, shared_wait in modes:
                r = run_workers(fam, seed, qps, w, shared, args.duration, args.warmup, shared_index, gossip,
                                shared_wait, args.gossip_interval)  # fmt: skip
                r["set"] = name
                rows.append(r)
                print(
                    f"{name} {fam}/{seed} workers {w} {'shared' if shared else 'own'} in-flight"
                    f"{', shared index' if shared_index else ''}{', prefix gossip' if gossip else ''}"
                    f"{', shared waiting list' if shared_wait else ''}: "
                    f"p90 {report._fmt(r['ttft_p90'], digits=3)} s, "
                    f"hit {report._fmt(r['prefix_hit_rate'], digits=3)}",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        "| set | family | seed | workers | in-flight | prefix index | TTFT p50 ms | TTFT p90 ms | hit rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['family']} | {r['seed']} | {r['workers']} | "
            f"{'shared' if r['shared_inflight'] else ('-' if r['workers'] == 1 else 'per worker')} | "
            f"{_index_mode(r)} | "
            f"{report._fmt(r['ttft_p50'], 1000, 0)} | {report._fmt(r['ttft_p90'], 1000, 0)} | "
            f"{report._fmt(r['prefix_hit_rate'], digits=3)} |"
        )
    summary = summarize(rows)
    report.write_json(args.out / "fleet-workers.json", {"rows": rows, "load": args.load, "capacities": caps})
    # The command, the offered load and the per-set summary with the table: a reader can re-run it and
    # compare (qa36c F6: the file named neither, and the docs' "same p90" had gone stale unseen).
    given = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    load = ", ".join(f"{fam} {args.load * c:.3f} req/s" for fam, c in sorted(caps.items()))
    (args.out / "fleet-workers.md").write_text(
        f"# 1 vs {args.workers} gateway workers (fleet simulator, mixed multi-turn family)\n\n"
        f"`kvgate bench workers {given}`: {args.load:g} x the knee capacities ({load}), "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured (virtual).\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(summary)
        + "\n"
    )
    print("\n".join(lines))
    print("\n".join(summary))
    wrote(args.out / "fleet-workers.json", args.out / "fleet-workers.md")
    return 0
