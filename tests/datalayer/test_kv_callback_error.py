"""Review s12-late K1 (after s12-kv L2's fix of the task's drain): a socket error in a drain run from the
reader callback or its call_soon continuation (the steady-state path: the task is parked on ``_wake``) was
not handled as the task's drain is: the loop's exception handler logged it, the index was not cleared, and
the subscriber looked followed but applied nothing more."""

from __future__ import annotations

import asyncio

import zmq

from datalayer.test_kv_intake import _backlog
from datalayer.test_kvevents import _followed, _until, batch, stored_map
from kvgate.datalayer.kvsubscriber import DRAIN_MAX_BATCHES


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
            await _until(lambda: "the socket failed" in caplog.text)
        sub._sock = real
        assert idx.num_blocks("a") == 0, "index still holds the endpoint after its socket failed"


class _FailLater:
    """The real socket for ``n`` receives, then a terminated context."""

    def __init__(self, sock: zmq.Socket, n: int) -> None:
        self._s, self.FD, self.n = sock, sock.FD, n

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if self.n <= 0:
            raise zmq.ZMQError(zmq.ETERM)
        self.n -= 1
        return self._s.recv_multipart(flags)

    def getsockopt(self, opt: int) -> int:
        return self._s.getsockopt(opt)


async def test_a_socket_error_in_the_call_soon_continuation_clears_the_index(caplog):
    """Review s12-final L1: the error met past the cap, in the drain's ``call_soon`` continuation."""
    async with _followed(replay=False, unbounded=True, default_capacity=1 << 20) as (pub, idx, _mgr, sub):
        await _until(lambda: sub.stats.last_seq == pub.seq - 1)
        real = sub._sock
        sub._sock = _FailLater(real, DRAIN_MAX_BATCHES)
        with caplog.at_level("ERROR"):
            await _backlog(pub, 500)
            await _until(lambda: sub._task is not None and sub._task.done())
        sub._sock = real
        assert "the socket failed" in caplog.text, caplog.text[-400:]
        assert "Exception in callback" not in caplog.text
        assert idx.num_blocks("a") == 0


async def test_a_restarted_subscriber_does_not_fail_on_an_old_socket_error():
    """Review s12-final L2: ``start`` after a failure and a stop begins without the old error."""
    async with _followed(replay=False) as (pub, idx, _mgr, sub):
        sub._failed = zmq.ZMQError(zmq.ETERM)  # as a callback's drain left it
        await sub.stop()
        task = sub.start()
        await pub.publish(batch(stored_map([78], None, [2] * 4)))
        await _until(lambda: idx.num_blocks("a") > 0 or task.done())
        await asyncio.sleep(0.2)  # (past its catch-up, into the loop that raised the old error)
        assert not task.done(), "the restarted subscriber ended on the old error"
        assert idx.num_blocks("a") > 0
