"""scripts/real-apiserver.sh's ports (review s27-rev-b27 F1; `make test-k8s-real` in .ci/run): etcd's two and
the API server's secure port were picked by a port-0 bind closed at once, so in the ephemeral range, where
any other process's port-0 bind or outgoing connection could take one before etcd / kube-apiserver bound it
(seconds under load), and `start` then failed. Now they come from ``kvgate.bench.ports`` (outside that
range), and a port taken all the same (bound by number meanwhile) is retried with fresh ones. Both tests
fail on bfadf538. No real API server here: the retry test runs fakes of etcd and kube-apiserver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.bench.ports import RANGE_FILE, spare_ports

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-apiserver.sh"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT / "src"), **extra}


def test_the_scripts_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    if not spare_ports():
        pytest.skip("no spare ports outside the ephemeral range on this machine")
    lo, hi = (int(x) for x in Path(RANGE_FILE).read_text().split())
    text = SCRIPT.read_text()
    start = text.index("free_ports() {")  # (the function start uses, as the script defines it)
    body = text[start : text.index("\n}", start) + 2]
    ports: list[int] = []
    for _ in range(3):
        out = subprocess.run(["bash", "-c", f"{body}\nfree_ports"], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        picked = [int(p) for p in out.stdout.split()]
        assert len(picked) == 3 and len(set(picked)) == 3, out
        ports += picked
    inside = [p for p in ports if lo <= p <= hi]
    assert inside == [], f"in the ephemeral range {lo}-{hi} (port-0 binds and connects take these): {inside}"


FAKE_APISERVER = """#!{python}
# kube-apiserver's stand-in: its first run finds its port taken (as the real one says it); later ones
# answer /readyz over TLS on --secure-port
import http.server, os, ssl, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
runs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")
with open(runs, "a") as f:
    f.write(args["--secure-port"] + "\\n")
with open(runs) as f:
    if len(f.read().split()) == 1:
        print("failed to listen on 127.0.0.1:" + args["--secure-port"] + ": listen tcp 127.0.0.1:"
              + args["--secure-port"] + ": bind: address already in use", flush=True)
        sys.exit(1)


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


server = http.server.HTTPServer(("127.0.0.1", int(args["--secure-port"])), Ready)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args["--tls-cert-file"], args["--tls-private-key-file"])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def test_a_port_taken_before_the_bind_is_retried_with_fresh_ones(tmp_path: Path) -> None:
    if not (shutil.which("openssl") and shutil.which("curl")):
        pytest.skip("the script needs openssl and curl")
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    binary = Path(subprocess.run(["bash", str(SCRIPT), "bin"], env=env(KVGATE_APISERVER_HOME=str(home)),
                                 capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    assert binary.parent == home / "bin", binary
    binary.write_text(FAKE_APISERVER.replace("{python}", sys.executable))
    binary.chmod(0o755)
    fakes = tmp_path / "path"
    fakes.mkdir()
    (fakes / "etcd").write_text("#!/bin/sh\nexec sleep 600\n")
    (fakes / "etcd").chmod(0o755)
    run = tmp_path / "run"
    e = env(KVGATE_APISERVER_HOME=str(home), KVGATE_APISERVER_RUN=str(run),
            PATH=f"{fakes}:{os.environ['PATH']}")  # fmt: skip
    try:
        res = subprocess.run(["bash", str(SCRIPT), "start"], env=e, cwd=ROOT, capture_output=True,
                             text=True, timeout=240, check=False)  # fmt: skip
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
        tried = (binary.parent / "runs").read_text().split()
        assert len(tried) == 2 and tried[0] != tried[1], tried
        assert f"URL=https://127.0.0.1:{tried[1]}" in res.stdout.splitlines(), res.stdout
        assert "again with others" in res.stderr, res.stderr
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=e, cwd=ROOT, capture_output=True, timeout=60,
                       check=False)  # fmt: skip
    assert not run.exists()
