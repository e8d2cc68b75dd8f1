"""kvgate serve's ``x-kvgate-timing`` steps without vLLM: the same marks ``vs_sglang.py`` and
``proxy_split.py`` print, in front of ``kvgate bench gateway-ttft``'s instant backend (one endpoint that
looks like vLLM with KV events, the tiny Llama's tokenizer at ``/server_info``; the response head at once,
the first token ``--first-token-ms`` later). What a step costs when no vLLM process shares the cores.

    PYTHONPATH=src python scripts/realvllm/gateway_marks.py [--requests 40] [--first-token-ms 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import timed, wait_http

from kvgate import lifeline
from kvgate.bench import gateway_ttft
from kvgate.realvllm.harness import free_ports

STEPS = (
    ("client -> gateway has the request", "send", "recv"),
    ("parse, headers", "recv", "parsed"),
    ("pick (tokenize, score, admit)", "parsed", "picked"),
    ("write upstream", "picked", "sent"),
    ("upstream: request -> response head", "sent", "head"),
    ("upstream: response head -> first chunk", "head", "first"),
    ("relay -> client first chunk", "first", "c_first"),
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40, help="measured, after 16 unmeasured")
    ap.add_argument("--first-token-ms", type=float, default=20.0)
    ap.add_argument("--gap", type=float, default=0.05)
    args = ap.parse_args()
    backend_port, gateway_port = free_ports(2)
    backend = subprocess.Popen(
        [sys.executable, "-m", "kvgate.bench.gateway_ttft", "--_backend", str(gateway_ttft.DEFAULT_TOKENIZER),
         str(args.first_token_ms), str(backend_port)], stdout=subprocess.PIPE,
        preexec_fn=lifeline.die_with_parent())  # fmt: skip
    gateway = None
    try:
        assert backend.stdout is not None
        backend.stdout.readline()  # "ready"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", f"http://127.0.0.1:{backend_port}",
             "--model", gateway_ttft.MODEL, "--port", str(gateway_port), "--kv-events", "auto"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lifeline.die_with_parent())  # fmt: skip
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        recs = []
        for i, prompt in enumerate(gateway_ttft.workload(args.requests + 16)):
            rec = timed(f"http://127.0.0.1:{gateway_port}", prompt)
            if i >= 16:
                recs.append(rec)
            time.sleep(args.gap)
        print(f"{len(recs)} requests, first token after {args.first_token_ms} ms:")
        for label, a, b in STEPS:
            ms = [1000 * (r[b] - r[a]) for r in recs]
            print(f"  {label:40s} median {statistics.median(ms):7.3f}  mean {statistics.fmean(ms):7.3f} ms")
    finally:
        for p in (gateway, backend):
            if p is not None:
                p.terminate()
                p.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
