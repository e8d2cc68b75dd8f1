"""How many concurrent streams one simulator process sustains before its step clock falls behind real time.

    python -m kvgate.bench.sim_capacity [--levels 1,32,64,128,256,512] [--seconds 6] [--replicas 1]

Starts ``kvgate sim`` (``--time-scale 1``) in its own process, then for each concurrency level runs that many
closed-loop streaming clients (this process, uvloop) against it and reads the replicas' ``/sim/state``
before and after a measurement window. Per level it prints:

- ``late%``: the share of engine steps delivered more than the sim's ``--late-slack-ms`` (5 ms) after their
  deadline;
- ``lag mean/max``: how far behind the wall clock the steps were delivered;
- ``load``: wall time the steps should take / window (the same-run baseline: <= 1.0 per replica when the
  driver keeps up, since steps are chained on deadlines; a replica that is busy all the time reads 1.0);
- ``tok/s``: streamed tokens the clients received, and ``sim tok/s``: tokens the engines produced.

The first level (1 stream) is the same-run baseline (timer jitter on this machine): a level is
*sustained* while its late-step share stays within ``--max-late-points`` (5) percentage points of the
baseline's, its mean lag within ``--max-lag-ms`` (2 ms) of the baseline's, and its ``load`` at least
``--min-load`` (0.9) of the baseline's. The late share is the rule that matters: a benchmark reads p90 and
p99 latencies, which a tail of late steps moves while the mean lag barely does (qa36c F4: 17.7 % of the
steps late at 64 streams with a 2.85 ms mean lag). Steps are chained on deadlines, so a process that cannot
keep up at all shows a lag that grows without bound and a load that drops. The clients share the machine
with the simulator, so the figures are for this machine, clients included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
import orjson

from kvgate import lifeline
from kvgate.aio import cancel_all_and_wait, stop_to_the_end
from kvgate.bench.workloads import random_ids, render
from kvgate.entry import ArgumentParser, comma_list, nonneg_number, positive_int, positive_number, prog
from kvgate.sim.profiles import profile_arg

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Level:
    concurrency: int
    steps: int
    late: int
    lag_sum: float
    lag_max: float
    step_time: float
    window: float
    client_tokens: int
    sim_tokens: int
    errors: int

    @property
    def late_frac(self) -> float:
        return self.late / self.steps if self.steps else 0.0

    @property
    def lag_mean_ms(self) -> float:
        return 1000 * self.lag_sum / self.steps if self.steps else 0.0


def start_sim(args: argparse.Namespace) -> tuple[subprocess.Popen[str], list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "kvgate.cli",
        "sim",
        "--base-port",
        "0",
        "--replicas",
        str(args.replicas),
        "--profile",
        args.profile,
        "--time-scale",
        str(args.time_scale),
        "--stream-interval",
        str(args.stream_interval),
    ]
    proc = subprocess.Popen(lifeline.die_with_parent_argv(cmd), stdout=subprocess.PIPE, text=True)
    urls: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"replica \d+: (\S+)", line)
        if m:
            urls.append(m.group(1))
        if line.startswith("serving"):
            return proc, urls
    raise RuntimeError(f"kvgate sim exited with {proc.wait()}")


async def _state(s: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, float]]:
    out = []
    for u in urls:
        async with s.get(u + "/sim/state") as r:
            out.append(orjson.loads(await r.read()))
    return out


class Clients:
    """``n`` closed-loop streaming clients; each counts the token chunks it receives."""

    def __init__(self, urls: list[str], prompts: list[str], max_tokens: int) -> None:
        self.urls, self.prompts, self.max_tokens = urls, prompts, max_tokens
        self.tokens = 0
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, s: aiohttp.ClientSession, i: int) -> None:
        url = self.urls[i % len(self.urls)] + "/v1/completions"
        k = i
        while True:
            body = {
                "model": "sim-model",
                "prompt": self.prompts[k % len(self.prompts)],
                "max_tokens": self.max_tokens,
                "stream": True,
            }
            k += 7
            try:
                async with s.post(url, json=body) as resp:
                    if resp.status != 200:
                        self.errors += 1
                        await resp.read()
                        continue
                    async for line in resp.content:
                        if line.startswith(b"data: {"):
                            self.tokens += 1
            except aiohttp.ClientError:
                self.errors += 1
                await asyncio.sleep(0.05)

    def resize(self, s: aiohttp.ClientSession, n: int) -> None:
        while len(self._tasks) < n:
            self._tasks.append(asyncio.create_task(self._worker(s, len(self._tasks))))

    async def stop(self) -> None:
        await stop_to_the_end(self._stop(), "load clients: stopping", log)

    async def _stop(self) -> None:
        await cancel_all_and_wait(self._tasks, "load client", log)
        self._tasks.clear()


async def run(args: argparse.Namespace, urls: list[str]) -> list[Level]:
    rng = random.Random(args.seed)
    prompts = [render(random_ids(rng, args.prompt_tokens)) for _ in range(64)]
    levels = list(args.levels)
    results: list[Level] = []
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        clients = Clients(urls, prompts, args.max_tokens)
        for n in levels:
            clients.resize(s, n)  # ramp: the clients of lower levels keep running
            await asyncio.sleep(args.warmup)
            a = await _state(s, urls)
            tok0, err0, t0 = clients.tokens, clients.errors, time.perf_counter()
            await asyncio.sleep(args.seconds)
            b = await _state(s, urls)
            window = time.perf_counter() - t0
            lv = Level(
                concurrency=n,
                steps=int(sum(y["steps"] - x["steps"] for x, y in zip(a, b, strict=True))),
                late=int(sum(y["steps_late"] - x["steps_late"] for x, y in zip(a, b, strict=True))),
                lag_sum=sum(y["step_lag_sum_s"] - x["step_lag_sum_s"] for x, y in zip(a, b, strict=True)),
                lag_max=max(y["step_lag_max_s"] for y in b),
                step_time=sum(y["step_time_s"] - x["step_time_s"] for x, y in zip(a, b, strict=True)),
                window=window,
                client_tokens=clients.tokens - tok0,
                sim_tokens=int(
                    sum(
                        y["generation_tokens_total"] - x["generation_tokens_total"]
                        for x, y in zip(a, b, strict=True)
                    )
                ),
                errors=clients.errors - err0,
            )
            results.append(lv)
            _print_row(lv, len(urls))
            if lv.lag_mean_ms > args.stop_lag_ms:
                break  # far past capacity: further levels only take longer
        await clients.stop()
    return results


def _print_row(lv: Level, replicas: int) -> None:
    print(
        f"{lv.concurrency:>6} {lv.steps / lv.window:>8.0f} {100 * lv.late_frac:>6.1f} {lv.lag_mean_ms:>9.2f} "
        f"{1000 * lv.lag_max:>9.1f} {lv.step_time / lv.window / replicas:>6.2f} "
        f"{lv.client_tokens / lv.window:>9.0f} {lv.sim_tokens / lv.window:>9.0f} {lv.errors:>6}",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog("kvgate.bench.sim_capacity", "bench sim-capacity"), description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--levels",
        type=comma_list(positive_int),
        default="1,32,64,128,256,512",
        help="concurrencies, ramped; first = baseline",
    )
    p.add_argument("--seconds", type=positive_number, default=6.0, help="measurement window per level")
    p.add_argument("--warmup", type=nonneg_number, default=2.0, help="settle time after each ramp step")
    p.add_argument("--replicas", type=positive_int, default=1)
    p.add_argument("--profile", type=profile_arg, default="llama3-8b-h100")
    p.add_argument("--time-scale", type=positive_number, default=1.0)
    p.add_argument("--prompt-tokens", type=positive_int, default=256)
    p.add_argument("--max-tokens", type=positive_int, default=256)
    p.add_argument(
        "--max-late-points",
        type=nonneg_number,
        default=5.0,
        help="late-step share over the baseline's allowed, in percentage points",
    )
    p.add_argument(
        "--max-lag-ms", type=nonneg_number, default=2.0, help="mean lag over the baseline's allowed"
    )
    p.add_argument(
        "--min-load", type=nonneg_number, default=0.9, help="load (step clock / wall) vs the baseline's"
    )
    p.add_argument("--stream-interval", type=positive_int, default=1, help="the sim's --stream-interval")
    p.add_argument(
        "--stop-lag-ms", type=positive_number, default=100.0, help="stop ramping past this mean lag"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    proc, urls = start_sim(args)
    try:
        print(
            f"sim: {args.replicas} replica(s), profile {args.profile}, time-scale {args.time_scale}; "
            f"prompt {args.prompt_tokens} tokens, {args.max_tokens} output tokens, streaming"
        )
        print(
            f"{'conc':>6} {'steps/s':>8} {'late%':>6} {'lag ms':>9} {'max ms':>9} {'load':>6} "
            f"{'tok/s':>9} {'sim tok/s':>9} {'errors':>6}"
        )
        import uvloop

        results = uvloop.run(run(args, urls))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not results:
        return 1
    base = results[0]
    best = sustained(results, args.max_late_points, args.max_lag_ms, args.min_load)
    print(
        f"sustained: {best} concurrent streams (late <= {100 * base.late_frac + args.max_late_points:.1f} %,"
        f" mean lag <= {base.lag_mean_ms + args.max_lag_ms:.2f} ms,"
        f" load >= {args.min_load * base.step_time / base.window:.2f}; baseline at {base.concurrency}"
        f" stream(s)) in one sim process with {args.replicas} replica(s)"
    )
    return 0


def sustained(results: list[Level], max_late_points: float, max_lag_ms: float, min_load: float) -> int:
    """The highest level before the first one past a cap, each relative to the baseline (``results[0]``):
    late share + ``max_late_points``, mean lag + ``max_lag_ms``, load x ``min_load``."""
    base = results[0]
    late_cap = 100 * base.late_frac + max_late_points
    lag_cap = base.lag_mean_ms + max_lag_ms
    load_floor = min_load * base.step_time / base.window
    best = 0
    for r in results:
        if 100 * r.late_frac > late_cap or r.lag_mean_ms > lag_cap or r.step_time / r.window < load_floor:
            break
        best = r.concurrency
    return best


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
