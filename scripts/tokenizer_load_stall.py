"""How long a tokenizer's load stalls the event loop (issue #16, tok30).

``parts``: in this process, each step of a load run on a thread (as a reload's warm step and ``auto``'s
loader run it) while the event loop ticks every 1 ms; the loop's longest gap is how long the step held the
GIL. Steps: ``tokenizers``' ``Tokenizer.from_file``; Python's ``json.loads`` of the same file (what the
piecewise check read before tok30); a whole ``PromptTokenizer`` load (parse, piecewise check, self-checks);
and ``auto``'s first look-up of a model, as a request's pick makes it, on the loop: ``for_model`` (before
tok30) against ``for_model_soon`` (the load on the loader thread). Each step ``--repeats`` times, the
order alternating; every load reads a fresh copy of the file with bytes of its own (no cache).
``--before-src``: also the ``PromptTokenizer`` load and ``auto``'s first look-up of that tree's
``tokenize`` module, in this run.

``live``: two ``kvgate serve`` processes side by side in the same run, one from ``--before-src`` (e.g.
``/work/main/src`` at the commit before) and one from this tree's src, each with a client sending a
1-token completion every 10 ms; ``--reloads`` times each in turn (before, after, before, ...) its
``--config`` is rewritten so a precise scorer names a new copy of the test tokenizer (bytes of its own: a
copy with the same bytes is not parsed again since tok31), then SIGHUP; the
figure is each gateway's longest request latency within 2 s of each reload, against its own latency before
the first reload.

    python scripts/tokenizer_load_stall.py parts --repeats 5 --before-src /work/main/src
    python scripts/tokenizer_load_stall.py live --before-src /work/main/src --reloads 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kvgate import lifeline

HERE = Path(__file__).resolve().parent.parent


async def _gaps(work: Callable[[], Any], on_loop: bool = False) -> tuple[float, float]:
    """The event loop's longest gap between 1 ms ticks while ``work`` runs (on a thread, or with
    ``on_loop`` on the loop itself, as a request's pick), and the sum of its gaps over 5 ms: ms."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    gaps.clear()
    if on_loop:
        from kvgate.scheduling import tokenize

        work()
        await asyncio.to_thread(tokenize.wait_loads, 60)  # (a load it left to the loader thread, measured)
    else:
        await asyncio.to_thread(work)
    done.set()
    await ticker
    return max(gaps) * 1000, sum(g for g in gaps if g > 0.005) * 1000


def _distinct(src: Path, dst: Path, n: int) -> None:
    """A copy of ``src`` with other bytes (``n`` spaces after it): since tok31 a copy with the same bytes
    as a loaded tokenizer is not parsed again (``tokenize.load``), and each load here is to parse."""
    dst.write_bytes(src.read_bytes() + b" " * n)


