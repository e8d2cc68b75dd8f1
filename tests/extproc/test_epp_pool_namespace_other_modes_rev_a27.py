"""Review s27-rev-a27 F3: ``--pool-namespace`` (and ``--pool-name``) where the EPP watches no InferencePool
were taken silently by ``kvgate epp`` while ``kvgate serve`` refuses the same arguments, exit 2 naming the
flag: with ``--clusters`` (serve: "--pool-namespace: not with --clusters ...") and with ``--endpoints``
beside ``--pool-name`` (serve: "--pool-name: give either --pool-name or --endpoints, not both"; the EPP
serves the endpoints, the name and the namespace applying to nothing). k8s27 (0eff7849) said the EPP
refuses the flag "as serve does"; its refusal was skipped in both modes. ``--pool-group`` with
``--clusters`` (``kvgate serve`` has no such flag) is refused alike.

The real ``kvgate epp`` on ports 0, its output in a file: the test waits (up to 60 s) for its exit or its
ready line. The refusals fail on main 895c289f (ready: it served); ``--endpoints --pool-name`` without the
namespace (``kvgate.bench.multicluster_live``'s EPPs) still serves, a control."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

KVGATE = [sys.executable, "-m", "kvgate.cli"]
PORTS = ["--port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--plaintext"]
LIMIT_S = 60.0
ENDPOINTS = ["--endpoints", "127.0.0.1:9", "--model", "m", "--pool-name", "llm"]


def _outcome(argv: list[str], out: Path) -> tuple[int | None, str]:
    """The exit status (None: it served) and its output."""
    with out.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + LIMIT_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                return proc.returncode, out.read_text(errors="replace")
            if "kvgate epp ready" in out.read_text(errors="replace"):
                return None, out.read_text(errors="replace")
            time.sleep(0.05)
        raise AssertionError(
            f"neither exited nor ready in {LIMIT_S:.0f} s: {out.read_text(errors='replace')[-1500:]}"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _clusters(tmp_path: Path) -> list[str]:
    f = tmp_path / "clusters.yaml"
    dead = "{name: a, aggregate: 'http://127.0.0.1:9/v1/pool/aggregate', gateway: '127.0.0.1:9'}"
    f.write_text(f"ttl_s: 3.0\nrefresh_s: 0.5\nclusters:\n- {dead}\n")
    return ["--clusters", str(f)]


@pytest.mark.parametrize(
    ("mode", "flag"),
    [("clusters", "--pool-namespace"), ("clusters", "--pool-name"), ("endpoints", "--pool-namespace")],
)
def test_a_pool_flag_where_no_pool_is_watched_is_refused_as_serve_refuses_it(
    mode: str, flag: str, tmp_path: Path
) -> None:
    if mode == "clusters":
        args = [*_clusters(tmp_path), flag, "team-a"]
    else:
        args = [*ENDPOINTS, "--pool-namespace", "team-a"]
    # (serve refuses them: the reference answer)
    argv = [*KVGATE, "serve", *args, "--port", "0", "--admin-port", "0"]
    serve = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2, serve.stderr[-1500:]
    code, text = _outcome([*KVGATE, "epp", *args, *PORTS], tmp_path / "epp.log")
    assert code == 2, f"kvgate epp served {args} (serve: {serve.stderr.strip()[-300:]!r}): {text[-600:]}"
    assert flag in text, text[-1500:]


def test_the_pool_group_with_clusters_is_refused(tmp_path: Path) -> None:
    args = [*_clusters(tmp_path), "--pool-group", "inference.networking.x-k8s.io"]
    code, text = _outcome([*KVGATE, "epp", *args, *PORTS], tmp_path / "epp.log")
    assert code == 2 and "--pool-group: not with --clusters" in text, text[-1500:]


def test_endpoints_with_a_pool_name_still_serve(tmp_path: Path) -> None:
    """The live multi-cluster bench's EPPs (``--endpoints ... --pool-name NAME``, no namespace)."""
    code, text = _outcome([*KVGATE, "epp", *ENDPOINTS, *PORTS], tmp_path / "epp.log")
    assert code is None, text[-1500:]
