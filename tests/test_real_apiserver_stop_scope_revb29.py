"""Review s29-rev-b29 F1: scripts/real-apiserver.sh's ``kill_servers`` (013fa4b8) also kills every
process whose command line matches ``--(cert-dir|data-dir) $RUN/(certs|etcd)( |$)`` (pgrep -f, an extended
regex). ``$RUN`` went into the pattern as written: (a) a relative ``KVGATE_APISERVER_RUN`` names a different
directory for each checkout (the script cds to its repo root) but the same command-line text, so ``stop`` in
one checkout killed the servers another checkout started; (b) a regex character in the path (``|``) split
the pattern and matched other directories' servers. run1 vs run10 is fine (the ``/`` after ``$RUN``).
Each case: a stand-in process (python sleeping, with etcd's arguments) of ANOTHER run; ``stop`` of this
run must leave it alive. No server, no port; the stand-in is started before and polled for (30 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "real-apiserver.sh"


def _standin(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *args], cwd=cwd)
    end = time.monotonic() + 30
    while True:  # its command line is readable (exec done) before stop looks for it
        try:
            if Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[-2] == args[-1].encode():
                return p
        except (OSError, IndexError):
            pass
        assert time.monotonic() < end, "the stand-in did not start"
        time.sleep(0.05)


def _stop(run: str) -> None:
    env = {**os.environ, "KVGATE_APISERVER_RUN": run, "PY": sys.executable}
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, cwd=ROOT, timeout=120, check=False)


@pytest.mark.parametrize("case", ["relative run directory", "regex character in the path"])
def test_stop_leaves_another_runs_server_alone(tmp_path: Path, case: str) -> None:
    if case == "relative run directory":
        rel = f"revb29-nonexistent-{uuid.uuid4().hex}/run"  # (stop's rm -rf of ROOT/rel: nothing there)
        other_cwd = tmp_path / "other-checkout"
        other_cwd.mkdir()
        other_args = ["--name", "kvgate", "--data-dir", f"{rel}/etcd", "--listen-client-urls", "http://x"]
        mine = rel
    else:
        (tmp_path / "a|b").mkdir()
        mine = str(tmp_path / "a|b" / "run")
        other_cwd = tmp_path
        other_args = ["--name", "kvgate", "--data-dir", f"{tmp_path}/another/run/etcd", "--listen", "x"]
    p = _standin(other_args, other_cwd)
    try:
        _stop(mine)
        assert p.poll() is None, f"stop of {mine!r} killed another run's server ({other_args[3]!r})"
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)
