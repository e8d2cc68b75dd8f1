"""``kvgate serve``'s other log lines (all but the access lines, ``access.Lines``) written off the event loop.

Why: ``logging.StreamHandler`` writes each line to stderr on the thread that logs it, the event loop for
most: on a stderr pipe nobody reads (a stuck log shipper), once the access lines had filled it, the next
log line blocked the loop, and every request with it; one is the client's to trigger (an over-long
``x-request-id`` is logged at INFO), and the stop's own "draining" line hung SIGTERM (review s25-rev-gw25
F4). ``off_loop_stderr`` swaps the stderr handler ``logging.basicConfig`` installed for ``OffLoopStderr``:
a record is formatted where it is logged (as before: the same format, the same order per thread) and
handed to a writer thread of its own (``access._Writer``: pieces of at most ``PIPE_BUF`` cut at line
ends, so ``--workers`` sharing one stderr splice no line into another). At most ``access.PENDING_MAX``
bytes wait; a line that does not fit is dropped and counted, as one whose write failed (a closed stderr).

At the process's exit (``logging.shutdown``) the handler waits up to ``access.CLOSE_WAIT_S`` for what
is pending, then writes one line with the count of lines dropped, if any; what the output still has not
taken by then (a pipe stuck for good) is lost, that count line included."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from kvgate.gateway.access import CLOSE_WAIT_S, _Writer, write_pieces


class OffLoopStderr(logging.Handler):
    """Each record's line to ``stream`` (a real file descriptor) on a writer thread, never on the caller's."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._writer: _Writer | None = None  # (started at the first line)
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
            writer = self._writer = _Writer(self._write, "kvgate-log")
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
            return off
    return None


def _flush_before_tracebacks(off: OffLoopStderr) -> None:
    """An uncaught exception's traceback is written to stderr at once, by the crashing thread: the lines
    logged before it, still with the writer, would land after it or inside it (review s25-rev-fixgw25 F2).
    The hooks wait for them first (``flush``: at most ``CLOSE_WAIT_S``, once)."""
    import threading

    sys_hook, thread_hook = sys.excepthook, threading.excepthook

    def on_uncaught(*args: object) -> None:
        off.flush()
        sys_hook(*args)  # type: ignore[arg-type]

    def on_thread(args: threading.ExceptHookArgs) -> None:
        off.flush()
        thread_hook(args)

    sys.excepthook = on_uncaught
    threading.excepthook = on_thread
