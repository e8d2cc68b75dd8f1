"""`kvgate epp` as a subprocess (the real CLI), discovering its pool from the API-server double."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

READY = re.compile(r"grpc=(\d+) health=(\d+) metrics=(\d+) tls=(on|off)")


@dataclass
class EppProc:
    proc: asyncio.subprocess.Process
    grpc: int
    health: int
    metrics: int
    log: Path

    async def readyz(self) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.metrics}/readyz") as r:
            return r.status, await r.text()

    async def metric(self, name: str) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.metrics}/metrics") as r:
            text = await r.text()
        return "\n".join(line for line in text.splitlines() if line.startswith(name))

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), 30)
        except BaseException:  # (it did not stop: killed, not left running past the test)
            self.proc.kill()
            await self.proc.wait()
            raise

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


async def launch_epp(server: str | None, log: Path, *args: str) -> EppProc:
    """``server``: the ``--kube-server`` (None: none, as for a hub EPP, whose clusters file names them)."""
    kube = ["--kube-server", server] if server is not None else []
    with open(log, "wb") as err:  # noqa: ASYNC230 - the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "epp", "--host", "127.0.0.1", "--port", "0",
            "--grpc-health-port", "0", "--metrics-port", "0", "--plaintext", *kube, *args,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    m = READY.search(line)
    if m is None:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"not ready: {line!r} {log.read_text()[-3000:]}")  # noqa: ASYNC240
    return EppProc(proc, int(m[1]), int(m[2]), int(m[3]), log)
