"""Two ways a bench's children outlived it (session 11):

- ``python -m kvgate.bench.X`` (how the docs and the Makefile run several benches, and how benches start
  their helpers) did not install the reaper: only ``kvgate bench`` / ``kvgate demo`` did. Every
  ``__main__`` block under ``kvgate.bench`` now calls ``reaper.install()`` first.
- A bench killed by SIGKILL runs no handler and no ``atexit``: its children ran on. The children it starts
  (``procs.start`` and the benches' own ``Popen``s) now get ``PR_SET_PDEATHSIG`` (SIGTERM) through
  ``lifeline.die_with_parent_argv()``."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvgate import lifeline
from kvgate.bench import reaper

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "src" / "kvgate" / "bench"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux")


def _main_blocks() -> dict[str, ast.If]:
    out = {}
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
                out[path.name] = node
    return out


def test_every_bench_main_installs_the_reaper_first() -> None:
    blocks = _main_blocks()
    assert len(blocks) >= 15  # (the test reads the real modules)
    missing = []
    for name, block in blocks.items():
        calls = [s for s in block.body if not isinstance(s, ast.Import | ast.ImportFrom)]
        if not calls or ast.unparse(calls[0]) != "reaper.install()":
            missing.append(name)
    assert missing == []


def test_every_long_lived_child_a_bench_starts_dies_with_it() -> None:
    """Every ``Popen`` / ``create_subprocess_exec`` under ``kvgate.bench`` (servers, gateways, peers, load
    generators), and every ``unshare`` re-exec of a bench, passes
    its command through ``lifeline.die_with_parent_argv`` (``setpriv``) and no ``preexec_fn`` (fixfork15)."""
    missing = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            # (and the netns re-execs, which run the whole bench again as a child: review s11-hard L4)
            if func.endswith(("Popen", "create_subprocess_exec")) or (
                func.startswith("subprocess.") and "unshare" in ast.unparse(node)
            ):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                first = ast.unparse(node.args[0]) if node.args else ""
                if "preexec_fn" in kw or not first.lstrip("*").startswith("lifeline.die_with_parent_argv("):
                    missing.append(f"{path.name}:{node.lineno}")
    assert missing == []


def _caught(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


@linux_only
def test_python_m_a_bench_installs_the_reaper() -> None:
    """``python -m kvgate.bench.delay_relay`` (a bench helper that runs until stopped) handles SIGHUP: the
    reaper's handler (nothing else in it sets one). Before: SIGHUP at its default."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvgate.bench.delay_relay", "--route", "127.0.0.1:0=127.0.0.1:9@1"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        hup = 1 << (signal.SIGHUP - 1)
        deadline = time.monotonic() + 30
        while not _caught(proc.pid) & hup and time.monotonic() < deadline:
            assert proc.poll() is None, f"exited early (rc {proc.returncode})"
            time.sleep(0.05)
        assert _caught(proc.pid) & hup, "python -m kvgate.bench.X left SIGHUP unhandled"
    finally:
        proc.kill()
        proc.wait()


BENCH_SCRIPT = """
import asyncio
from kvgate.bench import procs

async def main():
    p, _ = await procs.start("sleeper", ["sleep", "120"], None)
    print(p.proc.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@linux_only
def test_a_bench_killed_by_sigkill_takes_its_children_with_it() -> None:
    """A bench (``procs.start`` a ``sleep`` in a session of its own) is SIGKILLed: the sleep gets SIGTERM
    from the kernel and ends. Before: it ran on (re-parented to init)."""
    bench = subprocess.Popen([sys.executable, "-c", BENCH_SCRIPT], env=ENV, stdout=subprocess.PIPE, text=True)
    child: dict[int, int] = {}
    try:
        assert bench.stdout is not None
        pid = int(bench.stdout.readline())
        st = lifeline.stat(pid)
        assert st is not None
        child = {pid: st[3]}
        assert lifeline.alive(child)
        bench.kill()
        bench.wait()
        deadline = time.monotonic() + 60
        while lifeline.alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lifeline.alive(child), "the bench's child outlived a SIGKILLed bench"
    finally:
        bench.kill()
        bench.wait()
        for pid in lifeline.alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_die_with_parent_only_from_the_main_thread() -> None:
    """The kernel signals the child when the *thread* that forked it ends: none from another thread
    (unless ``waited``)."""
    assert lifeline.setpriv() is not None, "util-linux's setpriv is missing"
    argv = lifeline.die_with_parent_argv(["true"])
    assert argv[1:4] == ["--pdeathsig", "TERM", "--"] and argv[-2:] == [str(os.getpid()), "true"]
    got: list[list[str]] = []
    t = threading.Thread(
        target=lambda: got.extend(
            [lifeline.die_with_parent_argv(["true"]), lifeline.die_with_parent_argv(["true"], waited=True)]
        )
    )
    t.start()
    t.join()
    assert got[0] == ["true"] and got[1] == argv


@linux_only
def test_a_child_whose_parent_died_before_setpriv_exits_before_its_command() -> None:
    """The ``/bin/sh`` step after ``setpriv``'s ``prctl``: a parent gone by then (here: a pid that is not
    the parent) ends the child, exit code 1, before its command runs."""
    argv = lifeline.die_with_parent_argv(["sh", "-c", "echo ran"])
    wrong = [*argv[:-4], "1", *argv[-3:]]
    assert argv[-4] == str(os.getpid())
    out = subprocess.run(wrong, capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (1, "")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "ran\n")


@linux_only
def test_a_child_started_with_die_with_parent_runs_while_its_parent_lives() -> None:
    """(The signal comes at the parent's death only: a child of a live parent is untouched, and the exec
    goes through.)"""
    out = subprocess.run(
        lifeline.die_with_parent_argv(["sh", "-c", "echo ok"]), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout == "ok\n"


def test_the_reaper_keeps_no_aliases_of_lifelines_helpers() -> None:
    """Session 13: ``kvgate.bench.reaper`` re-exported ``kvgate.lifeline``'s helpers under old names
    (``_stat``, ``_scan``, ``alive``, ``terminate``, ``die_with_parent``, ...) for ``procs`` and the tests;
    they call ``lifeline`` directly now (fails before: seven callable ones, and ``DEATH_SIGNAL``). Only
    ``GRACE_S``, the reaper's own default (a number), may equal lifeline's."""
    shared = {id(v) for k, v in vars(lifeline).items() if not k.startswith("__") and callable(v)}
    aliases = sorted(k for k, v in vars(reaper).items() if not k.startswith("__") and id(v) in shared)
    assert aliases == [], f"kvgate.bench.reaper re-exports kvgate.lifeline's {aliases}"
