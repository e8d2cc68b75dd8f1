"""``scripts/realvllm/first_requests.py`` on its default backends (``kvgate bench gateway-ttft``'s instant
vLLM look-alikes; no vLLM): the serve process's own records of a fresh gateway's first requests.

Real processes on loopback: the script starts the backends and ``kvgate serve --kv-events auto`` (the
precise profile with the tiny Llama's tokenizer) and writes what it recorded inside the serve process.
The thread check fails on main a6977267's src (the first request started the tokenizer's self-check
thread), the self-check one on main 6c4d40fa's (nothing was checked at load), the live-check one on main
1b0eae32's (no real prompt was checked: review s26-rev-wkv26 F1); the others pin what the script measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate import lifeline
from kvgate.bench.gateway_ttft import DEFAULT_TOKENIZER
from kvgate.scheduling.tokenize import LIVE_CHECKS, SELF_CHECKS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "first_requests.py"
SRC = Path(__file__).resolve().parents[2] / "src"
REQUESTS = 10


@pytest.mark.skipif(not (DEFAULT_TOKENIZER / "tokenizer.json").is_file(), reason="no tiny Llama tokenizer")
def test_a_fresh_gateways_first_requests_start_nothing(tmp_path: Path) -> None:
    out = tmp_path / "first.json"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(SRC))}
    argv = [sys.executable, str(SCRIPT), "--requests", str(REQUESTS), "--gap", "0.02", "--idle", "0.1",
            "--json", str(out)]  # fmt: skip
    done = subprocess.run(lifeline.die_with_parent_argv(argv), env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert len(run["records"]) == REQUESTS
    start, *per_request = run["inside"]["counts"]
    assert len(per_request) == REQUESTS
    assert start["warm_n"] == 2 and start["connect_n"] == 2  # one kept-alive connection per backend
    assert sum(c.get("connect_n", 0) for c in per_request) == 0  # (the look-alikes never close one)
    # The tokenizer's load-time self-checks: all at start-up, none in a request's interval (session 26).
    assert start.get("self_check_n", 0) == SELF_CHECKS
    assert [c.get("self_check_n", 0) for c in per_request] == [0] * REQUESTS
    # The first LIVE_CHECKS prompts' live checks: on the checker thread (its CPU in those requests'
    # intervals), none on the event loop's thread, the request path (the exit joins the thread: all counted).
    assert start.get("live_check_n", 0) == 0
    assert sum(c.get("live_check_n", 0) for c in per_request) == min(LIVE_CHECKS, REQUESTS)
    assert sum(c.get("live_check_loop_n", 0) for c in [start, *per_request]) == 0
    assert all(c.get("tokenizer_call_n", 0) > 0 for c in per_request)
    # Nothing started or imported by a request: threads as at readiness, no module after the first pick.
    # (The last request's interval ends at the serve process's exit, its threads stopping: not counted.)
    threads = [c["threads"] for c in per_request[:-1]]
    assert set(threads) == {start["threads"]}, threads
    assert run["inside"]["modules"][1:] == [[]] * REQUESTS
