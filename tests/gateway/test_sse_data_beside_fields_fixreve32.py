"""rev-e32 on 83264f22 (qa32a Q7): ``event_obj`` reads an event's data as the SSE spec joins it only when it
has more than one ``data:`` line; an event with ONE ``data:`` line and another field after it (``id:``,
``retry:``: legal SSE; sse-starlette writes ``retry:`` after the data lines)
still decodes from the first ``{`` to the event's end, the field included, and reads None: ``kvgate serve``
then neither strips the usage chunk it asked for nor reads the stream's usage, where ``kvgate epp``'s line
scanner (``openai.sse``) reads the ``data:`` line alone. A comment line holding a ``{`` before the data
(``: {heartbeat}``) the same. F4; fails on main 06fe0a45 and 7c884852; fixreve32 reads the data lines
whenever there is one."""

from __future__ import annotations

import pytest

from kvgate.openai.usage import event_obj

USAGE = b'{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'


@pytest.mark.parametrize(
    "event",
    [
        b"data: " + USAGE + b"\nid: 7\n\n",
        b"data: " + USAGE + b"\nretry: 3000\n\n",
        b"data: " + USAGE + b"\r\nid: 7\r\n\r\n",
        b": {heartbeat}\ndata: " + USAGE + b"\n\n",
    ],
    ids=["id-after", "retry-after", "crlf-id-after", "comment-with-brace-before"],
)
def test_one_data_line_beside_other_fields_is_read(event: bytes) -> None:
    obj = event_obj(event)
    assert obj is not None and obj["usage"]["completion_tokens"] == 2, event
