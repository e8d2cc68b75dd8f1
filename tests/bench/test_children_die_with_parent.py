"""Every process a bench or a harness starts itself dies with it, even when it is killed by SIGKILL (session
15, hard15): ``PR_SET_PDEATHSIG`` through ``lifeline.die_with_parent_argv(cmd)`` (``setpriv --pdeathsig``
as the command's prefix; a ``preexec_fn`` until fixfork15, which broke children of a process running gRPC),
or, for a child not started by an exec (a ``multiprocessing`` spawn target, a fork without an exec),
``lifeline.die_with(parent)`` called first thing in the child. Unlike the watchdog's sweep, this holds
for a child exec'd with an environment of its own (``env -i``, a caller's ``env=``), one that rewrote its
title (``setproctitle``) or closed its descriptors (``closerange``), and one started within the
watchdog's last tick: the kernel keeps the setting across all of that (not across a set-user-ID exec).

The source checks read every module of ``kvgate.bench``, ``kvgate.realvllm`` and ``scripts/`` (``ast``):
before, 34 call sites started children without it (the installs' pip and venv, ``realvllm
check-hash`` with its own environment, ``netns``'s ``ip``, inference-perf's, the scripts' servers), two
spawn targets and one fork. The process tests run real children."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvgate import lifeline

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != lifeline.ENV_VAR} | {"PYTHONPATH": str(ROOT / "src")}
SOURCES = [
    *sorted((ROOT / "src" / "kvgate" / "bench").rglob("*.py")),
    *sorted((ROOT / "src" / "kvgate" / "realvllm").rglob("*.py")),
    *sorted((ROOT / "scripts").rglob("*.py")),
]
STARTS = {
    ("subprocess", "Popen"),
    ("subprocess", "run"),
    ("subprocess", "call"),
    ("subprocess", "check_call"),
    ("subprocess", "check_output"),
    ("asyncio", "create_subprocess_exec"),
    ("asyncio", "create_subprocess_shell"),
}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")


def _name(node: ast.expr) -> str:
    return ast.unparse(node)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _calls_die_with(fn: ast.AST) -> bool:
    return any(_name(c.func) == "lifeline.die_with" for c in _calls(fn))


def _argv(call: ast.Call) -> ast.Call | None:
    """The ``lifeline.die_with_parent_argv(...)`` call a start's command is (its first argument, or
    ``*`` of it); None if it is not one."""
    if not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Starred):
        first = first.value
    if isinstance(first, ast.Call) and _name(first.func) == "lifeline.die_with_parent_argv":
        return first
    return None


def test_every_subprocess_a_bench_or_harness_starts_dies_with_it() -> None:
    """Every start's command goes through ``lifeline.die_with_parent_argv`` and none passes a
    ``preexec_fn`` (which makes ``subprocess`` fork and run grpcio's fork handlers: fixfork15)."""
    missing = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(), str(path))):
            f = call.func
            if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)):
                continue
            if (f.value.id, f.attr) not in STARTS:
                continue
            kw = {k.arg: k.value for k in call.keywords}
            if "preexec_fn" in kw or _argv(call) is None:
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno} {f.value.id}.{f.attr}")
    assert not missing, (
        "children started without lifeline.die_with_parent_argv(), or with a preexec_fn:\n"
        + ("\n".join(missing))
    )


def test_every_spawned_or_forked_child_of_a_bench_or_harness_dies_with_it() -> None:
    """A ``multiprocessing`` ``Process(target=f)``: ``f`` calls ``lifeline.die_with``; an ``os.fork()``:
    the function forking calls it (in the child's branch)."""
    missing = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        defs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if _name(call.func).endswith(".Process") and "target" in kw:
                target = defs.get(_name(kw["target"]))
                if target is None or not _calls_die_with(target):
                    missing.append(f"{where} Process(target={_name(kw['target'])})")
        for fn in defs.values():
            forks = [c for c in _calls(fn) if _name(c.func) == "os.fork"]
            if forks and not _calls_die_with(fn):
                missing.append(f"{path.relative_to(ROOT)}:{forks[0].lineno} os.fork() in {fn.name}")
    assert not missing, "children started without lifeline.die_with:\n" + "\n".join(missing)


