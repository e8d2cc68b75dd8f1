"""A signal wakes a bench's asyncio event loop whatever thread the kernel gives it to.

CPython runs a Python signal handler on the main thread only, between bytecodes; its C handler, run by
whichever thread took the signal, sets a flag and writes the signal's number to the wakeup fd
(``signal.set_wakeup_fd``) when one is set. asyncio's selector loop sets one only while it has handlers
of its own (``loop.add_signal_handler``); ``asyncio.run``'s Ctrl-C handler and the reaper's SIGTERM /
SIGHUP handler are ``signal.signal`` ones. So a process-directed signal taken by another thread (the
kernel gives it to one when the main thread is not eligible, e.g. while it blocks every signal across a
``subprocess`` fork, ``_posixsubprocess``'s vfork; executor threads and 3.11's ``ThreadedChildWatcher``
threads, blocked in waitpid, can take it), or one handled on the main thread just before it enters
``epoll_wait`` (the flag set, no EINTR left to end the wait), left the main thread asleep until the loop's
next timer: ``asyncio.sleep(120)``, 120 s (session 32's CI: ``test_reaper[SIGINT]`` not ended in 30 s).

uvloop sets a wakeup fd in every run on the main thread for this reason; ``install()`` makes asyncio's
loops (``asyncio.run``, ``asyncio.new_event_loop``) do the same: while one runs on the main thread, the
wakeup fd is its self-pipe, as ``add_signal_handler`` sets it. The byte only wakes the loop (asyncio
ignores a signal it has no handler for); the Python handler then runs on the main thread as before, so
``asyncio.run``'s Ctrl-C stays as it was: the first cancels the main task (the benches' ``finally``
blocks run), a second raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import warnings
from typing import Any


class WakingLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop; while it runs on the main thread, every signal wakes it."""

    _waking = False

    def run_forever(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return super().run_forever()  # (only the main thread runs Python handlers or sets the fd)
        mine = self._self_fd()
        previous = signal.set_wakeup_fd(mine)
        self._waking = True
        try:
            super().run_forever()
        finally:
            self._waking = False
            if not self._handlers():  # (asyncio's own keep it set while it has handlers)
                # (never left on this loop's fd: it is closed with the loop, and the number reused)
                signal.set_wakeup_fd(-1 if previous == mine else previous)

    def remove_signal_handler(self, sig: int) -> bool:
        removed = super().remove_signal_handler(sig)  # (the last one removed unsets the wakeup fd)
        if self._waking:
            signal.set_wakeup_fd(self._self_fd())
        return removed

    # asyncio's own self-pipe and handler table (``_UnixSelectorEventLoop``), as its add_signal_handler uses
    def _self_fd(self) -> int:
        return int(self._csock.fileno())  # type: ignore[attr-defined]

    def _handlers(self) -> dict[int, Any]:
        return self._signal_handlers  # type: ignore[attr-defined]


class _Policy(asyncio.DefaultEventLoopPolicy):  # (3.11: its child watcher kept)
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return WakingLoop()


def install() -> None:
    """Make the loops ``asyncio.run`` creates in this process ``WakingLoop``s (once; a policy set by
    someone else is kept). ``kvgate.bench.reaper.install`` calls it: every bench entry point does."""
    with warnings.catch_warnings():  # (3.14 deprecates the policies; nothing else reaches asyncio.run)
        warnings.simplefilter("ignore", DeprecationWarning)
        current = asyncio.get_event_loop_policy()
        if type(current) is asyncio.DefaultEventLoopPolicy:
            asyncio.set_event_loop_policy(_Policy())
