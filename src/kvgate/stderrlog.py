"""Log output written off the event loop, in every door (``kvgate serve``, ``serve --clusters``, each
``--workers`` worker, ``kvgate epp``): the writer thread (``Writer``) the access log
(``gateway.access.Lines``) and the other log lines (``OffLoopStderr``) share. A top-level module (below
every package, as ``aio``), so that ``kvgate epp`` (``extproc/``, which may not import ``gateway/``)
installs the same handler.

Why: ``logging.StreamHandler`` writes each line to stderr on the thread that logs it, the event loop for
most: on a stderr pipe nobody reads (a stuck log shipper), once the access lines had filled it, the next
log line blocked the loop, and every request with it; one is the client's to trigger (an over-long
``x-request-id`` is logged at INFO), and the stop's own "draining" line hung SIGTERM (review s25-rev-gw25
F4; ``kvgate epp`` kept logging on its loop until gw26). ``off_loop_stderr`` swaps the stderr handler
``logging.basicConfig`` installed for ``OffLoopStderr``: a record is formatted where it is logged (as
before: the same format, the same order per thread) and handed to a writer thread of its own (pieces of
at most ``PIPE_BUF`` cut at line ends, so ``--workers`` sharing one stderr splice no line into another).
At most ``PENDING_MAX`` bytes wait; a line that does not fit is dropped and counted, as one whose write
failed (a closed stderr). The count is each door's ``<prefix>_log_lines_dropped_total`` on its
``/metrics`` (``dropped()``, read at scrape time), and one line at exit.

At the process's exit (``logging.shutdown``) the handler waits up to ``CLOSE_WAIT_S`` for what is
pending, then writes one line with the count of lines dropped, if any; what the output still has not
taken by then (a pipe stuck for good) is lost, that count line included."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO

# A pipe's write is atomic only up to PIPE_BUF (4096 on Linux, pipe(7)): ``--workers`` share one stderr, so
# a buffer goes to it in pieces of at most this many bytes cut at line ends (review s24-rev-fix24b F2).
PIPE_PIECE = 4096
# Bytes handed to the writer thread and not written yet, at most (16 full buffers): past it the output is
# not keeping up (a pipe nobody reads), and a buffer that does not fit is dropped, its lines counted.
PENDING_MAX = 1 << 20
# How long the gateway's stop waits for the writer thread to write what is left (then it is lost).
CLOSE_WAIT_S = 2.0
# The handler ``off_loop_stderr`` installed in this process (None: none), for ``dropped()``.
_installed: OffLoopStderr | None = None


def dropped() -> int:
    """Log lines this process's ``OffLoopStderr`` lost so far (0 without one): each door's
    ``<prefix>_log_lines_dropped_total``."""
    return _installed.dropped() if _installed is not None else 0


class Writer:
    """A daemon thread that writes the buffers handed to it, in order, with ``write`` (which may block: a
    pipe nobody reads). ``put`` refuses a buffer once ``PENDING_MAX`` bytes wait; ``failed`` counts the
    lines whose write raised. The thread runs for the process's life (late lines after a close)."""

    def __init__(self, write: Callable[[bytes], None], name: str) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._items: deque[tuple[bytes, int] | Callable[[], object]] = deque()
        self._pending = 0  # (bytes in ``_items`` and being written)
        self._busy = False
        self.failed = 0  # (written by the thread only)
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def put(self, data: bytes, lines: int) -> bool:
        with self._cond:
            if self._pending + len(data) > PENDING_MAX:
                return False
            self._pending += len(data)
            self._items.append((data, lines))
            self._cond.notify()
        return True

    def call(self, fn: Callable[[], object]) -> None:
        """``fn()`` on the thread after the buffers handed over before it."""
        with self._cond:
            self._items.append(fn)
            self._cond.notify()

    def wait(self, timeout: float) -> bool:
        """Until everything handed over is written (True), at most ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items))
                item = self._items.popleft()
                self._busy = True
            size, lines = 0, 0
            try:
                if callable(item):
                    item()
                else:
                    data, lines = item
                    size = len(data)
                    self._write(data)
            except (OSError, ValueError):  # (a closed or broken output: those lines lost, counted)
                self.failed += lines
            finally:
                with self._cond:
                    self._pending -= size
                    self._busy = False
                    self._cond.notify_all()


def write_pieces(fd: int, data: bytes, piece: int = PIPE_PIECE) -> None:
    """``data`` (whole lines) to ``fd`` in writes of at most ``piece`` bytes, each cut at a line's end (a
    line longer than that: a write of its own), so that no other process's write lands inside a line on a
    shared pipe (atomic up to PIPE_BUF). 16 writes per 64 KiB buffer, not one per line."""
    view = memoryview(data)
    start, end = 0, len(data)
    while start < end:
        stop = start + piece
        if stop >= end:
            stop = end
        else:
            cut = data.rfind(b"\n", start, stop)
            if cut >= 0:
                stop = cut + 1
            else:  # (one line longer than a piece: up to its end)
                cut = data.find(b"\n", stop)
                stop = end if cut < 0 else cut + 1
        while start < stop:  # (a blocking write may still be partial: a file, a signal)
            start += os.write(fd, view[start:stop])


class OffLoopStderr(logging.Handler):
    """Each record's line to ``stream`` (a real file descriptor) on a writer thread, never on the caller's."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._writer: Writer | None = None  # (started at the first line)
        self.refused = 0  # (lines the writer had no room for; under the handler's lock)
        self._stuck = False  # (a flush found the output not taking lines for CLOSE_WAIT_S: no more waits)

    def dropped(self) -> int:
        """Lines lost so far: no room left for them, or their write failed."""
        return self.refused + (self._writer.failed if self._writer is not None else 0)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        writer = self._writer
        if writer is None:
            writer = self._writer = Writer(self._write, "kvgate-log")
        if not writer.put(data, 1):
            self.refused += 1

    def _write(self, data: bytes) -> None:
        """On the writer thread: whole lines to the stream's descriptor (what its buffer holds first)."""
        self._stream.flush()
        write_pieces(self._stream.fileno(), data)

    def flush(self) -> None:
        """Waits (at most ``CLOSE_WAIT_S``, once: ``logging.shutdown`` flushes, then closes) for the lines
        handed over to be written."""
        if self._writer is not None and not self._stuck:
            self._stuck = not self._writer.wait(CLOSE_WAIT_S)

    def close(self) -> None:
        writer = self._writer
        if writer is not None and (n := self.dropped()):
            writer.put(f"{n} log lines dropped: stderr did not take them\n".encode(), 0)
        self.flush()
        super().close()


