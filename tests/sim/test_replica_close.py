"""Review s13-hard L3: ``Replica.close`` ran its admin crashes' cancel on a snapshot and cleared the list
before its stop reset the open connections; a ``POST /sim/stop {"restart_after_s": X}`` whose handler ran
in those turns added a crash task nobody cancelled, which restarted the replica after ``close()`` had
returned (its port listening again, a driver running)."""

from __future__ import annotations

import asyncio
import socket

from kvgate.sim.server import Replica, ReplicaConfig


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_closed_replica_is_not_brought_back_by_an_admin_restart_accepted_during_its_close() -> None:
    """Fails before: after ``close()``, running and the port listening. Now ``POST /sim/stop`` answers 503
    while the close runs, ``start`` does nothing then, and the close drains its crash tasks until none is
    left."""

    async def main() -> tuple[bool, bool, bytes]:
        replica = Replica(ReplicaConfig(profile="tiny"))
        await replica.start()
        port = replica.port
        r, w = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"restart_after_s": 0.3}'
        w.write(b"POST /sim/stop HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        await asyncio.sleep(0.2)  # (its handler waits for the body)
        closer = asyncio.create_task(replica.close())
        w.write(body)  # (the body arrives as the close begins)
        await closer
        answer = await r.read(100)
        w.close()
        await asyncio.sleep(1.0)  # (past the restart_after_s)
        back = replica.running, _listening(port)
        if replica.running:  # (clean up what came back)
            await replica.close()
        return (*back, answer)

    running, listening, answer = asyncio.run(main())
    assert not running and not listening, f"after close(): running={running}, port listening={listening}"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer  # (refused, or its connection reset)


def test_a_closed_replica_starts_again() -> None:
    """The refusal holds only while ``close`` runs: a closed replica's ``start`` starts it afresh."""

    async def main() -> tuple[bool, bool]:
        replica = Replica(ReplicaConfig(profile="tiny"))
        await replica.start()
        await replica.close()
        await replica.start()
        try:
            return replica.running, _listening(replica.port)
        finally:
            await replica.close()

    assert asyncio.run(main()) == (True, True)
