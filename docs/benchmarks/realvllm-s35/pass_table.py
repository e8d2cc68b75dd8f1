"""Per-pass rows (run order) from vs_sglang.py JSONs: the §4.20 table's columns, with section 4.24's
tieToEmptier arm (`kvgate@base` on a tree whose only change is that default: tie-tree.diff)."""

import json
import sys

short = {
    "direct, to server 0": "direct",
    "kvgate (default, --kv-events auto)": "kvgate",
    "kvgate (default, --kv-events auto), base tree": "kvgate, tieToEmptier on",
    "sglang-router cache_aware": "sglang-router",
}
key = {
    "direct": "direct, to server 0",
    "kvgate": "kvgate (default, --kv-events auto)",
    "kvgate@base": "kvgate (default, --kv-events auto), base tree",
    "sglang": "sglang-router cache_aware",
}
print(
    "| seed, pass | router | load | hit rate | mean TTFT (ms) | p90 (ms) | vLLM's own TTFT (ms) | "
    "router CPU / vLLM API CPU (s) |"
)
print("|---|---|---|---|---|---|---|---|")
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
                f"{p['router_cpu_s']:.2f} / {p['api_cpu_s']:.2f} |"
            )