# A parent (its own session, so the test can kill it alone) that starts, with ``die_with_parent_argv()``, a
# child whose environment is rebuilt (``env -i``) and which rewrites its environment block (as
# ``setproctitle`` does) and closes every descriptor but its stdout (``closerange``); and a ``spawn``
# child that calls ``die_with``. Prints both pids once both run, then waits.
_PARENT = r"""
import multiprocessing as mp, subprocess, sys, time
from kvgate import lifeline

def spawned(ready):
    lifeline.die_with(mp.parent_process().pid)
    ready.set()
    time.sleep(120)

if __name__ == "__main__":
    child = ("import os, sys, time; os.closerange(3, 1 << 16); "
             "print(os.getpid(), flush=True); os.closerange(0, 1); time.sleep(120)")
    p = subprocess.Popen(lifeline.die_with_parent_argv(["env", "-i", sys.executable, "-c", child]),
                         stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    s = ctx.Process(target=spawned, args=(ready,))
    s.start()
    assert ready.wait(60)
    print(pid, s.pid, flush=True)
    time.sleep(120)
"""


def test_children_started_so_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the parent (no watchdog, no reaper): both children end (the kernel's SIGTERM). Without
    ``die_with`` in the spawn target, that child runs on (checked by the source test above)."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2, "the parent did not start its children"
        procs = {pid: st[3] for pid in pids if (st := lifeline.stat(pid)) is not None}
        assert len(procs) == 2
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while (left := lifeline.alive(procs)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"ran on after their parent's SIGKILL: {sorted(left)}"
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_die_with_ends_a_child_whose_parent_died_already() -> None:
    """A parent dead before ``die_with`` ran (the child re-parented already: no signal will come): the
    child exits at once, code 1."""
    code = (
        "import os, sys, time; from kvgate import lifeline\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    while os.getppid() == parent: time.sleep(0.01)\n"
        "    print('re-parented', flush=True)\n"
        "    lifeline.die_with(parent); print('ran on', flush=True); os._exit(0)\n"
        "else:\n"
        "    os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # (``run`` read to the pipe's end: the grandchild, which holds it too, had exited; it reached
    # ``die_with`` and ended there, not of an error: review s15-hard L5)
    assert "re-parented" in out.stdout, out.stdout
    assert out.stderr == "", out.stderr
    assert "ran on" not in out.stdout, "the child ran on"


# ``die_with(multiprocessing.parent_process().pid)`` in a child of each start method, then a marker.
_CONTEXTS = r"""
import multiprocessing as mp, sys
from kvgate import lifeline

def target():
    assert lifeline.die_with(mp.parent_process().pid)
    print("ran", flush=True)

if __name__ == "__main__":
    p = mp.get_context(sys.argv[1]).Process(target=target)
    p.start()
    p.join(60)
    print("exitcode", p.exitcode, flush=True)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_die_with_runs_on_in_a_child_of_each_start_method(tmp_path: Path, method: str) -> None:
    """A ``forkserver`` child's parent is the fork server, not ``parent_process()``: ``die_with`` does not
    take that for its parent gone (before: exit code 1 at once; review s15-hard L4)."""
    script = tmp_path / "contexts.py"
    script.write_text(_CONTEXTS)
    out = subprocess.run(
        [sys.executable, str(script), method], env=ENV, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ran", "exitcode", "0"], (out.stdout, out.stderr)


def _module_calls(fn: ast.AST, defs: dict[str, ast.FunctionDef]) -> list[ast.FunctionDef]:
    """``fn`` and the functions of its module it calls (by name), transitively."""
    seen: dict[str, ast.FunctionDef] = {}
    todo = [fn]
    while todo:
        f = todo.pop()
        for c in _calls(f):
            name = _name(c.func)
            if name in defs and name not in seen:
                seen[name] = defs[name]
                todo.append(defs[name])
    return [f for f in [fn, *seen.values()] if isinstance(f, ast.FunctionDef)]


def test_every_start_in_a_worker_thread_passes_waited() -> None:
    """A function run through ``asyncio.to_thread`` (``f`` or ``module.f`` of these sources), and the
    functions of its module it calls: each start there is a ``subprocess.run`` (its thread waits for the
    child) with ``die_with_parent_argv(waited=True)``; without it, ``die_with_parent_argv()`` adds nothing in
    a worker thread, so the child gets no parent-death signal (review s15-hard L3: the peer routers' and
    inference-perf's installs)."""
    by_module = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        by_module[path.stem] = (
            path,
            tree,
            {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)},
        )
    missing, checked = [], 0
    for path, tree, defs in by_module.values():
        for call in _calls(tree):
            if _name(call.func) != "asyncio.to_thread" or not call.args:
                continue
            target = _name(call.args[0])
            mod, _, fname = target.rpartition(".")
            where_path, _, where_defs = by_module.get(mod, (path, tree, defs)) if mod else (path, tree, defs)
            fn = where_defs.get(fname)
            if fn is None:
                continue
            for f in _module_calls(fn, where_defs):
                for start in _calls(f):
                    sf = start.func
                    if not (isinstance(sf, ast.Attribute) and isinstance(sf.value, ast.Name)):
                        continue
                    if (sf.value.id, sf.attr) not in STARTS:
                        continue
                    checked += 1
                    argv = _argv(start)
                    ok = (sf.value.id, sf.attr) == ("subprocess", "run") and (
                        argv is not None and "waited=True" in _name(argv)
                    )
                    if not ok:
                        missing.append(f"{where_path.relative_to(ROOT)}:{start.lineno} (through {target})")
    assert checked >= 5, f"the worker-thread starts were not found ({checked})"
    assert not missing, "starts in a worker thread without die_with_parent_argv(waited=True):\n" + "\n".join(
        missing
    )


def test_inference_perf_probe_run_as_the_bench_runs_it_gets_the_parent_death_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``inference_perf`` runs its install (``_works``, venv, pip) through ``asyncio.to_thread``: the child
    still gets the parent-death signal (``setpriv``; review s15-hard L3), and no ``preexec_fn``."""
    import asyncio
    from typing import Any

    from kvgate.bench import inference_perf

    seen: list[Any] = []
    real = subprocess.run

    def spy(*args: Any, **kw: Any) -> Any:
        assert "preexec_fn" not in kw
        seen.append(args[0][0])
        return real(*args, **kw)

    monkeypatch.setattr(inference_perf.subprocess, "run", spy)
    assert asyncio.run(asyncio.to_thread(inference_perf._works, sys.executable)) is (
        sys.version_info >= (3, 12)
    )
    assert seen and seen[0] == lifeline.setpriv(), "started from a worker thread: no PR_SET_PDEATHSIG"


# A parent (its own session) that runs, in a worker thread, ``subprocess.run`` of a child with
# ``die_with_parent_argv(waited=True)``; prints the child's pid once it runs, then waits.
_THREAD_PARENT = r"""
import subprocess, sys, threading, time
from kvgate import lifeline

def install():
    cmd = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"]
    subprocess.run(lifeline.die_with_parent_argv(cmd, waited=True))

threading.Thread(target=install, daemon=True).start()
time.sleep(120)
"""


def test_a_child_run_from_a_worker_thread_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    """``subprocess.run`` in a worker thread with ``die_with_parent_argv(waited=True)``: SIGKILL of the parent
    ends the child (before, no parent-death signal there: it ran on; review s15-hard L3)."""
    script = tmp_path / "parent.py"
    script.write_text(_THREAD_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    pid = 0
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        st = lifeline.stat(pid)
        assert st is not None
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while (left := lifeline.alive({pid: st[3]})) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, "the child run from a worker thread ran on after its parent's SIGKILL"
    finally:
        parent.kill()
        parent.wait()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
