"""What the event loop's machinery costs per request on this machine (issue #16): the bound on what cutting
tasks, futures and awaits out of ``kvgate serve``'s coroutine path can save.

    PYTHONPATH=src python scripts/coroutine_costs.py [--n 200000] [--rounds 3]

On uvloop, CPU time (``process_time``) per item, the fastest of ``--rounds``:

- ``task per item``: a task created for a coroutine that returns at once, with a done callback (what the
  front did per request before session 20: creation, registration in asyncio's WeakSet of tasks, the
  first step's callback, the done callback);
- ``future wake``: a task waiting on a future that is given its result (what the front's connection task
  costs per request now, and what the upstream's head wait costs), less a bare ``sleep(0)`` turn;
- ``await chain, 4 more layers``: a wake through five nested coroutines against one (the proxy's
  ``_run`` -> ``_entry`` -> ``_dispatch`` -> ``UpstreamPool.request`` -> ``_Conn._wait``);
- ``coroutine object``: creating a coroutine and running it to its end without a task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import uvloop


async def _costs(n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()

    async def work(i: int) -> int:
        return i

    def done(_t: object) -> None:
        pass

    t0 = time.process_time()
    for i in range(n):
        loop.create_task(work(i)).add_done_callback(done)
        if i % 64 == 63:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    task = (time.process_time() - t0) / n

    t0 = time.process_time()
    for _ in range(n):
        await asyncio.sleep(0)
    turn = (time.process_time() - t0) / n

    box: list[asyncio.Future[int] | None] = [None]

    async def leaf() -> int:
        f = box[0] = loop.create_future()
        return await f

    async def l1() -> int:
        return await leaf()

    async def l2() -> int:
        return await l1()

    async def l3() -> int:
        return await l2()

    async def l4() -> int:
        return await l3()

    async def driver(top: object) -> None:
        for _ in range(n):
            await top()  # type: ignore[operator]

    per: dict[str, float] = {}
    for name, top in (("depth 1", leaf), ("depth 5", l4)):
        t = loop.create_task(driver(top))
        await asyncio.sleep(0)
        t0 = time.process_time()
        while not t.done():
            f = box[0]
            if f is not None and not f.done():
                f.set_result(1)
            await asyncio.sleep(0)
        per[name] = (time.process_time() - t0) / n

    t0 = time.process_time()
    for i in range(n):
        co = work(i)
        with contextlib.suppress(StopIteration):
            co.send(None)
    coro = (time.process_time() - t0) / n
    return {
        "task per item": task,
        "future wake": per["depth 1"] - turn,
        "await chain, 4 more layers": per["depth 5"] - per["depth 1"],
        "coroutine object": coro,
        "(a bare sleep(0) turn)": turn,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for k, v in uvloop.run(_costs(args.n)).items():
            best[k] = min(best.get(k, v), v)
    for k, v in best.items():
        print(f"{k:<30} {v * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
