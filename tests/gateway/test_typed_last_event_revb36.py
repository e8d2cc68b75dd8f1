"""rev-b36: a typed stream's last event (``ends_typed``) read from the last event's data as SSE joins it.

F1: an event whose data spans several ``data:`` lines was judged by its last line alone, so a continuation
line that starts with ``{"type":"message_stop"`` (a nested object: not the JSON's top level) ended the
stream (a client gone there counted a whole 200). Now the joined data is parsed (a short event), and a
long one is read at its first data line's first member and its last data line's last member.
F2 (no timed test, rule 7: ``ends_typed`` now walks back over the last event's lines only and parses
nothing unless a member names a last type; figures in the CHANGELOG): the randomized case below holds the
rule against a reference that parses the last event whole.
F3: the multi-cluster hub's client gone after the last event keeps the Responses id and the usage.
"""

from __future__ import annotations

import random

import orjson
import pytest

from extproc.test_error_counts import request_stats
from gateway.conftest import until
from gateway.test_typed_last_event_small36 import WAIT_S, _hub, _read_then_close
from kvgate.openai.sse import TYPED_LAST, EventEdge, ends_typed, joined_data, split_events

_F1 = b'data: {"type":"content_block_delta","delta":\ndata: {"type":"message_stop"}}\n\n'


@pytest.mark.parametrize(
    ("events", "last"),
    [
        (_F1, False),  # (rev-b36's case: one object, its top-level type content_block_delta)
        (_F1.replace(b"\n", b"\r\n"), False),
        (b'data: {"type":"ping"}\n\n' + _F1.replace(b"\n", b"\r"), False),
        (b'data: {"index":0,\ndata: "delta":{"type":"response.completed"}}\n\n', False),
        (b'data: {\ndata:   "type": "message_stop"\ndata: }\n\n', True),  # (pretty-printed)
        (b'data: {"type":"message_stop",\nid: 7\ndata: "index":0}\n\n', True),  # (joined past a field)
        (b'data: {"index":0,\ndata: "type":"response.completed"}\n\n', True),
    ],
)
def test_a_multi_line_data_event_is_judged_on_its_joined_data(events: bytes, last: bool) -> None:
    assert ends_typed(events) is last
    edge = EventEdge(typed=True)  # (the relays' edge: the same answer, the event fed in two pieces)
    edge.feed(events[:7])
    edge.feed(events[7:])
    assert edge.done is last


def _reference(events: bytes) -> bool:
    """The last event parsed whole: its last ``event:`` line's name, else its joined data's ``"type"``."""
    ev = bytes(split_events(events)[-2])
    name = None
    for line in ev.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip(b" ")
    if name is not None:
        return name in TYPED_LAST
    data = joined_data(ev)
    try:
        obj = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and obj.get("type", "").encode() in TYPED_LAST


def _event(rng: random.Random, nl: bytes, last: bool) -> bytes:
    kind = rng.choice(["response.completed", "message_stop", "response.failed"]) if last else "x.delta"
    text = "y" * rng.choice([1, 30, 3000, 9000])
    # a nested object that names a last type, and text that does (not top-level: never the last event)
    items: list[tuple[str, object]] = [
        ("delta", {"type": rng.choice(["message_stop", "response.completed"])}),
        ("text", rng.choice([text, text + '"type":"message_stop"}', "response.completed"])),
    ]
    rng.shuffle(items)
    # ``type`` first (OpenAI, Anthropic), last (pydantic) or, a short event, between (read by a parse)
    items.insert(rng.choice([0, 2, 1 if len(text) < 3000 else 0]), ("type", kind))
    body = orjson.dumps(dict(items))
    if rng.random() < 0.4:  # several data lines: cut after a comma or before a nested object (no string
        # holds a line end); a continuation line may start with ``{"type":"message_stop"}``
        cuts = [
            i + 1 for i in range(len(body) - 1) if body[i : i + 2] in (b',"', b":{") and rng.random() < 0.6
        ]
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    else:
        parts = [body]
    head = b"event: %s%s" % (kind.encode(), nl) if rng.random() < 0.3 else b""
    return head + b"".join(b"data: " + p + nl for p in parts) + nl


def test_the_last_event_rule_agrees_with_parsing_it_whole() -> None:
    """Random typed streams (LF, CRLF, CR; named or data-only; members in any order; one or several data
    lines; short and long events; a nested ``{"type":"message_stop"}`` in each): ``ends_typed`` says what
    parsing the last event whole says. Before, a continuation line that starts with a nested last type
    (rev-b36 F1) was read as the last event."""
    for seed in range(400):
        rng = random.Random(seed)
        nl = rng.choice([b"\n", b"\r\n", b"\r"])
        events = b"".join(_event(rng, nl, rng.random() < 0.5) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.1:
            events += b": ping" + nl + nl
        assert ends_typed(events) is _reference(events), (seed, events[-300:])


@pytest.mark.asyncio
async def test_hub_client_gone_after_the_last_event_keeps_the_id_and_usage() -> None:
    """rev-b36 F3 (01709516's claim): a client that leaves once the last event went out is a whole answer
    at the hub: the Responses id is remembered with its cluster, the usage observed. Fails with
    ``seen.complete = True`` / ``self._remember`` taken out of the hub's ``except`` branch."""
    case = "responses-data-only"
    async with _hub(case) as gw:
        await _read_then_close(gw.port, case)
        await until(lambda: gw.inflight == 0, WAIT_S, "the request ended")
        stats = request_stats(gw.metrics.registry)
        home = gw.responses.home("resp_1")
    assert home == ("east", None)
    assert stats.get(("inference_objective_input_tokens_sum", "m", "m")) == 2, stats
