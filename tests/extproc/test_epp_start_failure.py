"""Review s22-hubqa F3: a `kvgate epp` start failure other than a port taken (a KV-event bind to an address
that is not this host's; a kubeconfig that cannot be read) ended in a 40-line traceback, with the scraper
and discovery not stopped. Now each is one line naming the part that failed, rc 1, as for a port taken
(test_epp_port_in_use.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

KVGATE = [sys.executable, "-m", "kvgate.cli"]
PORTS = ["--plaintext", "--port", "0", "--grpc-health-port", "0", "--metrics-port", "0"]
# eventsBind: the EPP binds the engine's KV-event address; 10.255.255.1 is not this host's (EADDRNOTAVAIL,
# a permanent address error: the source's start raises it)
EPC = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters: {eventsPortOffset: 1, eventsBind: true}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: max-score-picker
"""


@pytest.mark.parametrize("case", ["kv-events-bind", "kubeconfig"])
def test_a_start_failure_is_one_line_naming_what_failed(tmp_path: Path, case: str) -> None:
    if case == "kv-events-bind":
        cfg = tmp_path / "epc.yaml"
        cfg.write_text(EPC)
        argv = [*KVGATE, "epp", "--endpoints", "10.255.255.1:31400", *PORTS, "--config-file", str(cfg)]
        names = ("data source", "10.255.255.1:31401")
    else:
        argv = [*KVGATE, "epp", "--pool-name", "p", "--kubeconfig", str(tmp_path / "none"), *PORTS]
        names = ("InferencePool discovery", "kube-config")
    # it exits on its own (its start fails); the timeout only bounds a hang
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in res.stderr, f"{len(res.stderr.splitlines())} lines:\n{res.stderr[-1500:]}"
    assert res.returncode == 1
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("kvgate epp: cannot start: ")]
    assert len(line) == 1 and all(n in line[0] for n in names), res.stderr[-1500:]
    for noise in ("Unclosed", "never awaited", "Event loop is closed", "Task was destroyed"):
        assert noise not in res.stderr, res.stderr[-1500:]
