"""How long a config reload holds a gateway's event loop while a stream is served (issue #16, tok31).

One gateway (``GatewayServer``, in this process) serves a simulated vLLM replica; a client keeps one
streaming completion open through it (a new one when it ends), and a probe task on the same loop sleeps
1 ms at a time: its lateness is how long the loop was held. Each reload rewrites the gateway's config and
runs the reload as SIGHUP does (``ConfigReloader.areload``); its figure is the probe's longest lateness
from the reload's start to 0.3 s after it ends (and the stream's longest gap between chunks there).

Kinds of reload, each ``--reloads`` times, in turn:
  ``new-file``: the pool's ``precise-prefix-cache-scorer`` names a tokenizer at a path never read before,
      a different tokenizer (the test tokenizer with one more added token): its file is parsed;
  ``copy``: it names a new copy of a tokenizer read before (same bytes, new path: a new Hugging Face
      snapshot whose tokenizer.json is the same blob, a file copied into a new mount);
  ``same-file``: the picker changes (its ``indexName``), the tokenizer file it names does not;
  ``no-tokenizer``: a picker without a tokenizer changes (a scorer's weight): the swap alone.
``--src`` (repeatable): run the whole thing once per tree, each in a child process with that ``src`` on
``PYTHONPATH``, alternating trees ``--rounds`` times; the figures are per tree, in one run.

    python scripts/reload_loop_lag.py --reloads 4 --rounds 2 --src <before>/src --src src
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kvgate import lifeline

KINDS = ("new-file", "copy", "same-file", "no-tokenizer")


def _picker(tok: str | None, index: str, weight: int = 1) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [{"type": "queue-scorer"}]
    refs: list[dict[str, Any]] = [{"pluginRef": "queue-scorer", "weight": weight}]
    if tok is not None:
        params = {"mode": "tokens", "tokenizer": tok, "eventsBind": False, "indexName": index}
        plugins.append({"type": "precise-prefix-cache-scorer", "parameters": params})
        refs.append({"pluginRef": "precise-prefix-cache-scorer"})
    return {"plugins": plugins, "schedulingProfiles": [{"name": "default", "plugins": refs}]}


def _doc(addr: str, picker: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0},
        "pools": [{"name": "p", "endpoints": [addr], "models": ["m"], "endpointPickerConfig": picker}],
    }


async def _child(reloads: int) -> dict[str, list[tuple[float, float]]]:
    import aiohttp
    import yaml

    from kvgate.config.gateway import load_gateway_config
    from kvgate.gateway.cli import build_pools
    from kvgate.gateway.reload import ConfigReloader
    from kvgate.gateway.server import GatewayServer
    from kvgate.sim.replica_base import ReplicaConfig
    from kvgate.sim.server import Replica
    from kvgate.sim.tokenizer import tokenizer_dir

    tmp = Path(tempfile.mkdtemp(prefix="reload-lag-"))
    src = tokenizer_dir() / "tokenizer.json"
    n = 0

    def new_file() -> str:  # a tokenizer never read: one more added token (another file's bytes)
        nonlocal n
        n += 1
        doc = json.loads(src.read_text())
        doc["added_tokens"].append({
            "id": len(doc["model"]["vocab"]) + 100 + n, "content": f"<|tok31-{n}-{uuid.uuid4().hex[:6]}|>",
            "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True,
        })  # fmt: skip
        p = tmp / f"new-{n}.json"
        p.write_text(json.dumps(doc))
        return str(p)

    def copy() -> str:
        nonlocal n
        n += 1
        p = tmp / f"copy-{n}" / "tokenizer.json"
        p.parent.mkdir()
        shutil.copy(src, p)
        return str(p)

    rep = Replica(ReplicaConfig(model="m", time_scale=20.0))
    await rep.start()
    addr = f"127.0.0.1:{rep.port}"
    cfg_path = tmp / "gw.yaml"
    first = copy()  # (read at start: ``copy`` reloads name copies of it, ``same-file`` names it)
    cfg_path.write_text(yaml.safe_dump(_doc(addr, _picker(first, "lag-0"))))
    cfg = load_gateway_config(str(cfg_path))
    gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
    await gw.start()
    rl = ConfigReloader(str(cfg_path), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
    loop = asyncio.get_running_loop()
    lag: list[tuple[float, float]] = []  # (when, lateness)
    chunks: list[float] = []
    stop = False

    async def probe() -> None:
        while not stop:
            t = loop.time()
            await asyncio.sleep(0.001)
            lag.append((time.perf_counter(), loop.time() - t - 0.001))

    async def stream(http: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        body = {"model": "m", "prompt": "hello " * 50, "max_tokens": 4000, "stream": True}
        while not stop:
            async with http.post(url, json=body) as r:
                assert r.status == 200, r.status
                async for _ in r.content:
                    chunks.append(time.perf_counter())
                    if stop:
                        break

    out: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    try:
        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.create_task(probe()), asyncio.create_task(stream(http))]
            await asyncio.sleep(2.0)
            for i in range(reloads):
                for kind in KINDS if i % 2 == 0 else tuple(reversed(KINDS)):
                    index = f"lag-{i}-{kind}"
                    if kind == "new-file":
                        picker = _picker(new_file(), index)
                    elif kind == "copy":
                        picker = _picker(copy(), index)
                    elif kind == "same-file":
                        picker = _picker(first, index)
                    else:
                        picker = _picker(None, index, weight=2 + (i % 2))
                    if kind == "no-tokenizer":  # (from a picker without a tokenizer too)
                        cfg_path.write_text(yaml.safe_dump(_doc(addr, _picker(None, index, weight=1))))
                        assert await rl.areload()
                        await asyncio.sleep(0.5)
                    cfg_path.write_text(yaml.safe_dump(_doc(addr, picker)))
                    t0 = time.perf_counter()
                    assert await rl.areload(), kind
                    t1 = time.perf_counter() + 0.3
                    await asyncio.sleep(0.6)
                    worst = max((x for t, x in lag if t0 <= t <= t1 + 0.05), default=0.0)
                    ts = [t for t in chunks if t0 - 0.5 <= t <= t1 + 0.3]
                    gap = max((b - a for a, b in itertools.pairwise(ts)), default=0.0)
                    out[kind].append((worst * 1000, gap * 1000))
                    if kind != "no-tokenizer":  # back to the first file's picker (not measured)
                        cfg_path.write_text(yaml.safe_dump(_doc(addr, _picker(first, f"back-{i}-{kind}"))))
                        assert await rl.areload()
                        await asyncio.sleep(0.5)
            base = [x for t, x in lag[: len(lag) // 20]]
            out["baseline"] = [(max(base) * 1000 if base else 0.0, 0.0)]
            stop = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await gw.stop(drain_timeout=0.2)
        await rep.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--src", action="append", default=[], help="a src directory (repeatable)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.reloads))))
        return
    srcs = args.src or [str(Path(__file__).resolve().parent.parent / "src")]
    got: dict[str, dict[str, list[tuple[float, float]]]] = {s: {} for s in srcs}
    for r in range(args.rounds):
        for s in srcs if r % 2 == 0 else list(reversed(srcs)):
            env = dict(os.environ, PYTHONPATH=s)
            cmd = [sys.executable, __file__, "--child", "--reloads", str(args.reloads)]
            res = subprocess.run(  # (it dies with this script)
                lifeline.die_with_parent_argv(cmd), env=env, capture_output=True, text=True, timeout=600,
                check=False,
            )  # fmt: skip
            if res.returncode != 0:
                raise SystemExit(f"{s}: {res.stderr[-3000:]}")
            for k, v in json.loads(res.stdout.splitlines()[-1]).items():
                got[s].setdefault(k, []).extend(tuple(x) for x in v)
    print(
        f"{args.rounds} round(s) x {args.reloads} reloads of each kind; the loop's longest lateness from a "
        "reload's start to 0.3 s after it (probe: 1 ms sleeps), ms, and the stream's longest chunk gap there"
    )
    for s, kinds in got.items():
        print(f"  {s}:")
        for k, xs in kinds.items():
            lat, gap = [x[0] for x in xs], [x[1] for x in xs]
            print(f"    {k:13s} lag median {statistics.median(lat):6.1f} max {max(lat):6.1f}   "
                  f"stream gap median {statistics.median(gap):6.1f} max {max(gap):6.1f}")  # fmt: skip
    print("load", Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
