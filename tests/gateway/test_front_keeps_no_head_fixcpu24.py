"""The front keeps nothing of a request head once the request is gone (review s24-rev-cpu24 F1/F3: cpu24's
head cache kept a client's ``Authorization`` in plaintext, and up to ~8 MiB of parsed heads per front)."""

from __future__ import annotations

import asyncio
import gc
import secrets
import tracemalloc

from gateway.front_transport import served
from gateway.test_hot_path import _Transport
from kvgate.httpfront.server import FrontServer, Request, Response


async def _serve(server: FrontServer, pieces: list[bytes]) -> bytes:
    return await served(server, pieces, _Transport())


def _holds(obj: object, secret: str) -> bool:
    if isinstance(obj, dict):
        try:  # (a copy: another thread may grow a dict, e.g. a module's, while the gc walk reads it)
            items = tuple(obj.items())
        except RuntimeError:
            return False
        for k, v in items:
            for x in (k, v):
                if isinstance(x, str) and secret in x:
                    return True
                if isinstance(x, bytes | bytearray) and secret.encode() in x:
                    return True
    return False


async def test_no_plaintext_api_key_outlives_its_request() -> None:
    """docs/gateway.md: "Keys are kept only as SHA-256 digests". Once a request is answered and its
    connection closed, no dict in the process holds its bearer key."""
    secret = "sk-" + secrets.token_hex(20)  # (made here: no module global holds it)
    head = (
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Length: 2\r\n\r\n"
    ).encode()

    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    def check(method: str, path: str, headers: dict[str, str]) -> Response | None:
        return None if headers.get("authorization") == f"Bearer {secret}" else Response(status=401)

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server.head_check = check
    out = await _serve(server, [head + b"hi"])
    assert out.startswith(b"HTTP/1.1 200 "), out[:80]
    server.close_all()
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    holders = [o for o in gc.get_objects() if _holds(o, secret)]
    assert not holders, f"{len(holders)} dict(s) still hold the plaintext key after the request"


async def test_parsed_heads_are_not_retained() -> None:
    """255 distinct 2 KiB heads of short header names (~380 fields each) parsed: what they leave behind
    stays under 256 KiB (a head cache kept ~8 MiB of them)."""

    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    proto = server.protocol()
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    heads = []
    for i in range(255):
        head = b"POST /a HTTP/1.1\r\nHost: h%d\r\nContent-Length: 0" % i
        k = 0
        while len(head) + 8 < 2048:
            head += b"\r\n%x:" % k
            k += 1
        heads.append(head)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for head in heads:
            proto._parse_head(head)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    retained = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert retained <= 256 << 10, f"parsing 255 heads retained {retained >> 10} KiB"
    server.close_all()
