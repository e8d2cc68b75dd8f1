"""Review qa36c F11: ``kvgate demo --keep`` piped or logged (rich's width 80) hard-wrapped its "Try:" curl
inside the quoted header, and the pasted command got "malformed header line". Each command is one line now:
this runs ``keep_running`` (a real simulated fleet and gateway on 127.0.0.1, ports 0) into an 80-column
console, then sends the printed curl's body to the printed URL."""

from __future__ import annotations

import asyncio
import io
import shlex
import time

import aiohttp
import pytest
from rich.console import Console

pytest.importorskip("kvgate.gateway.server")
pytest.importorskip("kvgate.sim.server")


async def _keep_and_try() -> None:
    from kvgate.bench import demo

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    task = asyncio.create_task(demo.keep_running(demo.default_setup(quick=True), console))
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything." not in out.getvalue():  # (the state: the message is printed)
            assert not task.done(), out.getvalue()
            assert time.monotonic() < deadline, out.getvalue()
            await asyncio.sleep(0.05)
        lines = out.getvalue().splitlines()
        curl = next(line for line in lines if line.strip().startswith("curl "))
        argv = shlex.split(curl)  # (the wrapped one did not even split: a quote was left open)
        assert argv[argv.index("-H") + 1] == "content-type: application/json", curl
        assert any(line.strip().startswith("python -c ") and line.rstrip().endswith("'") for line in lines)
        url, body = argv[2], argv[argv.index("-d") + 1]
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["choices"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # (its finally stops the gateway and the fleet)


def test_keep_prints_each_command_on_one_line_and_it_works() -> None:
    asyncio.run(_keep_and_try())
