"""How much a mixed-family run's p90 TTFT moves when one early pick is forced elsewhere: the same run
replayed with one pick moved.

For each seed the run is played once as is and ``N`` more times, the k-th of them (k = 1..N) with the
k-th session's first turn sent to the next replica over from the policy's pick (the rest of the run the
policy's own picks, the arrivals the same). A policy whose p90 swings over these near-identical runs is
on a threshold (family c's p90 sits where the cold bursts' share of requests crosses 10%), and one run
tells little about it. Prints per seed the plain p90 and the perturbed ones (ms), and per policy the
geometric mean over seeds of the plain p90 and of each seed's median over its N + 1 runs (the
perturbation-averaged p90), both as ratios to sglang-cache-aware's model's same figures (sglang's model
is run the same way).

The moved pick is one the policy's own rule would not make: a forced off-policy pick (on c / 105 at
6.992 req/s, k = 1-3, none of the moved picks is a tie, for sglang's model or kvgate; review s14-mt).
So this measures a policy's sensitivity to one such pick, not the luck of a tie-break it could draw.

Where the pick is moved (``LUCK_MOVE``):
- ``after`` (the default; session 13's figures): the request is sent elsewhere after the picker chose
  and recorded its choice, so the picker's own state (sglang's tree, kvgate's prefix index) still says
  it went to the first replica: the move is a physical change the picker never sees.
- ``picker``: the picker's choice itself is moved, before its post-pick hooks (and, for sglang's
  model, before its tree records it): the picker's state records where the request went.

    PYTHONPATH=src:scripts python scripts/luck_band.py FAMILY QPS FIRST_SEED LAST_SEED N POLICY...
    [LUCK_MOVE=after|picker]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import force_pick, perturbation_table

from kvgate.bench.mixed import FAMILIES, Family
from kvgate.bench.multiturn import MixedFleetSim, mixed_sim

MOVES = ("after", "picker")


def moved_sim(
    fam: Family,
    policy: str,
    qps: float,
    seed: int,
    k: int,
    move: str = "after",
    duration: float = 120.0,
    warmup: float = 30.0,
) -> MixedFleetSim:
    """The run, ready to ``run()``, with the k-th session's first turn moved one replica over (k 0: as
    is); ``move`` says where (``MOVES``, the module's docstring). Wraps ``sim._arrive``, and either
    ``sim.director.pick`` (``after``) or the profile's picker plugin (``picker``)."""
    if move not in MOVES:
        raise ValueError(f"move {move!r}: one of {', '.join(MOVES)}")
    sim = mixed_sim(fam, policy, qps, seed, duration, warmup)
    eps = sim.endpoints
    seen: set[str] = set()
    cur: list[Any] = [None]
    arrive = sim._arrive

    def note(spec: Any) -> None:
        cur[0] = spec
        arrive(spec)

    def this_one() -> bool:
        spec = cur[0]
        if k and spec.session and spec.session not in seen:
            seen.add(spec.session)
            return len(seen) == k
        return False

    def over(ep: Any) -> Any:
        return eps[(eps.index(ep) + 1) % len(eps)]

    sim._arrive = note  # type: ignore[method-assign]
    if move == "after":
        force_pick(sim, lambda req, res: over(res.primary) if this_one() else None)
        return sim
    profiles = list(sim.director.profiles.values())
    if len(profiles) != 1 or profiles[0].picker is None:
        raise ValueError(f"{policy}: LUCK_MOVE=picker needs one profile with a picker")
    picker = profiles[0].picker
    choose: Callable[..., list[Any]] = picker.pick
    tree = getattr(picker, "tree", None)  # sglang-cache-aware-picker records its pick in its tree
    by_addr = {ep.address: ep for ep in eps}

    def forced_in(cycle: Any, endpoints: Sequence[Any], scores: Sequence[float]) -> list[Any]:
        if not this_one():
            return choose(cycle, endpoints, scores)
        if tree is None:
            return [over(choose(cycle, endpoints, scores)[0])]
        insert = tree.insert
        tree.insert = lambda text, tenant, now: insert(text, over(by_addr[tenant]).address, now)
        try:
            return [over(choose(cycle, endpoints, scores)[0])]
        finally:
            tree.insert = insert

    picker.pick = forced_in
    return sim


def moved_run(fam: Family, policy: str, qps: float, seed: int, k: int, move: str = "after") -> float:
    """The run's p90 (s) with the k-th session's first turn moved one replica over (k 0: as is)."""
    return float(moved_sim(fam, policy, qps, seed, k, move).run().row["ttft_p90"])


def main() -> None:
    usage_or_exit(__doc__, 6)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    n = int(sys.argv[5])
    move = os.environ.get("LUCK_MOVE", "after")
    if move not in MOVES:
        print(f"LUCK_MOVE={move!r}: one of {', '.join(MOVES)}\n{__doc__}", file=sys.stderr)
        sys.exit(2)
    policies = ["sglang-cache-aware", *(p for p in sys.argv[6:] if p != "sglang-cache-aware")]
    perturbation_table(
        fam, qps, seeds, n, policies,
        lambda pol, seed, k: moved_run(fam, pol, qps, seed, k, move),
        "moved", head=f"moves: {move}", over_1s=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
