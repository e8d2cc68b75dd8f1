"""A simulated fleet in its own process for live benchmarks: ``python -m kvgate.bench.simproc``.

Starts ``--replicas`` ``kvgate.sim.server.Replica`` servers on 127.0.0.1 ports (port 0; with KV events,
three claimed ports from ``kvgate.bench.ports`` each), prints one
``replica <i> http://127.0.0.1:<port>`` line each (what ``kvgate.bench.live.start_sim`` waits for),
and runs until SIGTERM/SIGINT. One process for the whole fleet keeps the benchmark's process count
(and its share of this machine's two cores) fixed however many replicas it simulates.

``--kv-events-offset N`` (> 0) makes every replica publish vLLM-style KV events on its HTTP port + N
(ZMQ PUB, bound) and answer replay on its HTTP port + 2N: a gateway's ``precise-prefix-cache-scorer``
with ``eventsPortOffset: N`` and ``replayPortOffset: 2N`` finds them from the endpoint address alone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Any

from kvgate.bench.ports import claim, free_port_group, release, spare_ports
from kvgate.entry import ArgumentParser, nonneg_int, positive_int, positive_number
from kvgate.sim.profiles import profile_arg

_PORT_TRIES = 50


def _replica_port(offset: int) -> int:
    """A 127.0.0.1 port ``p`` for a replica whose KV events use ``p + offset`` and ``p + 2 * offset``.

    A port-0 probe gave an ephemeral ``p`` whose ``p + offset`` could be a spare port (outside the
    ephemeral range) that another process's ``kvgate.bench.ports.free_port`` had handed out and claimed,
    its server about to bind it. Now every spare port of the three is claimed here first, machine-wide
    (refused where another process holds it): a group of spare ports from ``free_port_group`` where one
    fits, else an ephemeral ``p`` (a port-0 probe) with any spare ones of its group claimed."""
    if port := free_port_group(offset, 3):
        return port
    spare = set(spare_ports())
    for _ in range(1000):  # (cheap binds: a wide offset leaves few ephemeral ``p`` whose group fits)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        group = (port, port + offset, port + 2 * offset)
        if group[-1] < 65536 and _claim_spare(group, spare):
            return port
    raise OSError(f"no free port with free, unclaimed +{offset}/+{2 * offset} ports")


def _claim_spare(group: tuple[int, ...], spare: set[int]) -> bool:
    """Whether every spare port of ``group`` is now claimed here; where another process holds one, none is:
    the members claimed before it are let go (else they stay claimed, refused to every process, while the
    simulator lives)."""
    got: list[int] = []
    for port in group:
        if port not in spare:
            continue
        if not claim(port):
            for p in got:
                release(p)
            return False
        got.append(port)
    return True


def _release_group(port: int, offset: int) -> None:
    """Let go of the claims of a group whose bind failed: its spare members, the ones ``_replica_port``
    claimed (a port this process held before is refused there, so none of them is another's)."""
    spare = set(spare_ports())
    for p in (port, port + offset, port + 2 * offset):
        if p in spare:
            release(p)


async def start_replica(args: argparse.Namespace, index: int) -> Any:
    """One started replica; with KV events, on a port whose +N and +2N ports are free too."""
    import zmq

    from kvgate.sim.server import Replica, ReplicaConfig

    offset = args.kv_events_offset
    for _ in range(_PORT_TRIES):
        port = _replica_port(offset) if offset > 0 else 0
        cfg = ReplicaConfig(
            model=args.model,
            profile=args.profile,
            time_scale=args.time_scale,
            num_gpu_blocks=args.num_gpu_blocks,
            max_num_seqs=args.max_num_seqs,
            host="127.0.0.1",
            port=port,
            kv_events_port=port + offset if offset > 0 else None,
            kv_replay_port=port + 2 * offset if offset > 0 else None,
            seed=args.seed,
        )
        rep = None
        try:
            rep = Replica(cfg, index=index)  # binds the KV-event sockets
            await rep.start()  # binds the HTTP port
            return rep
        except (OSError, zmq.ZMQError):
            # Another process took one of the three first (binding by number, or a port-0 bind in the
            # fallback): next group.
            if rep is not None:
                await rep.close()
            if offset <= 0:
                raise
            _release_group(port, offset)
    raise OSError(f"replica {index}: no free port with free +{offset}/+{2 * offset} ports")


async def serve(args: argparse.Namespace) -> None:
    reps = [await start_replica(args, args.first_index + i) for i in range(args.replicas)]
    for r in reps:
        print(f"replica {r.index} {r.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for r in reps:
        await r.close()


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m kvgate.bench.simproc")
    p.add_argument("--replicas", type=positive_int, default=4)
    p.add_argument(
        "--first-index", type=nonneg_int, default=0, help="index of the first replica (several procs)"
    )
    p.add_argument("--profile", type=profile_arg, default="llama3-8b-h100")
    p.add_argument(
        "--time-scale", type=positive_number, default=1.0, help="> 1 faster than real time, < 1 slower"
    )
    p.add_argument("--model", default="sim-model")
    p.add_argument("--num-gpu-blocks", type=nonneg_int, default=0, help="0: the profile's KV capacity")
    p.add_argument("--max-num-seqs", type=nonneg_int, default=0)
    p.add_argument(
        "--kv-events-offset", type=int, default=0, help="> 0: KV events on http port + N, replay on + 2N"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 <= args.kv_events_offset < 30000:
        p.error("--kv-events-offset must be in 0..29999")
    try:
        import uvloop

        uvloop.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
