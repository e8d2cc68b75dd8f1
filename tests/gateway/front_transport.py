"""A stand-in for the transport ``httpfront``'s ``FrontProtocol`` writes to: what it writes is kept, reading's
pauses and the half-close recorded (the front's tests, ``test_front_chunked_strict`` and the linger ones)."""

from __future__ import annotations


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