def _module(src: str) -> Any:
    """``kvgate.scheduling.tokenize`` as the tree at ``src`` has it (stdlib and xxhash only), apart."""
    import importlib.util

    path = Path(src) / "kvgate/scheduling/tokenize.py"
    spec = importlib.util.spec_from_file_location("tokenize_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def parts(repeats: int, before_src: str | None) -> None:
    from tokenizers import Tokenizer

    from kvgate.scheduling import tokenize
    from kvgate.sim.tokenizer import tokenizer_dir

    src = tokenizer_dir() / "tokenizer.json"
    tmp = Path(tempfile.mkdtemp(prefix="tok-stall-"))
    n = 0

    def fresh() -> Path:
        nonlocal n
        n += 1
        d = tmp / f"m{n}"
        d.mkdir()
        _distinct(src, d / "tokenizer.json", n)
        return d / "tokenizer.json"

    steps: dict[str, tuple[Callable[[], Any], bool]] = {
        "Tokenizer.from_file": (lambda: Tokenizer.from_file(str(fresh())), False),
        "json.loads(file)": (lambda: json.loads(fresh().read_text()), False),
        "PromptTokenizer": (lambda: tokenize.PromptTokenizer(fresh()), False),
        "auto first pick: for_model": (lambda: tokenize.for_model(str(fresh().parent)), True),
        "auto first pick: for_model_soon": (lambda: tokenize.for_model_soon(str(fresh().parent)), True),
    }
    if before_src:
        old = _module(before_src)
        steps["PromptTokenizer (before)"] = (lambda: old.PromptTokenizer(fresh()), False)
        first = (lambda: old.TokenizerSource(old.AUTO).get(str(fresh().parent)), True)
        steps["auto first pick (before)"] = first
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            fn, on_loop = steps[name]
            got[name].append(await _gaps(fn, on_loop))
    print(f"file {src} ({src.stat().st_size} bytes); while each step ran, the loop's longest gap and its")
    print("gaps over 5 ms summed, ms (median, min-max)")
    for name, xs in got.items():
        top, tot = [x[0] for x in xs], [x[1] for x in xs]
        print(f"  {name:34s} longest {statistics.median(top):6.1f} ({min(top):.1f}-{max(top):.1f})   "
              f"summed {statistics.median(tot):6.1f} ({min(tot):.1f}-{max(tot):.1f})")  # fmt: skip
    print("load", _loadavg())
    shutil.rmtree(tmp, ignore_errors=True)


# --- live: two gateways, before and after, one run ------------------------------------------------------


def _picker(tok: str, n: int) -> dict[str, Any]:
    sc = {
        "type": "precise-prefix-cache-scorer",
        "parameters": {"mode": "tokens", "tokenizer": tok, "eventsBind": False, "indexName": f"stall-{n}"},
    }
    return {
        "plugins": [sc, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": sc["type"]}, {"pluginRef": "queue-scorer"}]}
        ],
    }


def _write(path: Path, addr: str, tok: str, n: int) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0},
        "pools": [
            {"name": "p", "endpoints": [addr], "models": ["m"], "endpointPickerConfig": _picker(tok, n)}
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def _start(src: str, config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--kv-events", "off"]
    p = subprocess.Popen(  # (it dies with this script)
        lifeline.die_with_parent_argv(cmd), stdout=subprocess.PIPE, stderr=log.open("wb"), env=env,
        start_new_session=True,
    )  # fmt: skip
    assert p.stdout is not None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stdout.readline().decode()
        if not line:
            raise SystemExit(f"kvgate serve exited: {log.read_text()[-2000:]}")
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return p, int(m.group(1))
    raise SystemExit("kvgate serve printed no listen line")


async def live(before_src: str, reloads: int) -> None:
    from kvgate.sim.replica_base import ReplicaConfig
    from kvgate.sim.server import Replica
    from kvgate.sim.tokenizer import tokenizer_dir

    src = tokenizer_dir() / "tokenizer.json"
    tmp = Path(tempfile.mkdtemp(prefix="tok-stall-live-"))
    rep = Replica(ReplicaConfig(model="m", time_scale=100.0))
    await rep.start()
    addr = f"127.0.0.1:{rep.port}"
    n = 0

    def fresh_tok() -> str:
        nonlocal n
        n += 1
        p = tmp / f"t-{n}.json"
        _distinct(src, p, n)
        return str(p)

    sides = {"before": before_src, "after": str(HERE / "src")}
    procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    for side, path in sides.items():
        cfg = tmp / f"{side}.yaml"
        _write(cfg, addr, fresh_tok(), n)
        p, port = _start(path, cfg, tmp / f"{side}.log")
        procs[side] = (p, port, cfg)
    lat: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
    stop = False
    try:
        async with aiohttp.ClientSession() as http:

            async def pinger(side: str) -> None:
                port = procs[side][1]
                url = f"http://127.0.0.1:{port}/v1/completions"
                while not stop:
                    t = time.perf_counter()
                    async with http.post(url, json={"model": "m", "prompt": "x", "max_tokens": 1}) as r:
                        await r.read()
                        assert r.status == 200, r.status
                    lat[side].append((time.time(), time.perf_counter() - t))
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(pinger(s)) for s in sides]
            await asyncio.sleep(3)
            marks: dict[str, list[float]] = {s: [] for s in sides}
            for i in range(reloads):
                for side in sides if i % 2 == 0 else reversed(list(sides)):
                    p, _, cfg = procs[side]
                    _write(cfg, addr, fresh_tok(), n)
                    marks[side].append(time.time())
                    os.kill(p.pid, signal.SIGHUP)
                    await asyncio.sleep(2)
            stop = True
            await asyncio.gather(*tasks)
    finally:
        for p, _, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p, _, _ in procs.values():
            p.wait(60)
        await rep.stop()
    print(f"{reloads} reloads each, a new copy of {src} ({src.stat().st_size} bytes) per reload")
    for side in sides:
        first = marks[side][0]
        base = sorted(x for t, x in lat[side] if t < first)
        per = [max((x for t, x in lat[side] if m <= t < m + 2.0), default=0.0) * 1000 for m in marks[side]]
        print(f"  {side:6s} ({sides[side]}): before the reloads p50 {statistics.median(base) * 1000:.1f} ms, "
              f"max {base[-1] * 1000:.1f} ms; max within 2 s of each reload, ms: "
              f"{', '.join(f'{x:.0f}' for x in per)}")  # fmt: skip
        applied = (tmp / f"{side}.log").read_text().count("picker swapped")
        print(f"          picker swaps logged: {applied}")
    print("load", _loadavg())
    shutil.rmtree(tmp, ignore_errors=True)


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before-src", help="also the loads of the tokenize module at this src directory")
    lv = sub.add_parser("live")
    lv.add_argument("--before-src", required=True, help="the src directory of the code before")
    lv.add_argument("--reloads", type=int, default=5)
    args = ap.parse_args()
    if args.cmd == "parts":
        asyncio.run(parts(args.repeats, args.before_src))
    else:
        asyncio.run(live(args.before_src, args.reloads))


if __name__ == "__main__":
    main()
