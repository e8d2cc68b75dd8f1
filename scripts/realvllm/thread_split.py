"""Which of a router's threads work and wait for a core, per request, from ``vs_sglang.py --json`` runs that
recorded them (``threads``: per thread name, [ms on a CPU, ms runnable but waiting for one], from the
request's send to the end of its stream; a process's main thread is ``main``: kvgate's event loop).

Per pass (in the order run, with the load at its start and end): the mean TTFT, the time outside vLLM
(client TTFT - vLLM's own TTFT), the vLLM API server's and engine's wait, and the router's threads' run /
wait per request; then per router, the same over its passes. kvgate's ``ZMQbg/IO/0`` is libzmq's I/O
thread (the KV-event SUB socket's), absent with ``--kv-events off``; ``python`` is any unnamed thread.

    PYTHONPATH=src python scripts/realvllm/thread_split.py RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def per_request(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per thread name, [run ms, wait ms] per request (a name a request did not move counts 0 there)."""
    out: dict[str, list[float]] = {}
    for r in records:
        for name, (run, wait) in r.get("threads", {}).items():
            acc = out.setdefault(name, [0.0, 0.0])
            acc[0] += run / len(records)
            acc[1] += wait / len(records)
    return out


def row(records: list[dict[str, Any]]) -> dict[str, float]:
    def mean(f: Any) -> float:
        return statistics.fmean(f(r) for r in records)

    return {
        "ttft": mean(lambda r: 1000 * (r["c_first"] - r["send"])),
        "outside": mean(lambda r: 1000 * (r["c_first"] - r["send"]) - r.get("v_ttft_ms", 0.0)),
        "api_wait": mean(lambda r: r.get("api_wait_ms", 0.0)),
        "router_run": mean(lambda r: r.get("router_run_ms", 0.0)),
        "router_wait": mean(lambda r: r.get("router_wait_ms", 0.0)),
    }


def fmt(name: str, rs: list[dict[str, Any]], head: str) -> str:
    r = row(rs)
    threads = sorted(per_request(rs).items(), key=lambda kv: -kv[1][1])
    return (
        f"{head}{name[:36]:36s} TTFT {r['ttft']:6.1f}  outside vLLM {r['outside']:5.1f}  API-server wait "
        f"{r['api_wait']:5.1f}  router run / wait {r['router_run']:.2f} / {r['router_wait']:.2f}: "
        + ", ".join(f"{n} {run:.2f} / {wait:.2f}" for n, (run, wait) in threads)
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    pooled: dict[str, list[dict[str, Any]]] = {}
    for f in args.runs:
        doc = json.loads(Path(f).read_text())
        print(f"{f} (seed {doc['args']['seed']}; ms per request)")
        order = [r for p in doc["order"] for r in p]
        seen: dict[str, int] = {}
        # Passes in the order run: the JSON keeps each router's passes in order.
        names = list(doc["passes"])
        for key in order:
            name = next((n for n in names if _matches(key, n)), None)
            if name is None:
                continue
            i = seen.get(name, 0)
            seen[name] = i + 1
            p = doc["passes"][name][i]
            load = f"load {p['load_start']:.1f}-{p['load_end']:.1f} "
            print(fmt(name, p["records"], f"  pass {i} {load}"))
            pooled.setdefault(name, []).extend(p["records"])
        both(doc)
    print("all passes (ms per request)")
    for name, rs in pooled.items():
        print(fmt(name, rs, "  "))
    return 0


AUTO, OFF = "kvgate (default, --kv-events auto)", "kvgate (--kv-events off)"


def hit(r: dict[str, Any]) -> bool:
    return r["server"] >= 0 and r["hit_tokens"] >= 0.5 * r["prompt_tokens"]


def both(doc: dict[str, Any]) -> None:
    """kvgate with and without KV events, pass i beside pass i, the requests both hit (ms, auto / off)."""
    auto, off = doc["passes"].get(AUTO, []), doc["passes"].get(OFF, [])
    for i, (a, o) in enumerate(zip(auto, off, strict=False)):
        pairs = [(x, y) for x, y in zip(a["records"], o["records"], strict=True) if hit(x) and hit(y)]
        if not pairs:
            continue

        def two(f: Any, pairs: list[tuple[dict[str, Any], dict[str, Any]]] = pairs) -> str:
            return " / ".join(f"{statistics.fmean(f(r[k]) for r in pairs):.2f}" for k in (0, 1))

        def zmq(k: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]] = pairs) -> float:
            return statistics.fmean(x.get("threads", {}).get("ZMQbg/IO/0", [0.0, 0.0])[k] for x, _ in pairs)

        print(
            f"  pass {i}, auto / off (load {a['load_start']:.1f}-{a['load_end']:.1f} / "
            f"{o['load_start']:.1f}-{o['load_end']:.1f}), {len(pairs)} requests both hit: TTFT "
            + two(lambda r: 1000 * (r["c_first"] - r["send"]))
            + ", vLLM's TTFT " + two(lambda r: r.get("v_ttft_ms", 0.0))
            + ", outside vLLM " + two(lambda r: 1000 * (r["c_first"] - r["send"]) - r.get("v_ttft_ms", 0.0))
            + ", event loop run " + two(lambda r: r.get("loop_run_ms", 0.0))
            + ", its wait " + two(lambda r: r.get("loop_wait_ms", 0.0))
            + f"; auto's ZMQ I/O thread run / wait {zmq(0):.2f} / {zmq(1):.2f}"
        )  # fmt: skip


def _matches(key: str, name: str) -> bool:
    """Whether ``vs_sglang.py``'s router key (``kvgate``, ``kvgate-off``, ``sglang``, ``direct``) ran as
    the pass named ``name``."""
    if key == "kvgate":
        return name.startswith("kvgate (default")
    if key == "kvgate-off":
        return name.startswith("kvgate (--kv-events off")
    if key == "sglang":
        return name.startswith("sglang-router")
    return name.startswith(key)


if __name__ == "__main__":
    raise SystemExit(main())
