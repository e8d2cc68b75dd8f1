"""A recorded request stream through the whole in-memory gateway, and the endpoint each request went to.

The real front (``httpfront``), proxy, ``kvgate`` policy picker (four endpoints), upstream client and
metrics of ``kvgate serve``, with both sockets replaced by in-memory transports and every clock by one
settable clock, driven through a seeded stream of events: a request arrives (completions or chat,
streamed or not, with or without ``max_tokens``, prompts that share prefixes, a session header or
``user`` now and then, a LoRA adapter), one in flight is answered, an endpoint's scraped metrics change,
the clock moves. An answer is a whole JSON body with usage, or an SSE stream whose first event is
relayed to the client before the clock moves by the endpoint's decode time (the endpoints decode at
unequal paces) and the rest, ending in a usage event, arrives; usage carries the engine's cached tokens
(``prompt_tokens_details.cached_tokens``) now and then; and now and then the endpoint answers 503
before any byte, so the proxy retries on an untried endpoint (the retry pick). Each event runs to its
end (the request written upstream, or the client's answer complete) before the next. The result is one
line per request: its id, each endpoint it was written to (or the status the client got) and the
client's status. Covered: the pick, dispatch, first-token, finish and retry paths of the gateway door
without flow control, rewrite rules, rate limits or a tokenizer (``tokenizer: auto`` finds none for
``m``), with the prefix scorer's ``cachedTokensFeedback`` on; the picker's pace learning and the
engine's cached-token corrections feed later picks (the mean decode length of requests without
``max_tokens`` moves no pick of this stream).
It reaches into the upstream client's privates (``upstream._Conn``, ``_connect``, ``_open``) and the
server's ``_front``: a refactor there breaks it with an AttributeError, not a routing diff.

``tests/gateway/test_picks_recorded.py`` compares it with ``data/picks_stream.json``, recorded from
main at ca1e66d (before issue #16's session-16 cuts of the per-request path), so a cut that changes a
single routing decision fails. Imports only names that tree has. To record again (from another tree):

    PYTHONPATH=<tree>/src:tests python tests/gateway/picks_stream.py > tests/gateway/data/picks_stream.json
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sys
from typing import Any

SEED = 16
EVENTS = 1500
ENDPOINTS = ("10.0.0.1:8000", "10.0.1.1:8000", "10.0.2.1:8000", "10.0.3.1:8000")
ADAPTER = "sql-lora"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Transport:
    """One side's transport: writes are kept; the test feeds the answers."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, data: bytes) -> None:
        self.sink(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    abort = pause_reading = resume_reading = close

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _heads(rng: random.Random) -> list[str]:
    words = ["prefix", "cache", "block", "token", "route", "engine", "queue", "the", "of"]
    out = []
    for g, size in enumerate((30, 200, 700, 1500, 4000)):
        text = f"System {g}: "
        while len(text) < size:
            text += rng.choice(words) + " "
        out.append(text)
    return out


Usage = tuple[int, int, int | None]  # prompt, completion, the engine's cached tokens (None: not sent)


def _usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    out["total_tokens"] = usage[0] + usage[1]
    if usage[2] is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage[2]}
    return out


def _whole(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _completion(usage: Usage) -> bytes:
    body = {
        "id": "c",
        "object": "text_completion",
        "model": "m",
        "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
        "usage": _usage(usage),
    }
    return _whole(b"200 OK", json.dumps(body).encode())


def _unavailable() -> bytes:
    body = {"error": {"message": "engine overloaded", "type": "service_unavailable", "code": 503}}
    return _whole(b"503 Service Unavailable", json.dumps(body).encode())


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _stream(usage: Usage) -> tuple[bytes, bytes]:
    """An SSE answer in two parts: the head and first event, then the usage event and the end."""
    first = b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"a"}]}\n\n'
    rest = [
        b'data: {"id":"c","object":"text_completion","model":"m","choices":[],"usage":'
        + json.dumps(_usage(usage)).encode()
        + b"}\n\n",
        b"data: [DONE]\n\n",
    ]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + _chunk(first), b"".join(_chunk(e) for e in rest) + b"0\r\n\r\n"


