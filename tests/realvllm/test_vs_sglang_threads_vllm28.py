"""``scripts/realvllm/vs_sglang.py``'s per-thread records (which of a router's threads work and wait for a
core): read from this process's own threads, no vLLM needed."""

from __future__ import annotations

import os

from realvllm.test_vs_sglang_target import _script


def test_the_main_threads_work_is_read_by_its_own_name() -> None:
    vs = _script()
    before = vs.thread_sched([os.getpid()])
    sum(i * i for i in range(300_000))  # (some CPU on this, the main, thread)
    after = vs.thread_sched([os.getpid()])
    assert "main" in before and "main" in after  # (a process's main thread, by that name)
    delta = vs.thread_delta(before, after)
    assert delta["main"][0] > 0
    assert all(run >= 0 and wait >= 0 for run, wait in delta.values())


def test_a_delta_is_clamped_and_leaves_out_what_did_not_move() -> None:
    vs = _script()
    a = {"main": (10.0, 5.0), "ZMQbg/IO/0": (1.0, 1.0), "gone": (3.0, 3.0)}
    b = {"main": (12.5, 9.0), "ZMQbg/IO/0": (1.0, 1.0), "python": (0.5, 0.0)}
    assert vs.thread_delta(a, b) == {"main": [2.5, 4.0], "python": [0.5, 0.0]}
