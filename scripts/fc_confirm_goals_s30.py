"""#15's three goals per cell for session 30's confirmations (fc30): the runs of `scripts/fc_confirm_s30.sh`
(`OUT/base/` as shipped, `OUT/pack/` with `flowControl.packCertainMisses`) or of `fc_confirm_s30b.sh`
(`--variant alone`: `OUT/alone/` with `flowControl.prefillAlonePick`), each read by session 28's
rule (`fc_confirm_goals_s28.goals`: unanswered and shed requests are misses; goal 3 = all-request
attainment above the same run's reference, shed rate at most 0.5 points above its). Prints one markdown
table per TTL and the pre-registered decision: the key is confirmed when, at each TTL, goal 1 and goal 2
hold in every cell with it and its goal-3 count is at least the shipped arm's.

    python scripts/fc_confirm_goals_s30.py --dir OUT --seeds 88,89,90 [--variant alone]"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from fc_confirm_goals_s28 import ARM, goals

KEYS = {"pack": "packCertainMisses", "alone": "prefillAlonePick"}


def head(key: str) -> str:
    return (
        f"| cell | shipped: quiet x calm | all SLO | shed | goals | {key}: quiet x calm | all SLO "
        "| shed | critical SLO | goals | reference all SLO | reference shed |"
    )


def _cell(path: pathlib.Path) -> tuple[dict, dict] | None:
    if not path.exists():
        return None
    runs = json.loads(path.read_text())["runs"]
    return runs[f"{ARM}/flood"], runs["reference/flood"]


def _g(got: tuple[bool, bool, bool]) -> str:
    return " ".join("y" if g else "n" for g in got)


def _r(k: dict) -> str:
    ratio = k["quiet_p90_vs_calm"]
    return "-" if ratio is None else format(ratio, ".3f")


def read(root: pathlib.Path, seeds: list[int], variant: str = "pack") -> bool:
    ok, key = True, KEYS[variant]
    for ttl in ("1000", "30"):
        print(f"\n`--ttl {ttl}` (goals 1 2 3, y = met):\n")
        print(head(key))
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        met = {"base": [0, 0, 0], "pack": [0, 0, 0]}
        cells = 0
        for shape in ("4x128", "2x16"):
            for seed in seeds:
                name = f"ttl{ttl}_{shape}_s{seed}.json"
                b, p = _cell(root / "base" / name), _cell(root / variant / name)
                label = f"{shape.replace('x', ' x ')}, seed {seed}"
                if b is None or p is None:
                    print(f"| {label} | (not run) |")
                    ok = False
                    continue
                cells += 1
                gb, gp = goals(*b), goals(*p)
                for i in range(3):
                    met["base"][i] += gb[i]
                    met["pack"][i] += gp[i]
                (kb, r), (kp, _r2) = b, p
                shed_b, shed_p = (
                    f"{kb['shed']} ({kb['shed_rate']:.2%})",
                    f"{kp['shed']} ({kp['shed_rate']:.2%})",
                )
                print(
                    f"| {label} | {_r(kb)} | {kb['slo_attainment']:.4f} | {shed_b} "
                    f"| {_g(gb)} | {_r(kp)} | {kp['slo_attainment']:.4f} | {shed_p} "
                    f"| {kp['bands']['critical (10)']['slo_attainment']:.3f} | {_g(gp)} "
                    f"| {r['slo_attainment']:.4f} | {r['shed']} |"
                )
        mb, mp = met["base"], met["pack"]
        print(f"\ncounts at {ttl} of {cells}: shipped goal 1 {mb[0]}, goal 2 {mb[1]}, goal 3 {mb[2]}; "
              f"{key} goal 1 {mp[0]}, goal 2 {mp[1]}, goal 3 {mp[2]}")  # fmt: skip
        ok = ok and mp[0] == cells and mp[1] == cells and mp[2] >= mb[2]
    print(f"\ndecision (pre-registered): {key} {'CONFIRMED' if ok else 'NOT confirmed'}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--seeds", default="88,89,90")
    p.add_argument("--variant", choices=sorted(KEYS), default="pack")
    args = p.parse_args()
    read(args.dir, [int(s) for s in args.seeds.split(",")], args.variant)


if __name__ == "__main__":
    main()
