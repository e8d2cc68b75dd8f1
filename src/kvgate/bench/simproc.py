"""A simulated fleet in its own process for live benchmarks: ``python -m kvgate.bench.simproc``.

Starts ``--replicas`` ``kvgate.sim.server.Replica`` servers on ephemeral 127.0.0.1 ports, prints one
``replica <i> http://127.0.0.1:<port>`` line each (what ``kvgate.bench.live.start_sim`` waits for),
and runs until SIGTERM/SIGINT. One process for the whole fleet keeps the benchmark's process count
(and its share of this machine's two cores) fixed however many replicas it simulates.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def serve(args: argparse.Namespace) -> None:
    from kvgate.sim.server import Replica, ReplicaConfig

    reps = [
        Replica(
            ReplicaConfig(
                model=args.model,
                profile=args.profile,
                time_scale=args.time_scale,
                num_gpu_blocks=args.num_gpu_blocks,
                max_num_seqs=args.max_num_seqs,
                host="127.0.0.1",
                port=0,
                seed=args.seed,
            ),
            index=i,
        )
        for i in range(args.replicas)
    ]
    for r in reps:
        await r.start()
    for i, r in enumerate(reps):
        print(f"replica {i} {r.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for r in reps:
        await r.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvgate.bench.simproc")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--time-scale", type=float, default=1.0, help="> 1 faster than real time, < 1 slower")
    p.add_argument("--model", default="sim-model")
    p.add_argument("--num-gpu-blocks", type=int, default=0, help="0: the profile's KV capacity")
    p.add_argument("--max-num-seqs", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
