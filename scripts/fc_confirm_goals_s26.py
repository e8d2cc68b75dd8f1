"""#15's three goals per cell from the session-26 confirmation runs (fc26's reading; the runs' JSON in
docs/benchmarks/flowcontrol-confirm-s26/, the command in docs/benchmarks/flowcontrol.md "Session 26,
confirmation"). Prints the markdown tables: `python scripts/fc_confirm_goals_s26.py`."""

import json
import pathlib

BASE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "flowcontrol-confirm-s26"
ARM = "kvgate-reserve-feasible"
HEAD = (
    "| cell | quiet p90 x calm | critical SLO | all SLO (shed = miss) | shed (429 / 503) | batch SLO "
    "| reference all SLO | reference shed | goal 1 | goal 2 | goal 3 |"
)


def _yes(b: bool) -> str:
    return "met" if b else "no"


def main() -> None:
    for ttl in ("1000", "30"):
        print(f"\n`--ttl {ttl}`:\n")
        print(HEAD)
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        met = [0, 0, 0]
        for shape in ("4x128", "2x16"):
            for seed in (82, 83, 84):
                runs = json.loads((BASE / f"ttl{ttl}_{shape}_s{seed}.json").read_text())["runs"]
                k, r = runs[f"{ARM}/flood"], runs["reference/flood"]
                crit = k["bands"]["critical (10)"]["slo_attainment"]
                goals = (
                    k["quiet_p90_vs_calm"] is not None and k["quiet_p90_vs_calm"] <= 1.5,
                    crit >= 0.99,
                    k["slo_attainment"] > r["slo_attainment"] and k["shed_rate"] <= r["shed_rate"] + 0.005,
                )
                for i, g in enumerate(goals):
                    met[i] += g
                print(
                    f"| {shape.replace('x', ' x ')}, seed {seed} | {k['quiet_p90_vs_calm']:.3f} | {crit:.3f} "
                    f"| {k['slo_attainment']:.4f} | {k['shed']} ({k['shed_429']} / {k['shed_503']}; "
                    f"{k['shed_rate']:.2%}) | {k['bands']['batch (-1)']['slo_attainment']:.3f} "
                    f"| {r['slo_attainment']:.4f} | {r['shed']} | {' | '.join(_yes(g) for g in goals)} |"
                )
        print(f"\ncounts at {ttl}: goal 1 {met[0]}, goal 2 {met[1]}, goal 3 {met[2]} of 6")


if __name__ == "__main__":
    main()
