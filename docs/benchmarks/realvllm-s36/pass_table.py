"""Per-pass rows (run order) from vs_sglang.py JSONs: realvllm-s35's table, with other work's CPU over the
pass (the machine's busy CPU less the run's own processes', recorded since session 36) and the machine's
busy CPU beside it."""

import json
import sys

short = {
    "kvgate (default, --kv-events auto)": "kvgate",
    "sglang-router cache_aware": "sglang-router",
}
key = {"kvgate": "kvgate (default, --kv-events auto)", "sglang": "sglang-router cache_aware"}
print(
    "| seed, pass | router | load | hit rate | mean TTFT (ms) | p90 (ms) | vLLM's own TTFT (ms) | "
    "router CPU / vLLM API CPU (s) | other work's CPU / machine busy (s) |"
)
print("|---|---|---|---|---|---|---|---|---|")
for f in sys.argv[1:]:
    with open(f) as fh:
        d = json.load(fh)
    seed = d["args"]["seed"]
    for i, order in enumerate(d["order"]):
        for r in order:
            p = d["passes"][key[r]][i]
            print(
                f"| {seed}, {i} | {short[key[r]]} | {p['load_start']:.1f}-{p['load_end']:.1f} | "
                f"{p['hit_rate']:.3f} | "
                f"{p['mean_ttft_ms']:.1f} | {p['p90_ttft_ms']:.1f} | {p['server_ttft_ms']:.1f} | "
                f"{p['router_cpu_s']:.2f} / {p['api_cpu_s']:.2f} | "
                f"{p['others_cpu_s']:.1f} / {p['machine_busy_s']:.1f} |"
            )
