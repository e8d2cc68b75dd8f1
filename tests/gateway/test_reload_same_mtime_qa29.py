"""The file watch takes an edit that keeps the modification time (review s29-qa29 Q2): it compared the
mtime alone, so a half-written file read by a poll (logged invalid, its mtime recorded) and completed
within the same timestamp tick (kernels before 6.13 stamp files with a coarse clock, 1-10 ms) was never
applied, until a SIGHUP or another edit. Now the watch compares ``file_stamp`` (inode, size, mtime_ns).

The tick is made explicit with ``os.utime`` (deterministic on any kernel): half a file, then the whole
file with the same mtime. Fails on be00955b (the endpoint never appears: the watch sees no change)."""

from __future__ import annotations

import asyncio
import os

import yaml

from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader, file_stamp


def _doc(addresses):
    pool = {"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}
    return yaml.safe_dump({"pools": [pool]})


async def test_a_whole_file_written_in_the_tick_of_a_half_read_one_is_applied(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(_doc(["127.0.0.1:1001"]))
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    cfg = make_config(["127.0.0.1:1001"])
    pools = make_pools(cfg)
    rl = ConfigReloader(str(f), cfg, pools, poll_s=0.05, stamp=file_stamp(str(f)))
    task = asyncio.create_task(rl.run())
    try:
        whole = _doc(["127.0.0.1:1001", "127.0.0.1:1002"])
        f.write_text(whole[: len(whole) // 3])  # the watch catches the write half-way
        tick = 2_000_000_000
        os.utime(f, ns=(tick, tick))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while rl.failures == 0:
            assert loop.time() < deadline, "the half-written file was never read"
            await asyncio.sleep(0.02)
        f.write_text(whole)  # the rest of the write, in the same tick
        os.utime(f, ns=(tick, tick))
        want = {"127.0.0.1:1001", "127.0.0.1:1002"}
        deadline = loop.time() + 60
        while {e.address for e in pools[0].endpoints()} != want:
            assert loop.time() < deadline, "the whole file (same mtime as the half one) was never applied"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
