"""A non-streamed answer too large to hold whole (``Proxy.whole_max``): its model name put back as it
is relayed, piece by piece: ``BodyRewriter``'s spellings, but only the first match (``BodyRewriter``
replaces every one), on a body the gateway never holds whole.

Only the first ``window`` bytes are searched (the bytes the gateway would have held anyway): vLLM,
SGLang and the OpenAI API put ``model`` near the start, before ``choices`` / ``data``; a name past the
window goes out as the server sent it.
"""

from __future__ import annotations

from kvgate.gateway.stream import _model_patterns


class PieceRewriter:
    """The first ``"model": <sent>`` in a body's first ``window`` bytes becomes the client's name; a
    name split across two pieces is held back until whole (at most a pattern's length less one byte).
    ``feed`` each piece in order, then ``finish`` (the held-back bytes)."""

    __slots__ = ("_carry", "_done", "_keep", "_left", "_patterns", "same_length")

    def __init__(self, sent_model: str, client_model: str, window: int) -> None:
        self._patterns = _model_patterns(sent_model, client_model)
        # The body keeps its length (upstream's Content-Length stays true).
        self.same_length = all(len(old) == len(new) for old, new in self._patterns)
        self._keep = max(len(old) for old, _ in self._patterns) - 1
        self._carry = b""
        self._left = window
        self._done = False

    def feed(self, piece: bytes) -> bytes:
        if self._done:
            return piece
        buf = self._carry + piece if self._carry else piece
        found = min(
            ((i, old, new) for old, new in self._patterns if (i := buf.find(old)) >= 0),
            default=None,
            key=lambda f: f[0],
        )
        if found is not None:
            i, old, new = found
            self._done = True
            self._carry = b""
            return buf[:i] + new + buf[i + len(old) :]
        self._left -= len(piece)
        if self._left <= 0:  # past the window: the rest goes out as it comes
            self._done = True
            self._carry = b""
            return buf
        if len(buf) <= self._keep:
            self._carry = buf
            return b""
        self._carry = buf[-self._keep :]
        return buf[: -self._keep]

    def finish(self) -> bytes:
        carry, self._carry, self._done = self._carry, b"", True
        return carry
