"""What clients see while a ``kvgate serve --workers 2`` worker is wedged (SIGSTOP) and then killed at the
bound (``--worker-timeout``): the kernel keeps handing the wedged worker's listening socket its share of new
connections (``SO_REUSEPORT``); they wait in its accept queue until the supervisor SIGKILLs it, and then
either get a reset (the queue dropped with the socket) or, with ``net.ipv4.tcp_migrate_req=1`` (Linux
5.14+, per network namespace), move to the other worker's queue and are answered.

Run it in a network namespace of its own so the sysctl touches nothing else (root):

    unshare -n sh -c 'ip link set lo up; sysctl -qw net.ipv4.tcp_migrate_req=0; \\
        PYTHONPATH=src python scripts/workers_wedged_clients.py --timeout 2 --clients 40'

One JSON line: per outcome (``ok``: HTTP 200; ``reset``: connection reset or closed with no answer;
``timeout``: no answer in ``--wait`` s), the count and the seconds from the wedge to the answer (min,
median, max). A simulated vLLM (``kvgate sim --profile tiny``) is the model server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time

from kvgate import lifeline

BODY = json.dumps({"model": "m", "prompt": "x", "max_tokens": 2}).encode()
REQUEST = (
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


async def one(port: int, wait_s: float, t0: float) -> tuple[str, float]:
    try:
        async with asyncio.timeout(wait_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(REQUEST)
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return "timeout", time.monotonic() - t0
    except (ConnectionResetError, BrokenPipeError):
        return "reset", time.monotonic() - t0
    if data.startswith(b"HTTP/1.1 200"):
        return "ok", time.monotonic() - t0
    return ("reset" if not data else "other"), time.monotonic() - t0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        out.append(int(entry))
    return out


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=2.0, help="--worker-timeout (s)")
    p.add_argument("--clients", type=int, default=40, help="new connections, opened at once after the wedge")
    p.add_argument("--wait", type=float, default=30.0, help="a client's limit (s)")
    p.add_argument("--base-port", type=int, default=26100)
    args = p.parse_args()
    sim_port, port, admin = args.base_port, args.base_port + 10, args.base_port + 11
    py = sys.executable
    sim = await asyncio.create_subprocess_exec(
        *lifeline.die_with_parent_argv(
            [py, "-m", "kvgate.cli", "sim", "--profile", "tiny", "--model", "m", "--base-port", str(sim_port)]
        ),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gw = await asyncio.create_subprocess_exec(
        *lifeline.die_with_parent_argv(
            [py, "-m", "kvgate.cli", "serve", "--endpoints", f"127.0.0.1:{sim_port}", "--model", "m",
             "--port", str(port), "--admin-port", str(admin), "--workers", "2",
             "--worker-timeout", f"{args.timeout:g}"]
        ),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    stopped = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", admin)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = await reader.read()
                writer.close()
                if got.startswith(b"HTTP/1.1 200") and b"(2/2 workers)" in got and len(children(gw.pid)) == 2:
                    break
            await asyncio.sleep(0.1)
        else:
            print("the gateway never became ready", file=sys.stderr)
            return 1
        await asyncio.sleep(1.0)  # (the sim's health seen by both workers)
        stopped = min(children(gw.pid))
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        results = await asyncio.gather(*(one(port, args.wait, t0) for _ in range(args.clients)))
        migrate = int(open("/proc/sys/net/ipv4/tcp_migrate_req").read())  # noqa: ASYNC230, SIM115
        out: dict[str, object] = {"tcp_migrate_req": migrate, "worker_timeout_s": args.timeout,
                                  "clients": args.clients}  # fmt: skip
        for kind in ("ok", "reset", "timeout", "other"):
            ts = sorted(t for k, t in results if k == kind)
            if ts:
                mid = statistics.median(ts)
                out[kind] = {"n": len(ts), "min_s": round(ts[0], 2), "median_s": round(mid, 2),
                             "max_s": round(ts[-1], 2)}  # fmt: skip
        print(json.dumps(out))
        return 0
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        for proc in (gw, sim):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
