"""Review s30-rev-b30 F3: ``tokenize._forget_threads`` (the at-fork hook, 5e83242f) renews the pending lock
but not ``_BY_PATH_LOCK``, which ``load`` takes on the loader thread and on a reload's warm thread: a child
forked while one of them holds it never loads a tokenizer (``load`` blocks on it for good). The child here
only tries the lock for 5 s, so it cannot hang. (``--workers`` workers are spawned, not forked: this is an
``os.fork`` user's case.) Fails on main b00cbefc and ac00c309; copied from the review's tests (fixrevb30)."""

from __future__ import annotations

import os
import threading
import time

from kvgate.scheduling import tokenize


def test_a_forked_child_can_take_the_tokenizer_cache_lock() -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # (a load on another thread, inside its cache update)
        with tokenize._BY_PATH_LOCK:
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        assert held.wait(60)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if tokenize._BY_PATH_LOCK.acquire(timeout=5) else 3
            finally:
                os._exit(code)
    finally:
        release.set()
        t.join(60)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "the forked child never exited"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the child inherited the lock held by a parent's thread"
