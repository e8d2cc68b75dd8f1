"""The drain tests' "new connections are refused" poll (``drain_kit._refused``) and a listener that closes
with a connection in its accept queue (doors17): the kernel resets that connection, and when the reset
comes before asyncio's connect callback runs (the test's loop late: a loaded machine), the connect raises
``ConnectionResetError``. The gateway never accepted it, so the poll must not fail on it. Before, it
propagated: ``tests/gateway/test_workers.py::test_sigterm_drains_every_worker[cut-at-the-deadline]``
failed at load ~13 with a connection reset (session 16), and 6 resets showed in 3 runs of 32 clients
connecting around a ``--workers 2`` SIGTERM (/tmp stress script, doors17's report)."""

from __future__ import annotations

import asyncio
import socket
import time

from gateway import drain_kit


async def test_a_connect_reset_by_a_listener_closing_is_not_an_acceptance() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    poll = asyncio.create_task(drain_kit._refused(port, within_s=5))
    await asyncio.sleep(0)  # the poll's connect is issued; the kernel queues it (never accepted)
    time.sleep(0.05)  # noqa: ASYNC251 (the loop held on purpose: its connect callback runs late)
    lst.close()  # the listener closes with the connection queued: the kernel resets it
    time.sleep(0.05)  # noqa: ASYNC251
    await asyncio.wait_for(poll, 5)  # fails before: ConnectionResetError out of the poll
