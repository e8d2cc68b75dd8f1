"""Live: how long a pool takes to serve again after a whole-pool outage (review s30-qa30 Q1).

Two ``kvgate sim --profile tiny --time-scale 50`` processes behind ``kvgate serve`` (CLI defaults,
round-robin), one request every 0.5 s; both sims SIGKILLed for OUTAGE seconds (argv[1], default 80),
then the one the gateway ejected (the first one when none was) restarted on its port; prints the
time from that restart to the first 200. Review s30-qa30's ``scratch/live_q1_revival.py``, which
needed an ejection; ports from ``kvgate.bench.ports.free_port`` (a script, not a test). Run with the
``kvgate`` of the checkout under test on PATH or as KVGATE.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kvgate import lifeline
from kvgate.bench.ports import free_port

OUTAGE = float(sys.argv[1]) if len(sys.argv) > 1 else 80.0
KV = os.environ.get("KVGATE") or shutil.which("kvgate") or "kvgate"
LOG = os.path.join(tempfile.gettempdir(), f"pool_outage_revival.{os.getpid()}.log")


def sim(port: int) -> subprocess.Popen:
    args = [KV, "sim", "--base-port", str(port), "--model", "m", "--profile", "tiny", "--time-scale", "50"]
    return subprocess.Popen(
        lifeline.die_with_parent_argv(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def post(port: int) -> int | str:
    body = b'{"model":"m","prompt":"hi","max_tokens":2}'
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # (a refused or reset connection: counted by its name)
        return repr(e)[:40]


def main() -> None:
    pa, pb, gp, ap = free_port(), free_port(), free_port(), free_port()
    sims = {pa: sim(pa), pb: sim(pb)}
    log = open(LOG, "w")  # noqa: SIM115 (the gateway's log, read while it runs)
    endpoints = f"127.0.0.1:{pa},127.0.0.1:{pb}"
    serve = [KV, "serve", "--endpoints", endpoints, "--model", "m", "--policy", "round-robin"]
    serve += ["--port", str(gp), "--admin-port", str(ap)]
    gw = subprocess.Popen(lifeline.die_with_parent_argv(serve), stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while time.time() - t0 < 60 and post(gp) != 200:
            time.sleep(0.5)
        print("serving after", round(time.time() - t0, 1), "s", flush=True)
        for s in sims.values():
            s.kill()
        t_kill, counts = time.time(), dict[int | str, int]()
        while time.time() - t_kill < OUTAGE:
            st = post(gp)
            counts[st] = counts.get(st, 0) + 1
            time.sleep(0.5)
        print("during the outage", counts, flush=True)
        ejected = re.findall(r"ejected 127.0.0.1:(\d+)", Path(LOG).read_text())
        print("ejected:", ejected[:3], flush=True)
        port = int(ejected[0]) if ejected else pa
        sims[port] = sim(port)
        t_up, first_ok, seen = time.time(), None, dict[int | str, int]()
        while time.time() - t_up < 120:
            st = post(gp)
            seen[st] = seen.get(st, 0) + 1
            if st == 200:
                first_ok = time.time() - t_up
                break
            time.sleep(0.5)
        took = None if first_ok is None else round(first_ok, 1)
        print("restarted", port, "-> first 200 after", took, "s; meanwhile", seen, flush=True)
        print("probe lines:", [ln for ln in Path(LOG).read_text().splitlines() if "probe" in ln][:3])
    finally:
        gw.terminate()
        for s in sims.values():
            s.kill()
        gw.wait(10)
        log.close()


if __name__ == "__main__":
    main()
