"""#15's three goals per cell for session 31's head-to-head (fc31): the runs of `scripts/fc_confirm_s31.sh`
(one JSON per cell, four arms in the same run: the reference, the shipped goal configuration, it with
`flowControl.packCertainMisses` (`+pack`) and with `flowControl.prefillAlonePick` (`+alone`)), each
read by session 28's rule (`fc_confirm_goals_s28.goals`: unanswered and shed requests are misses; goal 3
= all-request attainment above the same run's reference, shed rate at most 0.5 points above its).

The pre-registered decision (docs/benchmarks/flowcontrol.md "Session 31"): a key is eligible when, at
each TTL, goal 1 and goal 2 hold with it in every cell and its goal-3 count over all cells is at least
the shipped arm's; of the eligible keys the one with the higher goal-3 count wins, on a tie the higher
mean all-request attainment margin over the reference (over all cells), on a tie to 4 decimals
prefillAlonePick (it marks no request). No eligible key: no winner.

    python scripts/fc_confirm_goals_s31.py --dir OUT --seeds 94,95,96"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from fc_confirm_goals_s28 import ARM, goals

# (column name, arm in the run); the order is the tie's last word: prefillAlonePick first
KEYS = {"prefillAlonePick": f"{ARM}+alone", "packCertainMisses": f"{ARM}+pack"}
SHIPPED = "shipped"
ARMS = {SHIPPED: ARM, **KEYS}
TTLS = ("1000", "30")
SHAPES = ("4x128", "2x16")


def _ratio(k: dict) -> str:
    ratio = k["quiet_p90_vs_calm"]
    return "-" if ratio is None else format(ratio, ".3f")


def _g(got: tuple[bool, bool, bool]) -> str:
    return " ".join("y" if g else "n" for g in got)


def read(root: pathlib.Path, seeds: list[int]) -> str | None:
    """Print the tables and the decision; return the winning key's name (None: no winner)."""
    # per arm: goal counts per TTL, and the all-SLO margins over the reference
    met = {a: {t: [0, 0, 0] for t in TTLS} for a in ARMS}
    margin: dict[str, list[float]] = {a: [] for a in ARMS}
    cells = {t: 0 for t in TTLS}
    complete = True
    for ttl in TTLS:
        print(f"\n`--ttl {ttl}` (per arm: quiet p90 x calm; all SLO; shed; goals 1 2 3, y = met):\n")
        print("| cell | reference all SLO (shed) | " + " | ".join(ARMS) + " |")
        print("|---|---|" + "---|" * len(ARMS))
        for shape in SHAPES:
            for seed in seeds:
                label = f"{shape.replace('x', ' x ')}, seed {seed}"
                path = root / f"ttl{ttl}_{shape}_s{seed}.json"
                if not path.exists():
                    print(f"| {label} | (not run) |")
                    complete = False
                    continue
                runs = json.loads(path.read_text())["runs"]
                r = runs["reference/flood"]
                cells[ttl] += 1
                cols = []
                for name, arm in ARMS.items():
                    k = runs[f"{arm}/flood"]
                    got = goals(k, r)
                    for i in range(3):
                        met[name][ttl][i] += got[i]
                    margin[name].append(k["slo_attainment"] - r["slo_attainment"])
                    crit = k["bands"]["critical (10)"]["slo_attainment"]
                    cols.append(
                        f"{_ratio(k)}; {k['slo_attainment']:.4f}; {k['shed']}; crit {crit:.3f}; {_g(got)}"
                    )
                print(f"| {label} | {r['slo_attainment']:.4f} ({r['shed']}) | " + " | ".join(cols) + " |")
        print(f"\ncounts at {ttl} of {cells[ttl]} (goal 1, goal 2, goal 3): "
              + "; ".join(f"{n} {m[ttl][0]}, {m[ttl][1]}, {m[ttl][2]}" for n, m in met.items()))  # fmt: skip
    g3 = {n: sum(m[t][2] for t in TTLS) for n, m in met.items()}
    mean = {n: sum(v) / len(v) if v else float("nan") for n, v in margin.items()}
    print("\ngoal 3 over both TTLs: " + "; ".join(f"{n} {g3[n]}" for n in ARMS)
          + "; mean all-SLO margin over the reference: "
          + "; ".join(f"{n} {mean[n]:+.4f}" for n in ARMS))  # fmt: skip
    eligible = [
        n for n in KEYS
        if complete
        and all(met[n][t][0] == cells[t] and met[n][t][1] == cells[t] for t in TTLS)
        and g3[n] >= g3[SHIPPED]
    ]  # fmt: skip
    for n in KEYS:
        print(f"{n}: {'eligible' if n in eligible else 'NOT eligible'}")
    winner = None
    if eligible:
        # higher goal-3 count, then higher mean margin (to 4 decimals), then KEYS' order
        winner = max(eligible, key=lambda n: (g3[n], round(mean[n], 4), -list(KEYS).index(n)))
    print(f"\ndecision (pre-registered): {'winner ' + winner if winner else 'no winner: both stay opt-in'}"
          + ("" if complete else " (not every cell was run: no key is eligible)"))  # fmt: skip
    return winner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--seeds", default="94,95,96")
    args = p.parse_args()
    read(args.dir, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()
