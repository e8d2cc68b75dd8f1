"""The vLLM API servers' and the router's CPU per pass, split into the requests' windows and between them.

Per pass of every router (vs_sglang.py JSONs): ``api_cpu_s`` (both API server processes, the whole
pass) against the sum of the requests' ``api_run_ms`` (their CPU from each request's send to its last
chunk), the rest being what they ran between requests (this client's counter reads, the same for every
router, and whatever the router asks between requests: kvgate's /metrics scrapes); the same for the
router (``router_cpu_s``, ``router_run_ms``). With ``router_scrapes`` (recorded since session 34): the
router's GETs of /metrics per server. Then per router the mean over its passes, and kvgate's extra
between-requests API CPU over the no-router baseline's per scrape.

    python docs/benchmarks/realvllm-s34/cpu_split.py docs/benchmarks/realvllm-s33/s4[89]-session33.json
(from the repository root, or any folder: only the JSONs are read)."""

import json
import statistics
import sys

per: dict[str, list[tuple[float, float, float, float, int]]] = {}
for f in sys.argv[1:]:
    with open(f) as fh:
        d = json.load(fh)
    for name, passes in d["passes"].items():
        for i, p in enumerate(passes):
            recs = p["records"]
            api_in = sum(r["api_run_ms"] for r in recs) / 1000
            router_in = sum(r["router_run_ms"] for r in recs) / 1000
            scrapes = sum(p.get("router_scrapes", [])) if "router_scrapes" in p else -1
            per.setdefault(name, []).append((p["api_cpu_s"], api_in, p["router_cpu_s"], router_in, scrapes))
            print(f"{f.rsplit('/', 1)[-1]:22s} {name[:44]:44s} pass {i}: API {p['api_cpu_s']:.2f} s = "
                  f"{api_in:.2f} in requests + {p['api_cpu_s'] - api_in:.2f} between; router "
                  f"{p['router_cpu_s']:.2f} = {router_in:.2f} + {p['router_cpu_s'] - router_in:.2f}"
                  + (f"; router GET /metrics {p['router_scrapes']}" if scrapes >= 0 else ""))  # fmt: skip
print("mean over passes (s): API in requests / between, router in requests / between, router GETs")
means = {}
for name, rows in per.items():
    m = [statistics.fmean(r[k] for r in rows) for k in range(5)]
    means[name] = m
    print(f"  {name[:44]:44s} {m[1]:.3f} / {m[0] - m[1]:.3f}, {m[3]:.3f} / {m[2] - m[3]:.3f}"
          + (f", {m[4]:.0f}" if m[4] >= 0 else ""))  # fmt: skip
base = next((m for n, m in means.items() if n.startswith("direct")), None)
for name, m in means.items():
    if name.startswith("kvgate") and base is not None and m[4] > 0:
        extra = (m[0] - m[1]) - (base[0] - base[1])
        print(f"{name}: between-requests API CPU over the no-router pass {1000 * extra:.0f} ms a pass, "
              f"{1000 * extra / m[4]:.2f} ms per router GET of /metrics")  # fmt: skip
