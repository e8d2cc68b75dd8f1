"""#15's three goals per cell from a confirmation's runs, session 26's reading with fc28's rule for requests
unanswered when the run ends (in the runs' JSON since fc28: a miss in every attainment figure, later than
every answer in the TTFT percentiles, `unanswered` beside the shed count). The runs: one JSON per cell,
`ttl{1000,30}_{4x128,2x16}_s{SEED}.json`, from the command in docs/benchmarks/flowcontrol.md "Session 28".
Prints the markdown tables: `python scripts/fc_confirm_goals_s28.py --dir DIR --seeds 85,86,87`."""

import argparse
import json
import math
import pathlib

ARM = "kvgate-reserve-feasible"
HEAD = (
    "| cell | quiet p90 x calm | critical SLO | all SLO (shed, unanswered = miss) | shed (429 / 503) "
    "| unanswered | batch SLO | reference all SLO | reference shed | reference unanswered "
    "| goal 1 | goal 2 | goal 3 |"
)


def _yes(b: bool) -> str:
    return "met" if b else "no"


def _unanswered(run: dict) -> int:
    # (a run from before fc28 has no 'unanswered': its groups' 'unfinished', the same requests)
    if "unanswered" in run:
        return int(run["unanswered"])
    return sum(int(t["unfinished"]) for t in run["tenants"].values())


def goals(k: dict, r: dict) -> tuple[bool, bool, bool]:
    ratio = k["quiet_p90_vs_calm"]
    return (
        ratio is not None and math.isfinite(ratio) and ratio <= 1.5,
        k["bands"]["critical (10)"]["slo_attainment"] >= 0.99,
        k["slo_attainment"] > r["slo_attainment"] and k["shed_rate"] <= r["shed_rate"] + 0.005,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--seeds", default="85,86,87")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for ttl in ("1000", "30"):
        print(f"\n`--ttl {ttl}`:\n")
        print(HEAD)
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        met = [0, 0, 0]
        cells = 0
        for shape in ("4x128", "2x16"):
            for seed in seeds:
                path = args.dir / f"ttl{ttl}_{shape}_s{seed}.json"
                if not path.exists():
                    print(f"| {shape.replace('x', ' x ')}, seed {seed} | (not run) |")
                    continue
                runs = json.loads(path.read_text())["runs"]
                k, r = runs[f"{ARM}/flood"], runs["reference/flood"]
                got = goals(k, r)
                cells += 1
                for i, g in enumerate(got):
                    met[i] += g
                ratio = k["quiet_p90_vs_calm"]
                print(
                    f"| {shape.replace('x', ' x ')}, seed {seed} | "
                    f"{'-' if ratio is None else format(ratio, '.3f')} "
                    f"| {k['bands']['critical (10)']['slo_attainment']:.3f} "
                    f"| {k['slo_attainment']:.4f} | {k['shed']} ({k['shed_429']} / {k['shed_503']}; "
                    f"{k['shed_rate']:.2%}) | {_unanswered(k)} "
                    f"| {k['bands']['batch (-1)']['slo_attainment']:.3f} "
                    f"| {r['slo_attainment']:.4f} | {r['shed']} | {_unanswered(r)} "
                    f"| {' | '.join(_yes(g) for g in got)} |"
                )
        print(f"\ncounts at {ttl}: goal 1 {met[0]}, goal 2 {met[1]}, goal 3 {met[2]} of {cells}")


if __name__ == "__main__":
    main()
