"""How long a reload of a large picker file holds `kvgate serve`'s requests (review qa36a F10's method).

`kvgate serve` on 3 `kvgate sim` replicas; one client sends a 1-token completion every 10 ms for 14 s
(sequential); with `reload`, 2 s in, the pool's picker file is replaced by the same config padded with
comment lines to ~1.0 MB (under the 1 MiB cap) and the gateway gets a SIGHUP. Prints the slowest request and
when it came. Run it for two source trees in one go to compare (same load):

    python scripts/reload_stall_qa36a.py OLD_TREE/src NEW_TREE/src
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from kvgate import lifeline
from kvgate.config.policies import policy_yaml

KV = os.path.join(os.path.dirname(sys.executable), "kvgate")
EPC = policy_yaml("reference")  # the reference profile as a picker file (the reload swaps in a padded copy)
PADDED = EPC + ("# " + "x" * 1000 + "\n") * 1040  # ~1.0 MB, as the review's epc_1m.yaml


def _wait(pred: Callable[[], Any], what: str, deadline: float = 60.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if v := pred():
            return v
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def _text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _post(c: http.client.HTTPConnection) -> int:
    body = json.dumps({"model": "m1", "prompt": "hi", "max_tokens": 1})
    c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    return r.status


def run(src: str, reload: bool) -> str:
    env = dict(os.environ, PYTHONPATH=src)
    d = tempfile.mkdtemp(prefix="stall-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(f"{d}/sim.log", "w") as log:
            cmd = [KV, "sim", "--replicas", "3", "--base-port", "0", "--profile", "tiny", "--model", "m1"]
            procs.append(
                subprocess.Popen(
                    lifeline.die_with_parent_argv(cmd), stdout=log, stderr=subprocess.STDOUT, env=env
                )
            )

        def sims() -> list[str] | None:
            found = re.findall(r"replica \d+: http://(127\.0\.0\.1:\d+)", _text(f"{d}/sim.log"))
            return found if len(found) == 3 else None

        eps = _wait(sims, "3 sims")
        with open(f"{d}/epc.yaml", "w") as f:
            f.write(EPC)
        with open(f"{d}/gw.yaml", "w") as f:
            f.write(
                "listen: {host: 127.0.0.1, port: 0, adminPort: 0}\npools:\n- name: p\n"
                f"  endpoints: {json.dumps(eps)}\n  models: [m1]\n  endpointPickerConfigFile: epc.yaml\n"
            )
        with open(f"{d}/serve.log", "w") as log:
            serve = [KV, "serve", "--config", f"{d}/gw.yaml"]
            gw = subprocess.Popen(
                lifeline.die_with_parent_argv(serve), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        procs.append(gw)
        pat = r"listening on http://127.0.0.1:(\d+)"
        port = int(_wait(lambda: re.search(pat, _text(f"{d}/serve.log")), "kvgate serve").group(1))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(20):
            _post(c)

        def swap() -> None:
            time.sleep(2.0)
            with open(f"{d}/epc.yaml", "w") as f:
                f.write(PADDED)
            gw.send_signal(signal.SIGHUP)

        if reload:
            threading.Thread(target=swap, daemon=True).start()
        t0 = time.monotonic()
        lat: list[tuple[float, float, int]] = []
        while time.monotonic() - t0 < 14.0:
            s = time.monotonic()
            status = _post(c)
            lat.append((time.monotonic() - s, s - t0, status))
            time.sleep(0.01)
        ms = sorted(x[0] * 1000 for x in lat)
        worst = max(lat)
        return (
            f"{'reload' if reload else 'none  '}: n={len(lat)} max={worst[0] * 1000:.0f} ms "
            f"at t={worst[1]:.2f} s p50={ms[len(ms) // 2]:.1f} ms p99={ms[int(len(ms) * 0.99)]:.1f} ms "
            f"statuses={sorted({x[2] for x in lat})} load={_text('/proc/loadavg').split()[0]}"
        )
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    for src in sys.argv[1:]:
        for reload in (False, True):
            print(f"{src} {run(src, reload)}", flush=True)


if __name__ == "__main__":
    main()
