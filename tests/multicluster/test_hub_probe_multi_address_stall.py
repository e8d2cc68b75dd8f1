"""Review s16-hard (hub probe, 6cc56dd): a host name with several addresses, the first refused, the gateway
listening on the second: an event loop stalled past the probe's timeout while the connect to the first
is in flight judges the listening gateway down. The refusal and the timeout come in the same loop turn,
the timeout wins, ``connects`` returns ``_connected(first socket)`` and never tries the second address.

(With a loopback gateway the second connect completes inside the kernel before the cancel lands, so the
gateway is given an RTT: the loop's ``sock_connect`` to the gateway's port waits 10 ms before connecting,
as a SYN-ACK from a gateway 10 ms away would. The first address's refusal is real.)

The resolver's answer is given (as /etc/hosts gives ``localhost`` -> ::1 then 127.0.0.1 on a dual-stack
host, or a load balancer's name with one dead address): ``socket.getaddrinfo`` is replaced for one test
name only. The same probe without the stall returns True (control), so only the stall judges it down:
after the stall the timeout lands on the second address's connect at once, with no time of its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from kvgate.multicluster.hub import connects

NAME = "dual.kvgate-review.test"


@pytest.fixture
def dual(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        if host != NAME:
            return real(host, port, *a, **k)
        # first an address nothing listens on (refused: 127.0.0.2, the gateway listens on 127.0.0.1 only),
        # then the gateway's (the port as asked: the probe's lookups ask none, fixkvhub17)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port or 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def _rtt(port: int) -> None:
    loop = asyncio.get_running_loop()
    real = loop.sock_connect

    async def sock_connect(sock: socket.socket, addr: Any) -> None:
        if addr == ("127.0.0.1", port):
            await asyncio.sleep(0.01)  # (the gateway is 10 ms away)
        return await real(sock, addr)

    loop.sock_connect = sock_connect  # type: ignore[method-assign]


async def test_control_no_stall_second_address_is_tried(dual: Any) -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _rtt(port)
    try:
        assert await connects(f"{NAME}:{port}", 0.5)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_stalled_loop_does_not_judge_a_listening_gateway_with_two_addresses_down(dual: Any) -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        _rtt(port)
        loop = asyncio.get_running_loop()
        real = loop.sock_connect
        started: list[int] = []

        async def spy(sock: socket.socket, addr: Any) -> None:
            started.append(addr[1])
            return await real(sock, addr)

        loop.sock_connect = spy  # type: ignore[method-assign]
        res = []
        for turns in range(40):  # (enough turns for the lookup's thread to answer)
            started.clear()
            task = asyncio.create_task(connects(f"{NAME}:{port}", 0.05))
            for _ in range(turns):
                await asyncio.sleep(0)
                if started:  # the first address's connect is in flight: stall now
                    break
            time.sleep(0.2)  # noqa: ASYNC251 (deliberate: the loop stalls 4x the probe's timeout)
            res.append((turns, await task))
        assert res == [(t, True) for t in range(40)]
    finally:
        listener.close()
        await listener.wait_closed()
