"""rev-c34-F3: SSEScanner forgets a CR at a chunk's end when an EMPTY chunk comes between it and its LF.

``feed`` clears ``_cr`` on any chunk, an empty one included (``chunk[:1] == b""``), so the LF that opens the
chunk after it is read as an empty line of its own: a held multi-line event (CRLF line ends) ends early, its
first line goes out unread and its model is not put back. ``kvgate epp`` feeds every response body message,
empty ones included (session.py ``_on_response_body``). Without the empty chunk the same cut is read right."""

from __future__ import annotations

from kvgate.openai.sse import SSEScanner

FIRST = b'data: {"model":"m-rewritten",\r\n'
USAGE = b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
SECOND = b'data: "choices":[{"delta":{"content":"b"}}],' + USAGE + b"\r\n\r\n"
STREAM = FIRST + SECOND + b"data: [DONE]\r\n\r\n"
CUT = len(FIRST) - 1  # between the first line's CR and its LF


def _run(pieces: list[bytes]) -> tuple[bytes, SSEScanner]:
    s = SSEScanner(rewrite_to="m")
    out = b"".join(s.feed(p) for p in pieces) + s.finish()
    return out, s


def test_control_without_an_empty_chunk() -> None:
    out, s = _run([STREAM[:CUT], STREAM[CUT:]])
    assert b'"model":"m"' in out and b"m-rewritten" not in out
    assert s.usage is not None and s.usage.prompt_tokens == 3


def test_an_empty_chunk_between_the_cr_and_its_lf_changes_nothing() -> None:
    want, _ = _run([STREAM[:CUT], STREAM[CUT:]])
    out, s = _run([STREAM[:CUT], b"", STREAM[CUT:]])
    assert out == want, out
    assert s.usage is not None and s.usage.prompt_tokens == 3
