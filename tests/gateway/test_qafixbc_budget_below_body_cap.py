"""s17-qafix-bc L1: limits.maxBufferedBytes (or --max-buffered-bytes) below limits.maxBodyBytes is
accepted, and then a body between the two gets ``503 service_unavailable`` with ``Retry-After: 1`` ("retry")
on an idle gateway, forever: a client that follows Retry-After (the OpenAI SDK retries 503s) loops.
Expected: the config refused (naming the key), or such a body answered as the permanent error it is (413).

Now refused at load (fixbudget17): the config's ``limits``, ``--max-buffered-bytes`` (at start and over a
reload) and the clusters file's ``limits`` each name the key.
"""

from __future__ import annotations

import asyncio

from gateway.conftest import backends, make_config, running_gateway  # noqa: F401 (fixture)
from kvgate.config.gateway import GatewayConfigError


async def test_a_body_that_can_never_fit_is_not_told_to_retry(backends):  # noqa: F811
    (b,) = await backends(1)
    try:
        cfg = make_config([b.address], extra={"limits": {"maxBufferedBytes": 1_000_000}})
    except (GatewayConfigError, ValueError):
        return  # refused at load: fine
    assert cfg.limits.max_body_bytes > cfg.limits.max_buffered_bytes
    async with running_gateway(cfg) as gw:
        body = b'{"model":"m","prompt":"' + b"x" * 2_000_000 + b'","max_tokens":2}'
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        out = await asyncio.wait_for(r.read(65536), 5)
        w.close()
        head = out.partition(b"\r\n\r\n")[0]
        assert not (head.startswith(b"HTTP/1.1 503") and b"Retry-After" in head), (
            "idle gateway, body below maxBodyBytes but above maxBufferedBytes: told to retry, "
            f"which can never succeed: {out[:220]!r}"
        )


def test_a_budget_below_the_body_cap_is_refused_naming_the_key(tmp_path):
    """Every way the value can be set: the config's limits, the flag (at start and over a reload), and
    the clusters file's limits (--clusters)."""
    import pytest

    from kvgate.gateway.cli import _parser, build_config, reload_loader
    from kvgate.httpfront.server import parse_limits

    with pytest.raises(GatewayConfigError, match=r"^limits\.maxBufferedBytes"):
        make_config(["127.0.0.1:1"], extra={"limits": {"maxBufferedBytes": 1_000_000}})
    with pytest.raises(GatewayConfigError, match=r"^limits\.maxBufferedBytes"):  # (a lowered cap passes)
        make_config(["127.0.0.1:1"], extra={"limits": {"maxBufferedBytes": 1_000, "maxBodyBytes": 1_001}})
    make_config(["127.0.0.1:1"], extra={"limits": {"maxBufferedBytes": 1_000, "maxBodyBytes": 1_000}})
    flag = ["--endpoints", "127.0.0.1:1", "--model", "m", "--max-buffered-bytes", "1000000"]
    with pytest.raises(GatewayConfigError, match=r"^--max-buffered-bytes"):
        build_config(_parser().parse_args(flag))
    path = tmp_path / "gw.yaml"
    path.write_text(
        "pools:\n  - {name: p, policy: round-robin, endpoints: ['127.0.0.1:1'], models: [m]}\n"
        "limits: {maxBodyBytes: 1000}\n"
    )
    args = _parser().parse_args(["--config", str(path), "--max-buffered-bytes", "1000"])
    assert build_config(args).limits.max_buffered_bytes == 1000
    path.write_text(path.read_text().replace("1000}", "2000}"))  # the file's cap raised over the flag
    with pytest.raises(GatewayConfigError, match=r"^--max-buffered-bytes"):
        reload_loader(args)(str(path))
    with pytest.raises(ValueError, match=r"^limits\.maxBufferedBytes"):
        parse_limits({"maxBufferedBytes": 1_000_000})
    assert parse_limits({"maxBufferedBytes": 1_000, "maxBodyBytes": 1_000}).max_buffered_bytes == 1_000