def off_loop_stderr() -> OffLoopStderr | None:
    """Swaps the root logger's plain stderr handler (``logging.basicConfig``'s) for ``OffLoopStderr``, same
    level and format; None (nothing changed) when there is none or stderr has no file descriptor."""
    global _installed
    root = logging.getLogger()
    for h in root.handlers:
        if type(h) is logging.StreamHandler and h.stream is sys.stderr:
            try:
                sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):
                return None
            off = OffLoopStderr(sys.stderr)
            off.setFormatter(h.formatter)
            off.setLevel(h.level)
            root.removeHandler(h)
            root.addHandler(off)
            _flush_before_tracebacks(off)
            _installed = off  # (for ``dropped()``: each door's /metrics)
            return off
    return None


def _flush_before_tracebacks(off: OffLoopStderr) -> None:
    """An uncaught exception's traceback is written to stderr at once, by the crashing thread: the lines
    logged before it, still with the writer, would land after it or inside it (review s25-rev-fixgw25 F2).
    The hooks wait for them first (``flush``: at most ``CLOSE_WAIT_S``, once)."""
    sys_hook, thread_hook = sys.excepthook, threading.excepthook

    def on_uncaught(*args: object) -> None:
        off.flush()
        sys_hook(*args)  # type: ignore[arg-type]

    def on_thread(args: threading.ExceptHookArgs) -> None:
        off.flush()
        thread_hook(args)

    sys.excepthook = on_uncaught
    threading.excepthook = on_thread


def say(line: str) -> None:
    """A start line on stdout in one write with its newline: ``print`` writes the text and the newline
    apart, and unbuffered (``PYTHONUNBUFFERED``) a log line from the writer thread to the same pipe could
    land between them, splicing the start line a supervisor or test reads."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
