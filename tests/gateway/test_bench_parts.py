"""The benchmark's building blocks work (the benchmark itself is a script, not a test)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from kvgate.bench import gateway_overhead as go
from kvgate.bench import peers


def test_peer_commands_and_launch_guards(tmp_path, monkeypatch):
    monkeypatch.setenv("KVGATE_PEERS_DIR", str(tmp_path))
    sg = peers.PEERS["sglang-router"]
    cmd = sg.command(
        peers.venv_python(sg), ["http://127.0.0.1:1", "http://127.0.0.1:2"], "cache_aware", "127.0.0.1", 30000
    )
    assert cmd[1:3] == ["-m", "sglang_router.launch_router"]
    assert cmd[cmd.index("--worker-urls") + 1 : cmd.index("--policy")] == [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    ]
    vr = peers.PEERS["vllm-router"]
    assert Path(
        vr.command(peers.venv_python(vr), ["http://127.0.0.1:1"], "round_robin", "127.0.0.1", 1)[0]
    ).name == ("vllm-router")
    assert not peers.is_installed(sg)  # empty cache dir
    with pytest.raises(ValueError, match="only launched on"):
        peers.launch(sg, ["http://127.0.0.1:1"], policy="round_robin", port=1, host="0.0.0.0")
    with pytest.raises(ValueError, match="no policy"):
        peers.launch(sg, ["http://127.0.0.1:1"], policy="fastest", port=1)


async def test_backend_and_load_generator_round_trip():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(go._BackendProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await go._loadgen(port, 300, 8)
        assert result["requests"] == 300 and result["errors"] == 0
        assert result["p99_ms"] >= result["p50_ms"] > 0
        assert "cores" not in result  # no router to watch
        # Watching this process (the "router" and the backend are this loop): the CPU window is the
        # timed gather plus the /proc reads at its two ends, not the connects or the teardown.
        # 3,000 requests: /proc counts CPU in 10 ms ticks, and 300 fast requests could end inside one
        # tick on a quiet machine (cpu_us_per_req read 0.0 in ~1 of 6 runs)
        watched = await go._loadgen(port, 3000, 8, os.getpid(), os.getpid())
        assert watched["requests"] == 3000 and watched["cpu_window_s"] >= watched["wall_s"]
        assert watched["cpu_us_per_req"] > 0 and watched["cores"] >= watched["top_thread"] >= 0
    finally:
        server.close()


def test_window_figures_divide_by_the_cpu_window_not_the_wall_time():
    """Review s12-tp L1: ``cores`` and ``top_thread`` were the CPU between reads taken before the load
    generator was spawned and after it exited, divided by its gather time only (so a thread could read
    above 1.00 of a core). Now both ends are read by the load generator around its gather, and the
    figures are divided by that window, whose length and tick resolution come with them."""
    threads0 = {(1, 1): 10.0, (1, 2): 2.0}
    threads1 = {(1, 1): 10.25, (1, 2): 2.05}
    f = go.window_figures((4.0, 1.0), (4.2, 1.1), threads0, threads1, 0.03, window_s=0.25, requests=1000)
    assert f["user_us_per_req"] == pytest.approx(200.0)
    assert f["sys_us_per_req"] == pytest.approx(100.0)
    assert f["cpu_us_per_req"] == pytest.approx(300.0)
    assert f["backend_cpu_us_per_req"] == pytest.approx(30.0)
    assert f["cores"] == pytest.approx(0.30 / 0.25)
    assert f["top_thread"] == pytest.approx(1.0)  # a thread busy the whole window: one core, not more
    assert f["busy_threads"] == 2  # 0.05 s of 0.25 s is 0.2 of a core: busy (>= 0.1)
    assert f["cpu_window_s"] == 0.25
    assert f["tick_frac"] == pytest.approx(1.0 / go.CLK_TCK / 0.25)  # 0.04 at 100 ticks/s


def test_split_pin_parses_the_cpu_suffix():
    assert go.split_pin("kvgate") == ("kvgate", None)
    assert go.split_pin("sglang-router:cache_aware") == ("sglang-router:cache_aware", None)
    assert go.split_pin("kvgate@base/cpu0") == ("kvgate@base", {0})
    assert go.split_pin("sglang-router:cache_aware/cpu0-0") == ("sglang-router:cache_aware", {0})
    for bad in ("kvgate/cpu", "kvgate/cpux", "kvgate/cpu1-0", "kvgate/cpu0-x"):
        with pytest.raises(ValueError, match="/cpuN"):
            go.split_pin(bad)
    with pytest.raises(ValueError, match="no router"):
        go.split_pin("direct/cpu0")
    with pytest.raises(ValueError, match="runs the bench on CPUs"):
        go.split_pin("kvgate/cpu4096")


def test_pinned_children_inherit_the_cpus_and_the_bench_is_unpinned_after():
    import subprocess
    import sys

    before = os.sched_getaffinity(0)
    one = min(before)
    with go._pinned({one}):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            check=True,
        )
    assert child.stdout.decode().strip() == str([one])
    assert os.sched_getaffinity(0) == before
    with go._pinned(None):
        assert os.sched_getaffinity(0) == before


def test_thread_spread_counts_cores_and_the_busiest_thread():
    before = {(1, 1): 10.0, (1, 2): 5.0, (1, 3): 1.0}
    after = {(1, 1): 10.9, (1, 2): 5.5, (1, 3): 1.01, (1, 4): 0.2}  # (1, 4) started in the window
    s = go.thread_spread(before, after, wall_s=1.0)
    assert s["cores"] == pytest.approx(0.9 + 0.5 + 0.01 + 0.2)
    assert s["top_thread"] == pytest.approx(0.9)
    assert s["busy_threads"] == 3  # 0.9, 0.5 and 0.2 of a core; 0.01 is not busy
    assert go.thread_spread({}, {}, wall_s=1.0) == {"cores": 0.0, "top_thread": 0.0, "busy_threads": 0.0}


def test_tree_thread_cpu_reads_every_thread_of_this_process():
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        threads = go._tree_thread_cpu_s(os.getpid())
        assert {tid for (pid, tid) in threads if pid == os.getpid()} >= {os.getpid(), t.native_id}
        assert sum(threads.values()) <= go._tree_cpu_s(os.getpid()) + 0.05
    finally:
        stop.set()
        t.join()


def test_ratio_lines_pair_paths_pinned_alike():
    def rows(*rps):
        return [{"rps": r, "cpu_us_per_req": 100.0} for r in rps]

    lines = go.ratio_lines(
        {
            "direct": rows(50.0, 50.0),
            "kvgate": rows(12.0, 8.0, 11.0),
            "sglang-router:cache_aware": rows(10.0, 10.0, 10.0),
            "kvgate/cpu1": rows(9.0, 9.0, 9.0),
            "sglang-router:cache_aware/cpu1": rows(6.0, 12.0, 6.0),
        }
    )
    assert lines == [
        "kvgate / sglang-router:cache_aware: throughput 1.100x (2 of 3 repeats ahead; per repeat "
        "1.100x median, 0.800-1.200x), CPU per request 1.000x",
        "kvgate/cpu1 / sglang-router:cache_aware/cpu1: throughput 1.500x (2 of 3 repeats ahead; per "
        "repeat 1.500x median, 0.750-1.500x), CPU per request 1.000x",
    ]


def test_cpu_split_is_user_and_system_of_the_process_and_its_tree():
    sum(i * i for i in range(200_000))  # some user time
    user, system = go._cpu_split_s(os.getpid())
    assert user > 0 and system >= 0
    assert go._cpu_s(os.getpid()) == pytest.approx(user + system, abs=0.05)
    tree_user, tree_system = go._tree_cpu_split_s(os.getpid())
    assert tree_user >= user - 0.05 and tree_system >= system - 0.05
    assert go._tree_cpu_s(os.getpid()) == pytest.approx(tree_user + tree_system, abs=0.05)


def test_the_table_shows_user_and_system_cpu_per_request(capsys):
    def row(rps, user, system):
        return {
            "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "cpu_us_per_req": user + system,
            "user_us_per_req": user, "sys_us_per_req": system, "cores": 0.5, "top_thread": 0.5,
        }  # fmt: skip

    go._print_table({"direct": [row(9.0, 5.0, 5.0)], "kvgate": [row(5.0, 60.0, 40.0)]})
    out = capsys.readouterr().out
    assert "| user / sys us |" in out
    assert "| kvgate | 5 | 1.0 | 2.0 | 0.0 | 0.0 | 100 | 60 / 40 | 0.50 | 0.50 | 0 |" in out
    assert "| direct | 9 | 1.0 | 2.0 | - | - | - | - | 0.50 | 0.50 | 0 |" in out


def test_added_latency_is_only_over_a_measured_direct_path(capsys):
    """Without a ``direct`` path in the run the "added" columns say n/a; they printed each path's own
    p50 / p99 as "added" (subtracted from 0)."""
    row = {
        "rps": 5.0, "p50_ms": 1.5, "p99_ms": 4.0, "errors": 0, "cpu_us_per_req": 100.0,
        "user_us_per_req": 60.0, "sys_us_per_req": 40.0, "cores": 0.5, "top_thread": 0.5,
    }  # fmt: skip
    go._print_table({"kvgate": [row]})
    out = capsys.readouterr().out
    assert "| kvgate | 5 | 1.5 | 4.0 | n/a | n/a | 100 |" in out
    assert "no direct path measured in this run" in out
    go._print_table({"direct": [{**row, "p50_ms": 1.0, "p99_ms": 3.0}], "kvgate": [row]})
    out = capsys.readouterr().out
    assert "| kvgate | 5 | 1.5 | 4.0 | 0.5 | 1.0 | 100 |" in out
    assert "no direct path" not in out


def test_pin_plan_puts_the_router_alone_on_the_highest_cpu():
    assert go.pin_plan({0, 1}) == ({1}, {0})
    assert go.pin_plan({0, 3, 5}) == ({5}, {0, 3})
    with pytest.raises(ValueError, match="two CPUs or more"):
        go.pin_plan({0})
    assert go.cpus_text({0, 1, 2, 5}) == "0-2,5" and go.cpus_text([1]) == "1"


def test_repeat_order_reverses_every_other_repeat_only_when_asked():
    paths = ["direct", "kvgate", "sglang-router:cache_aware"]
    assert [go.repeat_order(paths, r, alternate=True) for r in range(3)] == [paths, paths[::-1], paths]
    assert go.repeat_order(paths, 1, alternate=False) == paths


def test_a_child_started_pinned_has_every_thread_on_that_cpu():
    """What ``--pin`` prints is read back from the kernel for each thread of the started child,
    threads it starts after the pin included."""
    import sys

    cpu = max(os.sched_getaffinity(0))
    code = (
        "import threading, time\n"
        "ts = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(2)]\n"
        "[t.start() for t in ts]\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    with go._pinned({cpu}):
        child = go._spawn([sys.executable, "-c", code])
    try:
        go._wait_line(child, b"ready")
        threads = go.tree_affinity(child.pid)
        assert len(threads) == 3 and all(cpus == {cpu} for cpus in threads.values())
        assert go.affinity_text(threads) == f"cpu {cpu} (3 threads), 1 process"
    finally:
        go._stop(child)
    assert (
        go.affinity_text({(1, 1): {0}, (1, 2): {0, 1}}) == "cpu 0 (1 thread); cpu 0-1 (1 thread), 1 process"
    )


def test_pin_runs_routers_backend_and_load_generator_on_their_cpus(monkeypatch, capsys):
    """``run --pin``: the backend and every load generator start on the client CPUs, every router on
    the router CPU (the real children's affinity read back; the processes here are stand-ins), the
    order alternates, and the bench is unpinned again after."""
    import argparse
    import subprocess
    import sys

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("--pin needs two CPUs")
    router_cpus, client_cpus = go.pin_plan(allowed)
    real_spawn = go._spawn
    sleeper = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"]
    started: list[tuple[str, set[int]]] = []

    def fake_spawn(args, **kw):
        started.append(("backend", os.sched_getaffinity(0)))
        return real_spawn(sleeper, **kw)

    def fake_router(name, log_dir):
        started.append((name, os.sched_getaffinity(0)))
        if name == "direct":
            return None
        proc = real_spawn(sleeper)
        go._wait_line(proc, b"ready")
        return proc

    def fake_loadgen(port, requests, concurrency, router_pid=0, backend_pid=0):
        started.append(("loadgen", os.sched_getaffinity(0)))
        r = {
            "rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "errors": 0, "cpu_us_per_req": 1.0,
            "user_us_per_req": 1.0, "sys_us_per_req": 0.0, "cores": 0.5, "top_thread": 0.5,
            "busy_threads": 1.0, "tick_frac": 0.01, "cpu_window_s": 1.0, "backend_cpu_us_per_req": 1.0,
            "loadgen_cpu_us_per_req": 1.0, "client_cores": 0.5,
        }  # fmt: skip
        # what the real load generator reports about itself: the affinity it inherited
        out = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            check=True,
        )
        r["loadgen_cpus"] = json.loads(out.stdout)
        return r

    monkeypatch.setattr(go, "_spawn", fake_spawn)
    monkeypatch.setattr(go, "_start_router", fake_router)
    monkeypatch.setattr(go, "_run_loadgen", fake_loadgen)
    monkeypatch.setattr(peers, "ensure_installed", lambda peer: None)
    args = argparse.Namespace(
        paths="direct,kvgate,sglang-router:cache_aware", pin=True, requests=10, repeats=2, warmup=1,
        concurrency=1, streams=0,
    )  # fmt: skip
    assert go.run(args) == 0
    assert os.sched_getaffinity(0) == allowed
    routers = [(n, c) for n, c in started if n not in ("backend", "loadgen")]
    order = ["direct", "kvgate", "sglang-router:cache_aware"]
    assert [n for n, _ in routers] == order + order[::-1]
    assert all(c == router_cpus for _, c in routers)
    assert all(c == client_cpus for n, c in started if n in ("backend", "loadgen"))
    out = capsys.readouterr().out
    router, client = go.cpus_text(router_cpus), go.cpus_text(client_cpus)
    assert (
        f"every router (its threads and children) on cpu {router}, the load generator and the backend "
        f"on cpu {client}" in out
    )
    assert "backend pid" in out and f": cpu {client} (1 thread), 1 process" in out
    assert out.count(f"router on cpu {router} (1 thread), 1 process; load generator on cpu {client}") == 4
    assert (
        "kvgate / sglang-router:cache_aware: throughput 1.000x (0 of 2 repeats ahead; per repeat 1.000x"
        in out
    )


def test_pin_refuses_per_path_pins():
    import argparse

    args = argparse.Namespace(
        paths="kvgate/cpu0", pin=True, requests=1, repeats=1, warmup=1, concurrency=1, streams=0
    )
    with pytest.raises(SystemExit, match="drop the /cpuN"):
        go.run(args)
