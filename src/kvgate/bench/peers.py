"""Install and launch the real peer routers (the Rust ones from PyPI) for side-by-side benchmarks.

Each peer lives in its own cached virtualenv outside the repository
(``~/.cache/kvgate/peers/<name>``, override with ``KVGATE_PEERS_DIR``), installed once with pip at a
pinned version. Launches always bind 127.0.0.1 and run with ``HF_HUB_OFFLINE=1`` so nothing tries to
reach the network; benchmarks additionally run inside a loopback-only network namespace.

    from kvgate.bench.peers import PEERS, ensure_installed, launch
    peer = PEERS["sglang-router"]
    ensure_installed(peer)
    proc = launch(peer, ["http://127.0.0.1:8001"], policy="cache_aware", port=30000)
    wait_ready(proc, 30000) ... proc.terminate()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kvgate import lifeline
from kvgate.entry import ArgumentParser, prog


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    package: str  # pip requirement, pinned
    policies: tuple[str, ...]

    def command(self, python: Path, workers: list[str], policy: str, host: str, port: int) -> list[str]:
        if self.name == "sglang-router":
            return [
                str(python),
                "-m",
                "sglang_router.launch_router",
                "--worker-urls",
                *workers,
                "--policy",
                policy,
                "--host",
                host,
                "--port",
                str(port),
            ]
        # vllm-router installs a console script next to the interpreter.
        return [
            str(python.parent / "vllm-router"),
            "--worker-urls",
            *workers,
            "--policy",
            policy,
            "--host",
            host,
            "--port",
            str(port),
        ]


PEERS: dict[str, Peer] = {
    "sglang-router": Peer(
        "sglang-router", "sglang-router==0.3.2", ("round_robin", "cache_aware", "random", "power_of_two")
    ),
    "vllm-router": Peer(
        "vllm-router",
        "vllm-router==0.1.17",
        ("round_robin", "cache_aware", "random", "power_of_two", "consistent_hash"),
    ),
}


def peers_dir() -> Path:
    return Path(os.environ.get("KVGATE_PEERS_DIR", Path.home() / ".cache" / "kvgate" / "peers"))


def venv_python(peer: Peer) -> Path:
    return peers_dir() / peer.name / "bin" / "python"


def _stamp(peer: Peer) -> Path:
    return peers_dir() / peer.name / ".installed"


def is_installed(peer: Peer) -> bool:
    stamp = _stamp(peer)
    return stamp.exists() and stamp.read_text().strip() == peer.package and venv_python(peer).exists()


def ensure_installed(peer: Peer, *, quiet: bool = True) -> Path:
    """Create the peer's venv and pip-install its pinned package (once); returns its python."""
    if is_installed(peer):
        return venv_python(peer)
    root = peers_dir() / peer.name
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # (``waited``: ``live_routers`` runs this in a worker thread, ``asyncio.to_thread``)
    subprocess.run(
        lifeline.die_with_parent_argv([sys.executable, "-m", "venv", str(root)], waited=True),
        check=True,
    )
    cmd = [str(venv_python(peer)), "-m", "pip", "install", "--disable-pip-version-check", peer.package]
    if quiet:
        cmd.insert(4, "--quiet")
    subprocess.run(lifeline.die_with_parent_argv(cmd, waited=True), check=True)
    _stamp(peer).write_text(peer.package + "\n")
    return venv_python(peer)


def launch(
    peer: Peer,
    workers: list[str],
    *,
    policy: str,
    port: int,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    if policy not in peer.policies:
        raise ValueError(f"{peer.name} has no policy {policy!r} (known: {', '.join(peer.policies)})")
    if host != "127.0.0.1":
        raise ValueError("peers are only launched on 127.0.0.1")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RUST_LOG": "warn",
        "NO_PROXY": "*",
    }
    cmd = peer.command(venv_python(peer), workers, policy, host, port)
    if log_path is None:
        return subprocess.Popen(
            lifeline.die_with_parent_argv(cmd),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            lifeline.die_with_parent_argv(cmd),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, *, timeout: float = 60.0, path: str = "/health"
) -> None:
    """Poll ``GET path`` until 200, or raise if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with status {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"router on port {port} not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def main(argv: list[str] | None = None) -> int:
    """``kvgate bench peers [name ...]`` (or ``python -m kvgate.bench.peers``, the name its usage line
    gives it then: ``kvgate.entry.prog``): install the peers (all by default)."""
    parser = ArgumentParser(
        prog=prog("kvgate.bench.peers", "bench peers"),
        description="Install the peer routers, each into its own cached virtualenv.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"peers to install (default: all of {', '.join(PEERS)})"
    )
    names = parser.parse_args(argv).names or list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peer {', '.join(unknown)} (known: {', '.join(PEERS)})")
    for name in names:
        peer = PEERS[name]
        t = time.monotonic()
        py = ensure_installed(peer, quiet=False)
        print(f"{peer.package}: {py} ({time.monotonic() - t:.0f}s)")
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
