"""Responses API multi-turn sessions through ``kvgate serve`` in front of the simulator: two gateway trees
side by side in the same run (#16, prev24: follow-ups estimated as their conversation).

Each session sends a first turn (``instructions``: its own document, ``input``: a question) and then
follow-ups that name the previous response (``previous_response_id``) with a short new input, after a
think time, and (``--instructions every``, the default: the usual SDK loop) the document again as their
``instructions``; every turn streams. The simulated replicas keep their answers as vLLM 0.32 does
(``store``) and prefill a follow-up as it does: its own instructions, then the conversation without any
earlier instructions (``--instructions first``: the follow-ups are prefilled without the document). Per
(seed, tree): a fresh ``kvgate sim`` fleet (this tree's simulator for both) and a fresh ``kvgate serve``
from that tree's ``src`` (``--policy kvgate --kv-events off``: the approximate prefix index); the trees
run in an order that alternates by seed. The workload is drawn from the seed alone (the same requests at
the same offsets for both trees; a follow-up leaves its think time after the previous turn's end, so a
session's pace follows its answers).

Figures per row: TTFT p50/p90 over every turn (first ``response.output_text.delta``, seconds; the
simulator runs in real time), TTFT p90 of the follow-ups alone, the replicas' prefix hit rate (the sum of
``usage.input_tokens_details.cached_tokens`` over the sum of ``input_tokens``, from ``response.completed``),
errors. Then, per seed, each tree's p90 ratio to the first tree's, and over the seeds the geometric mean.

    PYTHONPATH=src python scripts/responses_multiturn.py --trees /work/main/src,src --seeds 104-113 \\
        --port 25100

Timed: run it under the team's live lock (``flock /work/team/live.lock ...``) and report ``uptime``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import aiohttp
import orjson

from kvgate import lifeline

MODEL = "sim-model"
_WORDS = [
    "river",
    "stone",
    "cloud",
    "ledger",
    "harbor",
    "copper",
    "meadow",
    "signal",
    "lantern",
    "orchard",
    "quartz",
    "timber",
    "beacon",
    "canyon",
    "falcon",
    "garnet",
    "hollow",
    "island",
    "jasper",
    "kettle",
    "lumen",
    "marble",
    "nectar",
    "onyx",
    "pepper",
    "quiver",
    "raven",
    "saddle",
    "tundra",
    "umber",
    "velvet",
    "willow",
    "yonder",
    "zephyr",
    "amber",
    "bramble",
    "cinder",
    "dune",
    "ember",
    "fern",
    "glacier",
    "heron",
    "ivory",
    "juniper",
]


@dataclass
class Turn:
    offset: float  # the first turn: seconds from the start; a follow-up: the think time after the last
    instructions: str | None
    text: str
    max_tokens: int


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    follow_ttft: list[float] = field(default_factory=list)
    cached: int = 0
    prompt: int = 0
    errors: int = 0


def _text(rng: random.Random, words: int, tag: str) -> str:
    return f"[{tag}] " + " ".join(rng.choice(_WORDS) for _ in range(words))


def workload(
    seed: int, sessions: int, window_s: float, think_s: float, every: bool = True
) -> list[list[Turn]]:
    """Sessions arriving uniformly at random over ``window_s``; a document of 400-1,600 words, 3-6 turns,
    follow-ups of 10-80 words after an exponential think time (mean ``think_s``). ``every``: each follow-up
    sends the document again as its ``instructions`` (the usual SDK loop; vLLM 0.32 drops an earlier
    turn's instructions, so a follow-up without them is prefilled without the document); else the first
    turn alone does. The same draws either way."""
    rng = random.Random(seed)
    out = []
    for s in range(sessions):
        start = rng.uniform(0.0, window_s)
        doc = _text(rng, rng.randint(400, 1600), f"doc {seed}-{s}")
        turns = [Turn(start, doc, _text(rng, rng.randint(10, 40), "q"), rng.randint(32, 160))]
        for _ in range(rng.randint(2, 5)):
            turns.append(
                Turn(
                    rng.expovariate(1.0 / think_s),
                    doc if every else None,
                    _text(rng, rng.randint(10, 80), "q"),
                    rng.randint(16, 96),
                )
            )
        out.append(turns)
    return out


async def _turn(s: aiohttp.ClientSession, url: str, turn: Turn, prev: str | None, res: Result) -> str | None:
    body: dict[str, object] = {"model": MODEL, "input": turn.text, "stream": True}
    body["max_output_tokens"] = turn.max_tokens
    if turn.instructions is not None:
        body["instructions"] = turn.instructions
    if prev is not None:
        body["previous_response_id"] = prev
    t0 = time.monotonic()
    first: float | None = None
    rid = usage = None
    try:
        async with s.post(url, data=orjson.dumps(body)) as r:
            if r.status != 200:
                await r.read()
                res.errors += 1
                return None
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    data = event.split(b"data: ", 1)[-1]
                    if first is None and b'"response.output_text.delta"' in event:
                        first = time.monotonic() - t0
                    elif b'"response.created"' in event:
                        rid = orjson.loads(data)["response"]["id"]
                    elif b'"response.completed"' in event:
                        usage = orjson.loads(data)["response"]["usage"]
    except (aiohttp.ClientError, TimeoutError):
        res.errors += 1
        return None
    if first is None or usage is None:
        res.errors += 1
        return None
    res.ttft.append(first)
    if prev is not None:
        res.follow_ttft.append(first)
    res.prompt += usage["input_tokens"]
    res.cached += usage["input_tokens_details"]["cached_tokens"]
    return rid


async def _session(s: aiohttp.ClientSession, url: str, turns: list[Turn], t0: float, res: Result) -> None:
    await asyncio.sleep(max(0.0, t0 + turns[0].offset - time.monotonic()))
    prev = await _turn(s, url, turns[0], None, res)
    for turn in turns[1:]:
        if prev is None:
            return
        await asyncio.sleep(turn.offset)
        prev = await _turn(s, url, turn, prev, res)


async def drive(port: int, sessions: list[list[Turn]]) -> Result:
    res = Result()
    url = f"http://127.0.0.1:{port}/v1/responses"
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.monotonic()
        await asyncio.gather(*(_session(s, url, turns, t0, res) for turns in sessions))
    return res


def _wait(url: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready within {within_s}s")
        time.sleep(0.1)


def run_one(args: argparse.Namespace, tree: str, seed: int) -> Result:
    py = sys.executable
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    sim_port, gw_port = args.port, args.port + args.replicas
    sim = [py, "-m", "kvgate.cli", "sim", "--replicas", str(args.replicas), "--base-port", str(sim_port)]
    sim += ["--model", MODEL, "--profile", args.profile, "--num-gpu-blocks", str(args.blocks)]
    sim += ["--seed", str(seed), "--log-level", "WARNING"]
    eps = ",".join(f"127.0.0.1:{sim_port + i}" for i in range(args.replicas))
    gw = [py, "-m", "kvgate.cli", "serve", "--endpoints", eps, "--model", MODEL, "--policy", "kvgate"]
    gw += ["--kv-events", "off", "--port", str(gw_port), "--log-level", "WARNING"]
    procs = [
        subprocess.Popen(lifeline.die_with_parent_argv(sim), env={**os.environ, "PYTHONPATH": here}),
        subprocess.Popen(lifeline.die_with_parent_argv(gw), env={**os.environ, "PYTHONPATH": tree}),
    ]
    try:
        for i in range(args.replicas):
            _wait(f"http://127.0.0.1:{sim_port + i}/health")
        _wait(f"http://127.0.0.1:{gw_port}/readyz")
        time.sleep(1.0)  # (a first scrape of every replica)
        return asyncio.run(
            drive(
                gw_port, workload(seed, args.sessions, args.window, args.think, args.instructions == "every")
            )
        )
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", required=True, help="comma-separated src directories; ratios to the first")
    p.add_argument("--seeds", default="104-113", help="e.g. 104-113 or 212,213")
    p.add_argument("--port", type=int, required=True, help="replicas on PORT.., the gateway after them")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--profile", default="qwen3-32b-h100")
    p.add_argument("--blocks", type=int, default=1500, help="KV blocks (16 tokens) per replica: tight")
    p.add_argument("--sessions", type=int, default=24)
    p.add_argument("--window", type=float, default=8.0, help="seconds over which sessions start")
    p.add_argument("--think", type=float, default=1.5, help="mean think time between turns (s)")
    p.add_argument(
        "--instructions",
        choices=("every", "first"),
        default="every",
        help="the document as every turn's instructions (default), or the first turn's alone",
    )
    args = p.parse_args()
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    ratios: dict[str, list[float]] = {t: [] for t in trees}
    hits: dict[str, list[float]] = {t: [] for t in trees}
    for k, seed in enumerate(_seeds(args.seeds)):
        order = trees if k % 2 == 0 else trees[::-1]
        rows = {}
        for tree in order:
            r = run_one(args, tree, seed)
            rows[tree] = r
            hit = r.cached / r.prompt if r.prompt else float("nan")
            hits[tree].append(hit)
            print(
                f"seed {seed} {tree}: n {len(r.ttft)} ttft p50 {_pct(r.ttft, 0.5):.3f}"
                f" p90 {_pct(r.ttft, 0.9):.3f}"
                f" follow-up p90 {_pct(r.follow_ttft, 0.9):.3f} hit {hit:.3f} errors {r.errors}",
                flush=True,
            )
        base = _pct(rows[trees[0]].ttft, 0.9)
        for tree in trees:
            ratios[tree].append(_pct(rows[tree].ttft, 0.9) / base)
    for tree in trees:
        geo = math.exp(sum(math.log(x) for x in ratios[tree]) / len(ratios[tree]))
        mean_hit = sum(hits[tree]) / len(hits[tree])
        print(
            f"{tree}: ttft p90 / {trees[0]}'s, geomean {geo:.3f} (per seed "
            f"{', '.join(f'{x:.3f}' for x in ratios[tree])}); mean hit {mean_hit:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
