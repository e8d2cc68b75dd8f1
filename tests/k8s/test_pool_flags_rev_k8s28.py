"""k8s28's review, the pool flags' refusals (``kvgate.k8s.poolflags``, both doors):

- fixk8s28's own finding: ``kvgate epp --config gw.yaml --pool-name p --pool-namespace other`` served the
  pool's InferencePool in the namespace the file names, ignoring ``other`` silently. It is refused now
  (exit 2, one line naming the flag), not honoured: the file names the InferencePool, name and namespace,
  for ``kvgate serve`` and ``kvgate epp`` alike, and ``--pool-name`` there only picks the pool (the flag
  equal to the file's namespace still serves). Fails on main 4a4446dd (it served).
- Review s28-rev-k8s28 N2: ``kvgate serve`` and ``kvgate epp`` said different words for a pool flag where no
  InferencePool is watched; one text now (``poolflags.NONE_WATCHED``). Fails on main 4a4446dd.
- N1: ``kvgate serve --config f --pool-name p`` (exit 2 since k8s28) says what to do: drop ``--pool-name``.
  Fails on main 4a4446dd.

The real processes on ports 0; each waits (up to 60 s) for an exit or the EPP's ready line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvgate.k8s import poolflags
from kvgate.k8s import resources as R

KVGATE = [sys.executable, "-m", "kvgate.cli"]
EPP_PORTS = ["--port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--plaintext"]
LIMIT_S = 60.0
FILE = (
    "pools:\n- name: p\n  models: [m]\n  inferencePool: {name: llm, namespace: team-a}\n"
    "- name: s\n  models: [n]\n  endpoints: [127.0.0.1:9]\n"
)


def _epp(argv: list[str], out: Path) -> tuple[int | None, str]:
    """``kvgate epp``'s exit status (None: it served, ready) and its output."""
    with out.open("wb") as f:
        proc = subprocess.Popen([*KVGATE, "epp", *argv, *EPP_PORTS], stdout=f, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + LIMIT_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                return proc.returncode, out.read_text(errors="replace")
            if "kvgate epp ready" in out.read_text(errors="replace"):
                return None, out.read_text(errors="replace")
            time.sleep(0.05)
        raise AssertionError(f"neither exited nor ready in {LIMIT_S:.0f} s: {out.read_text()[-1500:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _refusal(text: str, flag: str) -> str:
    [line] = [ln for ln in text.splitlines() if ln.strip() and "WARNING" not in ln]
    assert f"{flag}: " in line, line
    return line.split(f"{flag}: ", 1)[1]


@pytest.mark.parametrize(("namespace", "served"), [("other", False), ("team-a", True)])
def test_epp_pool_namespace_beside_config_is_the_files_or_refused(
    tmp_path: Path, namespace: str, served: bool
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    argv = ["--config", str(path), "--pool-name", "p", "--pool-namespace", namespace,
            "--kube-server", "http://127.0.0.1:9"]  # fmt: skip
    code, text = _epp(argv, tmp_path / "epp.log")
    if served:
        assert code is None, text[-1500:]
        return
    assert code == 2, f"kvgate epp served {argv}: {text[-600:]}"
    why = _refusal(text, poolflags.FLAG)
    assert "'team-a'" in why and "'other'" in why, why


def test_both_doors_say_the_same_where_no_pool_is_watched(tmp_path: Path) -> None:
    argv = ["--endpoints", "127.0.0.1:9", "--model", "m", "--pool-group", R.LEGACY_GROUP]
    serve = subprocess.run([*KVGATE, "serve", *argv, "--port", "0"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert serve.returncode == 2, serve.stderr[-1500:]
    code, text = _epp(argv, tmp_path / "epp.log")
    assert code == 2, text[-1500:]
    assert _refusal(serve.stderr, "--pool-group") == _refusal(text, "--pool-group") == poolflags.NONE_WATCHED


def test_serve_says_to_drop_pool_name_beside_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    out = subprocess.run([*KVGATE, "serve", "--config", str(path), "--pool-name", "p", "--port", "0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr[-1500:]
    assert "drop --pool-name" in _refusal(out.stderr, "--pool-name"), out.stderr
