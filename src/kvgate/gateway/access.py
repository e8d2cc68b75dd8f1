"""The access log: one line per finished request (qa24 F4), written cheaply (review s24-rev-fixqa24 R4).

``kvgate serve`` wraps its data routes with ``logged`` only while the log is on (``accessLog: true`` or
``--access-log``, and the ``kvgate.access`` logger enabled for INFO when the proxy is built; off by default,
with ``accessLog: false``, ``--no-access-log`` or ``--log-level warning``), so a gateway without it pays
nothing. Written, it still costs ~11 us of CPU per request (the wrapper, the proxy's notes and the line),
so it is off by default (review s24-rev-fixqa24 R4: on only if under ~6 us).
The logger is only that switch: a line does not go through ``logging`` (a LogRecord, the caller's frame,
``asctime``, a write and flush: ~10 us a line alone against ~1.4 us for this one), but is one
``%`` format appended to ``Lines``, a buffer written to stderr (or ``--access-log-file``) about once a
second, at 64 KiB and at the gateway's stop: lines are lost only if the process dies without stopping
(at most a second's), or if the output does not take them (below). The line looks as the logging format
made it.

The writes themselves run on a thread of their own (``kvgate.stderrlog.Writer``), never on the event
loop: a stderr pipe whose reader stopped reading (a stuck log shipper) blocked the loop in ``flush``, and
every request with it (session-24 closing note). The loop hands each buffer over; at most ``PENDING_MAX``
bytes wait for the thread, a buffer that does not fit is dropped whole and its lines counted
(``kvgate_gateway_access_log_lines_dropped_total``; so are lines whose write failed: a closed stderr);
no line is ever cut or spliced. It never carries a header value other
than the request id, nor a body: no prompt, no API key. The proxy fills the request's ``Note`` as it goes
(the model, each attempt's endpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO

from kvgate.requestid import acceptable
from kvgate.stderrlog import CLOSE_WAIT_S, Writer, write_pieces

if TYPE_CHECKING:
    from kvgate.httpfront.server import Request, Response, StreamResponse

ACCESS = logging.getLogger("kvgate.access")
# (the status of a request whose client left before its answer: nginx's convention)
CLIENT_GONE = 499
_FORMAT = "%s %s %s %s %d model=%s endpoint=%s attempts=%d ms=%.1f bytes=%d\n"
# The buffer is written at most this long after its first line, or once it holds this many characters.
FLUSH_S = 1.0
FLUSH_CHARS = 1 << 16


def stderr() -> TextIO:
    """Where the lines go without ``--access-log-file`` (read when the proxy is built)."""
    return sys.stderr


class Lines:
    """The access lines not written yet. ``add`` appends (no I/O); the first line after a write schedules
    the next one ``FLUSH_S`` later on the running loop (one timer a second, not one per line). ``close``
    writes what is left (the gateway's stop); a line added after it (a request cut at the drain's end whose
    handler ends later) is written at once (review s24-rev-fix24b F1). ``wall``: the clock of the stamp
    (time.time). ``path``: the file ``out`` is (``own``), reopened for such a late line."""

    __slots__ = ("_buf", "_chars", "_dropped", "_due", "_limit", "_out", "_own", "_path", "_prefix", "_sec",
                 "_tag", "_wall", "_writer")  # fmt: skip

    def __init__(
        self,
        out: TextIO,
        own: bool = False,
        wall: Callable[[], float] = time.time,
        path: str | None = None,
    ) -> None:
        self._out, self._own, self._wall, self._path = out, own, wall, path
        self._buf: list[str] = []
        self._chars = 0
        self._limit = FLUSH_CHARS  # (0 once closed: each line written as it comes)
        self._due: asyncio.TimerHandle | None = None
        self._sec = -1
        self._prefix = ""
        self._dropped = 0  # (lines the writer had no room for: counted on the loop)
        self._writer: Writer | None = None  # (started at the first write to a file descriptor)
        # (as the logging format: ``--workers``' lines name their worker, as its other lines do)
        name = multiprocessing.current_process().name
        self._tag = "INFO kvgate.access:" if name == "MainProcess" else f"INFO {name} kvgate.access:"

    @classmethod
    def open(cls, path: str | None) -> Lines:
        """To ``path`` (appended; an error here stops the start, named), else to ``stderr()``."""
        if path:
            out = open(path, "a", encoding="utf-8", buffering=2 * FLUSH_CHARS)  # noqa: SIM115 (closed by close)
            return cls(out, own=True, path=path)
        return cls(stderr())

    def stamp(self) -> str:
        """``2026-12-06 08:01:02,345 INFO kvgate.access:`` (local time, as logging's ``asctime``); the
        seconds' part formatted once a second."""
        now = self._wall()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        return f"{self._prefix},{int((now - sec) * 1000):03d} {self._tag}"

    def add(self, line: str) -> None:
        self._buf.append(line)
        self._chars += len(line)
        if self._chars >= self._limit:
            self.flush()
        elif self._due is None:
            self._due = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def dropped(self) -> int:
        """Lines lost so far: no room left for them (``PENDING_MAX``), or their write failed."""
        return self._dropped + (self._writer.failed if self._writer is not None else 0)

    def flush(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._buf:
            return
        n = len(self._buf)  # (one line per ``add``)
        text = "".join(self._buf)
        self._buf.clear()
        self._chars = 0
        writer = self._writer
        if writer is None:
            if not self._own:
                try:
                    self._out.fileno()
                except (AttributeError, OSError):  # (no file descriptor: a test's sink, which cannot block)
                    with contextlib.suppress(OSError, ValueError):
                        self._out.write(text)
                        self._out.flush()
                    return
            writer = self._writer = Writer(self._write, "kvgate-access-log")
        if not writer.put(text.encode("utf-8", "backslashreplace"), n):
            self._dropped += n
        elif not self._limit:  # (closed: a late line is written before the stop goes on, if it can be)
            writer.wait(CLOSE_WAIT_S)

    def _write(self, data: bytes) -> None:
        """On the writer thread: ``data`` (whole lines) to the output."""
        out = self._out
        if not self._own:
            out.flush()  # (what stderr's own buffer holds goes first)
            write_pieces(out.fileno(), data)
        elif not out.closed:
            out.buffer.write(data)
            out.flush()
        elif self._path is not None:  # (closed: a late line appends on its own)
            with open(self._path, "ab") as f:
                f.write(data)

    def close(self) -> None:
        """Writes what is left and waits for it (at most ``CLOSE_WAIT_S``); an own file is closed once
        written. A line after this is handed over at once."""
        self.flush()
        self._limit = 0
        writer = self._writer
        if writer is None:
            if self._own:
                with contextlib.suppress(OSError):
                    self._out.close()
            return
        if self.dropped():  # (the operator's one line about it, in the log itself)
            writer.put(f"{self.stamp()} {self.dropped()} access lines dropped: the output did not take them "
                       "(kvgate_gateway_access_log_lines_dropped_total)\n".encode(), 0)  # fmt: skip
        if self._own:
            writer.call(self._out.close)
        writer.wait(CLOSE_WAIT_S)


def field(value: str) -> str:
    """A client-sent value (its request id, model, path) as one field of the line: a space, ``%``, a
    control or non-ASCII character percent-encoded (UTF-8), so no client can write the fields after it
    (qa35b F4: an id with spaces forged a line's status and endpoint). Anything else as is (one check)."""
    if value.isascii() and value.isprintable() and " " not in value and "%" not in value:
        return value
    return "".join(
        c
        if "!" <= c <= "~" and c != "%"
        else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in value
    )


class Note:
    """What ``Proxy._entry``/``_dispatch`` learn of one request for its line (``-``/0: not reached)."""

    __slots__ = ("attempts", "endpoint", "model", "rid", "sent", "status")

    def __init__(self) -> None:
        self.model = "-"
        self.endpoint = "-"
        self.attempts = 0
        self.rid = ""  # the id the gateway adopted or generated (``_entry``): kept if its client leaves
        self.sent = -1  # a relayed body's bytes (a stream), set at its end; -1: a whole answer's length
        self.status = 0  # a stream whose client left after its ``[DONE]``: its status (complete, not 499)


async def logged(
    handler: Callable[[str, Request], Awaitable[Response | StreamResponse]],
    notes: dict[int, Note],
    clock: Callable[[], float],
    lines: Lines,
    kind: str,
    request: Request,
) -> Response | StreamResponse:
    """``handler(kind, request)``, then its access line (the request's note kept in ``notes`` meanwhile)."""
    key = id(request)
    notes[key] = note = Note()
    t0 = clock()
    status = CLIENT_GONE
    resp: Response | StreamResponse | None = None
    try:
        resp = await handler(kind, request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = note.status or CLIENT_GONE
        raise
    except Exception:
        status = 500  # (the front answers an unexpected error 500)
        raise
    finally:
        del notes[key]
        rid = resp.headers.get("x-request-id") if resp is not None else None
        if rid is None:  # (no answer, its client gone: the id it was given, qa35b F2)
            rid = note.rid
            if not rid:  # (not reached ``_entry``: the client's id, if the gateway would adopt it)
                rid = request.headers.get("x-request-id") or "-"
                rid = rid if acceptable(rid) else "-"
        body = getattr(resp, "body", None)
        size = len(body) if isinstance(body, bytes) else max(note.sent, 0)
        ms = (clock() - t0) * 1000.0
        lines.add(_FORMAT % (lines.stamp(), field(rid), request.method, field(request.path), status,
                             field(note.model), note.endpoint, note.attempts, ms, size))  # fmt: skip


def refused_line(lines: Lines, rid: str, method: str, path: str, status: int, size: int) -> None:
    """The line of a request the HTTP front refused from its head or while its body arrived (401 without
    a key, 413, 408, ...; qa35b F3): no pool, no endpoint, no attempt; its time 0 (no handler ran)."""
    lines.add(_FORMAT % (lines.stamp(), field(rid), method, field(path), status, "-", "-", 0, 0.0, size))
