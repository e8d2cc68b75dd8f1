"""A stand-in for the transport ``httpfront``'s ``FrontProtocol`` writes to: what it writes is kept, reading's
pauses and the half-close recorded (the front's tests: ``test_front_chunked_strict``, the linger ones,
``test_hot_path``'s without a half-close), and what a front writes back for some reads (``served``)."""

from __future__ import annotations

import asyncio

from kvgate.httpfront.server import FrontServer


class FrontTransport:
    """What the front calls on its transport, with reading's pauses and the half-close recorded."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.eof = self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def served(server: FrontServer, pieces: list[bytes], transport: FrontTransport) -> bytes:
    """What ``server``'s front wrote back on ``transport`` for ``pieces`` fed as separate reads (a few loop
    turns after each, for its handlers)."""
    proto = server.protocol()
    proto.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        proto.data_received(piece)
        for _ in range(6):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    return bytes(transport.out)
