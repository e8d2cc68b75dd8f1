"""SIGHUP never ends ``kvgate serve`` without ``--config`` (one process, ``--workers 2``): there is no file
to reload, so one WARNING line, and it serves on (with ``--config`` SIGHUP reloads the file:
``test_reload.py``; ``--clusters``: ``tests/multicluster/test_sighup_clusters.py``). Before (review s20-qa
L5) SIGHUP kept its default action there: the process died at once, no drain, every request in flight cut."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import orjson
import pytest

from gateway.backend import free_port


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
async def test_sighup_without_config_does_not_end_serve(backends, tmp_path, workers: int) -> None:
    from gateway import drain_kit

    (b,) = await backends(1)
    port, admin, stderr = free_port(), free_port(), tmp_path / "stderr"
    extra = ["--workers", "2", "--min-ready-workers", "2"] if workers > 1 else []
    proc = await drain_kit.serve(
        "--endpoints", b.address, "--model", "m", "--port", str(port), "--admin-port", str(admin), *extra,
        stderr=stderr,
    )  # fmt: skip
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.5)
        assert proc.returncode is None, f"SIGHUP ended the process ({proc.returncode})"
        body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.read_text()
    assert "SIGHUP: kvgate serve" in text, text
    assert "without --config has nothing to reload; serving on" in text, text
    assert drain_kit.unclean(stderr) == []
