"""Review s26-rev-fc26 F1's driver (docs/flowcontrol.md, "What happens to a request": the critical-burst
limit): fc26's `--critical-burst` case (the goal configuration + `--critical-slo 0.3 --critical-burst 40
--ttl 30`, 4 x 128) under aging-rule variants, `controller.aging_time` patched in this process only:

- `fc26`: the rule as shipped by fc26 (5da2e02d);
- `main`: halfway to the TTL in every band (6c4d40fa's);
- `oneslo_all`: one SLO past the deadline in every band;
- `quiet_oneslo`: fc26 + the quiet tenants' (not the flooder's) requests age one SLO past their deadline,
  an oracle for a bound keyed on a flow being within its fair share.

`NOBURST=1`: the default goal mix instead. The docs' figures were produced on 5da2e02d's src (fc26, before
fc26b's order and fixfc26b's per-band aging heap, which the `quiet_oneslo` patch does not update):

    PYTHONPATH=<5da2e02d checkout>/src nice -n 10 \
      python scripts/fc_burst_aging_variants.py VARIANT SEED OUTDIR [ARMS]
    python scripts/fc_burst_aging_variants.py --show OUTDIR...

`--show` prints each run's critical misses, the quiet tenants' p90 and attainment, batch, flooder and
all-request attainment (`quiet_late` in the JSON: quiet requests past 1 s, how many over 10 s)."""

import json
import math
import os
import sys
from typing import Any


def _show(dirs: list[str]) -> None:
    for p in dirs:
        with open(p + "/flowcontrol.json") as f:
            d = json.load(f)
        for k, r in d["runs"].items():
            if "/even" in k:
                continue
            c, t = r["critical_late"], r["tenants"]
            print(
                f"{p.split('/')[-1]:16} {k:30} crit missed {c['missed']}/{c['requests']} p90 "
                f"{c['missed_p90_ttft_s']} max {c['missed_max_ttft_s']} >10s {c['missed_over_10s']} "
                f"| quiet p90 {r['quiet']['p90_ttft_s']:.2f} att {r['quiet']['slo_attainment']:.3f} "
                f"| batch {t['batch']['slo_attainment']:.3f} | flood {t['t0']['slo_attainment']:.3f} "
                f"| all {r['slo_attainment']:.3f} shed {r['shed']}"
            )


def _run(var: str, seed: str, out: str, arms: str) -> None:
    from kvgate.bench import flowcontrol_bench as fb
    from kvgate.flowcontrol import controller as c

    orig = c.aging_time

    def halfway(deadline: float, expiry: float, slo: float = math.inf, priority: int = 0) -> float:
        return deadline + (expiry - deadline) / 2.0

    def one_slo_all(deadline: float, expiry: float, slo: float = math.inf, priority: int = 0) -> float:
        return deadline + min(slo, (expiry - deadline) / 2.0)

    variants = {"fc26": orig, "main": halfway, "oneslo_all": one_slo_all}
    if var == "quiet_oneslo":
        enq = c.FlowController.enqueue

        def enqueue(self: Any, req: Any, now: float, **kw: Any) -> Any:
            item = enq(self, req, now, **kw)
            if req.fairness_id in fb.QUIET:
                slo = item.slo_deadline - (req.arrival_time or now)
                item.ages_at = orig(item.slo_deadline, item.deadline, slo, 1)
            return item

        c.FlowController.enqueue = enqueue  # type: ignore[method-assign]
        var = "fc26"
    c.aging_time = variants[var]  # type: ignore[assignment]
    summarize = fb.summarize

    def with_quiet_late(run: Any, measured_from: float) -> Any:
        got = summarize(run, measured_from)
        q = [o for o in run.outcomes if o.start >= measured_from and o.tenant in fb.QUIET]
        late = sorted(o.ttft for o in q if o.ttft is not None and o.ttft > 1.0)
        got["quiet_late"] = {"n": len(q), "late": len(late), "over_10s": sum(1 for t in late if t > 10),
                             "late_p50": late[len(late) // 2] if late else None}  # fmt: skip
        return got

    fb.summarize = with_quiet_late
    burst = [] if os.environ.get("NOBURST") else ["--critical-slo", "0.3", "--critical-burst", "40"]
    fb.main(["--arms", arms, "--headroom", "0.75", "--headroom-on", "pending", "--ttft-target", "0.05",
             "--running-reserve", "--load", "0.9", "--seed", seed, "--ttl", "30", *burst,
             "--out", out])  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--show"]:
        _show(sys.argv[2:])
    else:
        _run(sys.argv[1], sys.argv[2], sys.argv[3],
             sys.argv[4] if len(sys.argv) > 4 else "kvgate-reserve-feasible")  # fmt: skip