def _body(i: int, rng: random.Random, heads: list[str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    head = rng.choice(heads)
    cut = rng.choice((len(head), len(head), len(head) // 2))
    text = head[:cut] + f" question {rng.randrange(40)}: " + "x" * rng.randrange(120)
    model = ADAPTER if rng.random() < 0.15 else "m"
    body: dict[str, Any] = {"model": model}
    if rng.random() < 0.75:  # (without: the picker's mean decode length is its estimate)
        body["max_tokens"] = rng.choice((8, 64, 512))
    path = "/v1/completions"
    if rng.random() < 0.3:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "system", "content": head[:cut]}, {"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if rng.random() < 0.3:
        body["stream"] = True
    if rng.random() < 0.1:
        body["user"] = f"user-{rng.randrange(5)}"
    headers = {}
    if rng.random() < 0.1:
        headers["x-session-id"] = f"s-{rng.randrange(6)}"
    return path, body, headers


async def _record(seed: int, events: int, seen: dict[str, int]) -> list[list[Any]]:
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway import upstream
    from kvgate.gateway.pools import build_pool
    from kvgate.gateway.proxy import Proxy
    from kvgate.gateway.server import GatewayServer
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
    from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

    clock = Clock()
    cfg = config_from_flags(",".join(f"http://{a}" for a in ENDPOINTS), ["m"], "kvgate", adapters=[ADAPTER])
    pools = [build_pool(pc, clock, index=i) for i, pc in enumerate(cfg.pools)]
    director: Any = pools[0].director
    director.timer = clock
    director.handle.rng.seed(seed)
    # The prefix scorer's opt-in ``cachedTokensFeedback: true``: the engine's cached tokens (usage)
    # correct its index, so a regression that loses them changes later picks.
    director.handle.find(PrefixCacheScorer).cached_feedback = True
    # The cost scorer as the golden was recorded (before bff53adf turned coldSpread and
    # coldSpreadDecodeHeavy on in the kvgate policy): the guard checks the per-request path, not the pricing.
    cost = director.handle.find(KVGateCostScorer)
    cost.cold_spread = cost.cold_spread_decode_heavy = False
    gw = GatewayServer(cfg, pools, clock=clock, scrape=False)
    proxy = gw.proxy = Proxy(cfg, gw.pools, gw.metrics, gw.health, gw.clock)
    sent: dict[str, tuple[str, Any]] = {}  # request id -> (endpoint, its upstream connection), the last
    writes: dict[str, int] = {}  # request id -> times written upstream (a retry writes it again)

    async def connect(address: str, tls: Any, deadline: float | None = None) -> Any:
        conn = upstream._Conn(proxy.upstream, address)

        def written(data: bytes) -> None:
            rid = data.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
            sent[rid] = (address, conn)
            writes[rid] = writes.get(rid, 0) + 1

        conn.connection_made(_Transport(written))
        proxy.upstream._open.add(conn)
        return conn

    proxy.upstream._connect = connect  # type: ignore[method-assign]
    front = gw._front(proxy, admin=False)
    rng = random.Random(seed)
    heads = _heads(rng)
    store = pools[0].store
    open_: list[tuple[str, bool, Usage]] = []
    answers: dict[str, bytearray] = {}
    out: list[list[Any]] = []

    async def settle(done: Any) -> None:
        for _ in range(200):
            if done():
                return
            await asyncio.sleep(0)
        raise RuntimeError("the gateway did not get there in 200 loop turns")

    def status(rid: str) -> int:
        return int(bytes(answers[rid][9:12]))

    def complete(rid: str) -> bool:
        got = bytes(answers[rid])
        end = got.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = got[:end].lower()
        if b"transfer-encoding: chunked" in head:
            return got.endswith(b"0\r\n\r\n")
        n = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        return len(got) - end - 4 >= n

    for step in range(events):
        clock.now += rng.choice((0.0, 0.001, 0.01, 0.05, 0.3))
        ev = rng.random()
        if ev < 0.1:
            for ep in store.all():
                m = ep.metrics
                m.waiting_queue_size = rng.choice((0, 0, 0, 1, 3, 8))
                m.running_requests = rng.randint(0, 16)
                m.kv_cache_usage = rng.choice((0.0, 0.3, 0.8, 0.95, 1.0))
                m.running_loras = frozenset({ADAPTER}) if rng.random() < 0.3 else frozenset()
                m.max_lora = 2
                m.updated_at = clock.now - rng.choice((0.0, 0.0, 0.5, 3.0))
        elif ev < 0.55 or not open_:
            rid = f"q{step}"
            path, body, headers = _body(step, rng, heads)
            raw = json.dumps(body).encode()
            head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            head += f"x-request-id: {rid}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head += f"Content-Length: {len(raw)}\r\n\r\n"
            answers[rid] = bytearray()
            proto = front.protocol()
            proto.connection_made(_Transport(answers[rid].extend))  # type: ignore[arg-type]
            proto.data_received(head.encode() + raw)
            await settle(lambda rid=rid: rid in sent or len(answers[rid]) > 12)
            seen["max_tokens" if "max_tokens" in body else "no_max_tokens"] += 1
            if rid in sent:
                prompt = len(raw) // 4
                cached = rng.choice((None, None, 0, prompt // 2, prompt - prompt % 16))
                usage = (prompt, rng.randint(8, 64), cached)
                seen["cached_reported" if cached is not None else "cached_not_reported"] += 1
                open_.append((rid, bool(body.get("stream")), usage))
                out.append([rid, sent[rid][0]])
            else:
                await settle(lambda rid=rid: complete(rid))
                out.append([rid, None, status(rid)])
        else:
            rid, stream, usage = open_.pop(rng.randrange(len(open_)))
            address, conn = sent[rid]
            line = out[[r[0] for r in out].index(rid)]
            if rng.random() < 0.06:  # a 503 before any byte: retried elsewhere (or passed through)
                n = writes[rid]
                conn.data_received(_unavailable())
                await settle(lambda rid=rid, n=n: writes[rid] > n or complete(rid))
                seen["503"] += 1
                if writes[rid] > n:
                    seen["retried"] += 1
                    line.append(sent[rid][0])
                    open_.append((rid, stream, usage))
                else:
                    line.append(status(rid))
            elif stream:
                first, rest = _stream(usage)
                conn.data_received(first)
                await settle(lambda rid=rid: b"data: " in answers[rid])
                clock.now += 0.002 * (1 + ENDPOINTS.index(address)) * usage[1]  # (unequal decode paces)
                conn.data_received(rest)
                await settle(lambda rid=rid: complete(rid))
                line.append(status(rid))
                seen["stream"] += 1
            else:
                conn.data_received(_completion(usage))
                await settle(lambda rid=rid: complete(rid))
                line.append(status(rid))
                seen["json"] += 1
    front.close_all()
    return out


def record(seed: int = SEED, events: int = EVENTS, seen: dict[str, int] | None = None) -> list[list[Any]]:
    """The stream's lines; ``seen`` (given: filled) counts what the stream exercised: requests with and
    without ``max_tokens``, answers streamed and whole, usage with and without cached tokens, 503s and
    the retries they led to."""
    counts: collections.Counter[str] = collections.Counter()
    out = asyncio.run(_record(seed, events, counts))
    if seen is not None:
        seen.update(counts)
    return out


if __name__ == "__main__":
    json.dump({"seed": SEED, "events": EVENTS, "picks": record()}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
