"""What the picker's accounting leaves behind, as digests to compare between two trees (one process each).

    PYTHONPATH=src python scripts/accounting_digest.py metrics [--requests 3000] [--policy kvgate]
    PYTHONPATH=src python scripts/accounting_digest.py sim FAMILY QPS SEED [--policy kvgate]

``metrics``: ``--requests`` non-streamed requests through the gateway's own code in one process
(``gateway_path_cost.py``'s set-up, ``_costkit.in_memory_gateway``: the real front, proxy, picker,
upstream client and metrics, the two sockets in memory; every 37th upstream answer a 500, so retries and
failed answers are counted too; the picker's tie-break seeded), then every endpoint's ``InFlight``, the
Director's decode estimate and what it still tracks, and the ``/metrics`` text with time-valued samples
masked (durations, ``_created``, process and GC figures): the digest of all of it, and the text itself
with ``--print``.

``sim``: one mixed-workload fleet simulation (``kvgate.bench.multiturn.mixed_sim``, 15 s warm-up and
60 s measured), every pick's endpoint hashed, then the endpoints' ``InFlight`` and learned paces and
the decode estimate.

Run it under each tree's ``PYTHONPATH`` (e.g. ``/work/main/src`` and this one's ``src``): equal digests
say the trees count alike on that run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import re
from dataclasses import asdict
from typing import Any

from _costkit import in_memory_gateway

_RID = re.compile(rb"x-request-id: [0-9a-f]+-[0-9a-f]+")


def _masked(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        name = line.split(" ")[0].split("{")[0]
        timed = re.match(r"(process_|python_gc|python_info)", name) or re.search(r"(seconds|duration)", name)
        masked = name.endswith("_created") or (timed and not name.endswith("_count"))
        if masked and not line.startswith("#"):
            line = re.sub(r" [-0-9.e+]+$", " <time>", line)
        out.append(line)
    return out


def metrics_run(requests: int, policy: str) -> list[str]:
    import uvloop
    from prometheus_client import REGISTRY, generate_latest

    from kvgate.bench.gateway_overhead import _COMPLETION, BODY, _request_bytes
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools
    from kvgate.gateway.server import GatewayServer

    def answer(status: bytes, body: bytes) -> bytes:
        head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    good, bad = answer(b"200 OK", _COMPLETION), answer(b"500 Internal Server Error", b"{}")
    request = _request_bytes(18080, "/v1/completions", BODY)
    written = [0]

    def reply() -> bytes:
        written[0] += 1
        return bad if written[0] % 37 == 0 else good

    async def main() -> list[str]:
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], policy)
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        front, proto, client = in_memory_gateway(cfg, gw, reply)
        for pool in gw.pools:  # (the max-score picker's tie-break: seeded, so both trees draw alike)
            director: Any = pool.director
            director.handle.rng.seed(7)
        loop = asyncio.get_running_loop()
        statuses: dict[bytes, int] = {}
        answers = hashlib.sha256()
        for _ in range(requests):
            client.got = loop.create_future()
            proto.data_received(request)
            got = await client.got
            statuses[got[9:12]] = statuses.get(got[9:12], 0) + 1
            # (every byte the client got, the generated x-request-id masked: its prefix is random)
            answers.update(_RID.sub(b"x-request-id: <rid>", got))
        d: Any = gw.pools[0].director
        lines = [f"answers {sorted(statuses.items())} bytes {answers.hexdigest()[:16]}"]
        lines += [f"inflight {ep.address} {ep.inflight}" for ep in d.store.all()]
        lines.append(f"mean_decode {d.mean_decode} tracks {len(d._tracks)} picked {len(d._picked)}")
        lines += _masked((generate_latest(gw.metrics.registry) + generate_latest(REGISTRY)).decode())
        front.close_all()
        return lines

    random.seed(7)
    result: list[str] = uvloop.run(main())
    return result


def sim_run(family: str, qps: float, seed: int, policy: str) -> list[str]:
    from kvgate.bench.mixed import FAMILIES
    from kvgate.bench.multiturn import mixed_sim

    sim = mixed_sim(FAMILIES[family], policy, qps, seed, duration=60.0, warmup=15.0)
    d = sim.director
    picks: list[str] = []
    pick = d.pick

    def hashed(req: Any, *a: Any, **k: Any) -> Any:
        try:
            r = pick(req, *a, **k)
        except Exception as e:
            picks.append(f"{req.request_id}:{type(e).__name__}")
            raise
        picks.append(f"{req.request_id}:{r.endpoints[0].address}")
        return r

    d.pick = hashed
    row = sim.run().row
    eps = d.store.all()
    return [
        f"picks {len(picks)} {hashlib.sha256(';'.join(picks).encode()).hexdigest()[:16]}",
        *(f"inflight {ep.address} {asdict(ep.inflight)}" for ep in eps),
        *(f"pace {ep.address} {d.speed.cost(ep.address)!r}" for ep in eps),
        f"mean_decode {d.mean_decode!r} p90 {row.get('ttft_p90')!r}",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("metrics", "sim"))
    p.add_argument("sim", nargs="*", help="sim: FAMILY QPS SEED")
    p.add_argument("--requests", type=int, default=3000, help="metrics: requests through the gateway")
    p.add_argument("--policy", default="kvgate")
    p.add_argument("--print", action="store_true", help="print what the digest is of")
    args = p.parse_args()
    if args.mode == "sim":
        if len(args.sim) != 3:
            p.error("sim takes FAMILY QPS SEED")
        lines = sim_run(args.sim[0], float(args.sim[1]), int(args.sim[2]), args.policy)
        what = f"sim {' '.join(args.sim)} {args.policy}"
    else:
        lines = metrics_run(args.requests, args.policy)
        what = f"metrics {args.requests} requests {args.policy}"
    if args.print:
        print("\n".join(lines))
    print(f"{what}: digest {hashlib.sha256(chr(10).join(lines).encode()).hexdigest()[:16]} ({lines[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
