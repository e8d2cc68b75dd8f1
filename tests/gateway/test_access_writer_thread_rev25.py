"""Review s25-rev-gw25 L4: the in-process access-log tests wrote to ``AccessSink``, which has no file
descriptor, so ``Lines`` took its synchronous branch and never the writer thread production uses with
stderr. These run F1's two cases (a request cut at the drain deadline, a line after the close) through a
real pipe (``conftest.PipeSink``): the writer thread, ``write_pieces``, the stop's wait. Real in-process
``GatewayServer`` and aiohttp backend on ephemeral loopback ports (all stopped)."""

from __future__ import annotations

import threading

from gateway.conftest import PipeSink, until
from gateway.test_access_cut_rev_fix24b import _cut_at_drain
from kvgate.gateway import access


async def test_a_request_cut_at_the_drain_deadline_keeps_its_line_through_the_writer(
    access_pipe: PipeSink,
) -> None:
    await _cut_at_drain()
    await until(lambda: "cut-1" in access_pipe.text, what="the cut request's line out of the pipe")
    assert access_pipe.writes == 0  # (all through the descriptor)


async def test_a_line_after_close_goes_through_the_writer_thread(access_pipe: PipeSink) -> None:
    lines = access.Lines.open(None)
    lines.add("early\n")
    lines.close()
    lines.add("late-1\n")
    assert lines._writer is not None  # (the production path: a thread, not the synchronous branch)
    assert any(t.name == "kvgate-access-log" for t in threading.enumerate())
    await until(lambda: access_pipe.text.endswith("late-1\n"), what="the late line out of the pipe")
    assert access_pipe.text == "early\nlate-1\n" and lines.dropped() == 0
