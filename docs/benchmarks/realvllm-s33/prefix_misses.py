"""Which requests missed a prefix their router's pick could have hit (vs_sglang.py JSONs).

Per pass: each request's tenant (regenerated from the run's seed with the script's own workload()),
the served server, hit tokens. A repeat of a tenant is a 'hit' when hit_tokens >= half the prompt (the
400-word system prefix is ~93% of it). Misses of repeats are split by where the tenant was served
before in the pass: 'moved' = sent to a server that never served the tenant (another did), 'evicted' =
sent to a server that served it (the cache dropped it). Firsts are cold by construction."""

import json
import sys

sys.path.insert(0, "scripts/realvllm")  # run from the repository root
from vs_sglang import workload


def _mean(xs: list[float]) -> str:
    return f"{sum(xs) / len(xs):.1f}" if xs else "-"


for f in sys.argv[1:]:
    with open(f) as fh:
        d = json.load(fh)
    a = d["args"]
    prompts = workload(a["tenants"], a["per_tenant"], a["prefix_words"], a["seed"])
    systems = {}
    tenant = [systems.setdefault(p.split("\nUser ", 1)[0], len(systems)) for p in prompts]
    for name, passes in d["passes"].items():
        for i, p in enumerate(passes):
            seen: dict[int, set] = {}
            c = {"first": 0, "hit": 0, "moved": 0, "evicted": 0, "first_hit": 0}
            moved_ms, evicted_ms, hit_ms = [], [], []
            for j, r in enumerate(p["records"]):
                t, s = tenant[j], r["server"]
                ttft = 1000 * (r["c_first"] - r["send"])
                hit = r["hit_tokens"] >= 0.5 * r["prompt_tokens"]
                if t not in seen:
                    c["first"] += 1
                    c["first_hit"] += hit
                elif hit:
                    c["hit"] += 1
                    hit_ms.append(ttft)
                elif s in seen[t]:
                    c["evicted"] += 1
                    evicted_ms.append(ttft)
                else:
                    c["moved"] += 1
                    moved_ms.append(ttft)
                seen.setdefault(t, set()).add(s)
            router = name.split(" (")[0].replace(" cache_aware", "")
            print(
                f"| {a['seed']}, {i} | {router} | {c['first']} | "
                f"{c['hit']} ({_mean(hit_ms)}) | {c['moved']} ({_mean(moved_ms)}) | "
                f"{c['evicted']} ({_mean(evicted_ms)}) | {sum(len(v) == 2 for v in seen.values())} |"
            )
