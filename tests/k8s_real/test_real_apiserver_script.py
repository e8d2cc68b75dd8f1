"""scripts/real-apiserver.sh's failure modes (review s16-kreal findings 1-3): two runs at once, a cancel
during ``start``, no kubectl. Need the built binary (skipped otherwise; a failure under
``KVGATE_REQUIRE_REAL_APISERVER=1``, as ``make test-k8s-real`` sets). Each test uses its own
KVGATE_APISERVER_RUN under tmp_path and stops what it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-apiserver.sh"
BINARY = Path(
    subprocess.run(["bash", str(SCRIPT), "bin"], capture_output=True, text=True, check=True).stdout.strip()
)
pytestmark = pytest.mark.k8sreal


@pytest.fixture(autouse=True)
def _built() -> None:
    if BINARY.exists() and shutil.which("etcd"):
        return
    reason = f"no built kube-apiserver ({BINARY}) or no etcd: scripts/real-apiserver.sh build"
    if os.environ.get("KVGATE_REQUIRE_REAL_APISERVER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def env(run: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "KVGATE_APISERVER_RUN": str(run), "PY": sys.executable,
            "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", **extra}  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def leftovers(run: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(run)], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def stop(run: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env(run), cwd=ROOT, timeout=60, check=False)


def test_a_second_test_run_does_not_stop_a_server_it_did_not_start(tmp_path: Path) -> None:
    """Two `make test-k8s-real` at once share ~/.cache/kvgate/apiserver/run: the second reuses the
    first's server (start: 'url' + live pid) and its `trap stop EXIT` kills it under the first's tests."""
    run = tmp_path / "run"
    try:
        subprocess.run(["bash", str(SCRIPT), "start"], env=env(run), cwd=ROOT, timeout=180, check=True,
                       capture_output=True)  # fmt: skip
        first = int((run / "apiserver.pid").read_text())
        subprocess.run(["bash", str(SCRIPT), "test", "-k", "no_such_test"], env=env(run), cwd=ROOT,
                       timeout=180, check=False, capture_output=True)  # fmt: skip
        assert alive(first), "the second run's exit trap stopped the first run's kube-apiserver"
    finally:
        stop(run)


def _sigint_default() -> None:
    """Ctrl-C's default in the script, whatever this suite inherited: bash cannot trap a signal ignored at
    its start, and a suite started in the background of a non-interactive shell (`(cmd &)`) ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM-to-script", "INT-to-group(Ctrl-C)"]
)
def test_a_signal_while_the_server_starts_leaves_no_etcd_or_apiserver(tmp_path: Path, sig: int) -> None:
    """`make test-k8s-real` cancelled (CI runner's TERM, Ctrl-C) while `start` waits for /readyz (seconds;
    ~20 s under load): `trap stop EXIT` is only set after start returns, so etcd + kube-apiserver stay up
    with the run directory (static system:masters token, etcd data) behind. (Ctrl-C: the two background
    jobs of a non-interactive bash ignore SIGINT.) Seen by hand too: kill -TERM at 10 s, both left."""
    run = tmp_path / "run"
    p = subprocess.Popen(["bash", str(SCRIPT), "test", "-k", "discovery"], env=env(run), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, preexec_fn=_sigint_default)  # fmt: skip
    try:
        end = time.monotonic() + 120
        while not (run / "apiserver.pid").exists():
            assert time.monotonic() < end and p.poll() is None, "server did not start"
            time.sleep(0.02)
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        p.wait(timeout=60)
        time.sleep(3)
        assert leftovers(run) == [], leftovers(run)
        # the script's own INT/TERM trap turned the cancel into an exit (which runs `stop`): before it, bash
        # died of the signal (-2 / -15), or went on (0) when its wait-and-cooperative-exit swallowed a Ctrl-C
        # that reached a child which had just exited -- and the clean-up depended on where bash was (s28 CI)
        assert p.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], p.returncode
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        stop(run)


def test_stop_finds_a_server_whose_pid_file_was_never_written(tmp_path: Path) -> None:
    """A cancel between `etcd ... &` and `echo $! >etcd.pid` leaves a server no pid file names: `stop`
    finds it by the run directory on its command line (a stand-in process with etcd's arguments)."""
    run = tmp_path / "run"
    run.mkdir()
    args = ["--name", "kvgate", "--data-dir", f"{run}/etcd", "--listen-client-urls", "http://127.0.0.1:1"]
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *args])
    try:
        end = time.monotonic() + 30
        while not leftovers(run):
            assert time.monotonic() < end, "the stand-in did not start"
            time.sleep(0.05)
        stop(run)
        assert p.wait(timeout=60) is not None
        assert leftovers(run) == [], leftovers(run)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_without_kubectl_the_real_suite_does_not_pass_green(tmp_path: Path) -> None:
    """A fresh machine without kubectl (the script installs go, etcd, dpkg-dev, never kubectl): every test
    in tests/k8s_real is skipped and `make test-k8s-real` (and .ci/run) exits 0, having tested nothing."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(":"):
        if not os.path.isdir(d):
            continue
        for f in os.listdir(d):
            if f != "kubectl" and not (bindir / f).exists():
                (bindir / f).symlink_to(os.path.join(d, f))
    assert shutil.which("kubectl", path=str(bindir)) is None
    run = tmp_path / "run"
    try:
        res = subprocess.run(["bash", str(SCRIPT), "test"], env=env(run, PATH=str(bindir)), cwd=ROOT,
                             timeout=300, check=False, capture_output=True, text=True)  # fmt: skip
        assert res.returncode != 0, f"passed with nothing run:\n{res.stdout[-500:]}"
    finally:
        stop(run)


def test_a_start_whose_etcd_dies_fails_at_once_with_etcds_log_kept(tmp_path: Path) -> None:
    """An etcd that dies (a port taken between free_port and its bind): `start` notices it in its readiness
    loop, prints etcd.log's tail and keeps the logs next to the run directory (stop removes that one)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "etcd"
    fake.write_text("#!/bin/sh\necho 'listen tcp 127.0.0.1:1: bind: address already in use' >&2\nexit 1\n")
    fake.chmod(0o755)
    run = tmp_path / "run"
    try:
        res = subprocess.run(["bash", str(SCRIPT), "start"], cwd=ROOT, timeout=180, check=False,
                             capture_output=True, text=True,
                             env=env(run, PATH=f"{bindir}:{os.environ['PATH']}"))  # fmt: skip
        assert res.returncode != 0
        assert "address already in use" in res.stderr, res.stderr
        assert "address already in use" in (tmp_path / "run.failed" / "etcd.log").read_text()
        assert not run.exists()
        assert leftovers(run) == [], leftovers(run)
    finally:
        stop(run)


def test_the_token_and_kubeconfig_are_private(tmp_path: Path) -> None:
    """tokens.csv and the kubeconfig hold the system:masters token: 0600 (a run directory in /tmp is
    traversable by any local user)."""
    run = tmp_path / "run"
    try:
        subprocess.run(["bash", str(SCRIPT), "start"], env=env(run), cwd=ROOT, timeout=180, check=True,
                       capture_output=True)  # fmt: skip
        for name in ("tokens.csv", "kubeconfig"):
            assert (run / name).stat().st_mode & 0o077 == 0, oct((run / name).stat().st_mode)
    finally:
        stop(run)
