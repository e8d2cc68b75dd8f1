"""``kvgate sim``: serve N simulated vLLM/SGLang replicas from one process (one uvloop event loop)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from kvgate.aio import wait_event
from kvgate.entry import (
    ArgumentParser,
    log_level,
    nonneg_int,
    nonneg_number,
    port_number,
    positive_int,
    positive_number,
)
from kvgate.sim.profiles import profile_arg, profile_names


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="kvgate sim", description="Run simulated vLLM/SGLang model servers.")
    p.add_argument("--replicas", type=positive_int, default=1, help="replicas in this process (default 1)")
    p.add_argument(
        "--profile",
        type=profile_arg,
        default="llama3-8b-h100",
        help=f"step-time profile: {', '.join(profile_names())}",
    )
    p.add_argument(
        "--base-port", type=port_number, default=8001, help="replica i listens on base+i (0: ephemeral)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="sim-model", help="served model name")
    p.add_argument("--engine", choices=("vllm", "sglang"), default="vllm", help="metric names to expose")
    p.add_argument("--time-scale", type=positive_number, default=1.0, help="> 1 runs faster than real time")
    p.add_argument("--max-num-seqs", type=nonneg_int, default=0, help="0: the profile's default")
    p.add_argument("--max-num-batched-tokens", type=nonneg_int, default=0, help="0: the profile's default")
    p.add_argument("--num-gpu-blocks", type=nonneg_int, default=0, help="0: from the profile's GPU memory")
    p.add_argument("--block-size", type=nonneg_int, default=0, help="0: the profile's (16)")
    p.add_argument(
        "--max-model-len", type=nonneg_int, default=0, help="0: the model's, capped by the KV cache"
    )
    p.add_argument("--max-loras", type=nonneg_int, default=1)
    p.add_argument("--lora-adapters", default="", help="comma-separated adapters loaded at start")
    p.add_argument(
        "--kv-events-port",
        type=port_number,
        default=None,
        help="publish KV events: replica i PUB on P+2i, replay ROUTER on P+2i+1 (0: ephemeral)",
    )
    p.add_argument("--kv-topic", default="kv")
    p.add_argument(
        "--control-port", type=port_number, default=None, help="fleet admin port (stop/start/faults)"
    )
    p.add_argument(
        "--duration", type=nonneg_number, default=0.0, help="exit after this many seconds (0: until signal)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for fault injection draws")
    p.add_argument(
        "--stream-interval", type=positive_int, default=1, help="stream tokens in groups of N (vLLM's)"
    )
    p.add_argument("--late-slack-ms", type=nonneg_number, default=5.0, help="a step this late counts as late")
    p.add_argument("--log-level", type=log_level, default="WARNING")
    return p


async def _serve(args: argparse.Namespace) -> int:
    from kvgate.sim.fleet import SimFleet

    loras = tuple(a for a in args.lora_adapters.split(",") if a)
    fleet = SimFleet(
        args.replicas,
        base_port=args.base_port,
        kv_events_port=args.kv_events_port,
        control_port=args.control_port,
        model=args.model,
        engine=args.engine,
        profile=args.profile,
        time_scale=args.time_scale,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_loras=args.max_loras,
        lora_adapters=loras,
        host=args.host,
        kv_topic=args.kv_topic,
        seed=args.seed,
        late_slack_s=args.late_slack_ms / 1000.0,
        stream_interval=args.stream_interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for r in fleet.replicas:
            kv = f" kv-events {r.kv.endpoint} replay {r.kv.replay_endpoint}" if r.kv is not None else ""
            print(f"replica {r.index}: {r.url}{kv}", flush=True)
        if fleet.control_port is not None:
            print(f"control: http://{args.host}:{fleet.control_port}/sim/replicas", flush=True)
        print(
            f"serving {args.replicas} x {args.model} ({args.engine}, {args.profile}, "
            f"time-scale {args.time_scale}); Ctrl-C stops",
            flush=True,
        )
        await _wait_stop(stop, args.duration or None)
    return 0


async def _wait_stop(stop: asyncio.Event, duration_s: float | None) -> None:
    """Until ``stop`` (SIGINT / SIGTERM) or ``duration_s`` (``None``: no limit). With
    ``kvgate.aio.wait_event``, not ``asyncio.wait_for(stop.wait(), ...)``, which on Python 3.11 returns
    instead of raising when this task is cancelled as ``stop`` is set (CPython gh-86296)."""
    if duration_s is None:
        await stop.wait()
    else:
        await wait_event(stop, duration_s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The ports derived from a flag (replica i: base+i; KV events P+2i, P+2i+1) are ports too.
    last = args.replicas - 1
    for flag, port, top in (
        ("--base-port", args.base_port, args.base_port + last),
        ("--kv-events-port", args.kv_events_port, (args.kv_events_port or 0) + 2 * last + 1),
    ):
        if port and top > 65535:
            print(f"kvgate sim: {flag} {port} with --replicas {args.replicas} needs port {top} (> 65535)",
                  file=sys.stderr)  # fmt: skip
            return 2
    import uvloop

    try:
        return uvloop.run(_serve(args))
    except (OSError, ValueError, KeyError) as e:
        print(f"kvgate sim: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
