"""Review s12-late K1 (after s12-kv L2's fix of the task's drain): a socket error in a drain run from the
reader callback or its call_soon continuation (the steady-state path: the task is parked on ``_wake``) was
not handled as the task's drain is: the loop's exception handler logged it, the index was not cleared, and
the subscriber looked followed but applied nothing more."""

from __future__ import annotations

import asyncio

import zmq

from datalayer.test_kvevents import _followed, _until, batch, stored_map


class _Broken:
    def __init__(self, sock: zmq.Socket) -> None:
        self._s = sock
        self.FD = sock.FD

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        raise zmq.ZMQError(zmq.ETERM)

    def getsockopt(self, opt: int) -> int:
        return self._s.getsockopt(opt)


async def test_a_socket_error_in_the_reader_callback_clears_the_index_as_in_the_task(caplog):
    async with _followed(replay=False) as (pub, idx, _mgr, sub):
        await pub.publish(batch(stored_map([77], None, [1] * 4)))
        await _until(lambda: sub.stats.last_seq == pub.seq - 1)
        assert idx.num_blocks("a") > 0
        real = sub._sock
        sub._sock = _Broken(real)
        with caplog.at_level("ERROR"):
            asyncio.get_running_loop().call_soon(sub._on_readable)  # as the descriptor signalling
            await asyncio.sleep(0.1)
        sub._sock = real
        assert "the socket failed" in caplog.text, caplog.text[-400:]
        assert idx.num_blocks("a") == 0, "index still holds the endpoint after its socket failed"
