"""A ``kvgate serve`` process (one, or ``--workers N``) sent SIGTERM with a stream in flight: what the
drain must do, checked the same way for both (``tests/gateway/test_failures.py``,
``tests/gateway/test_workers.py``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

# What a clean exit never writes to stderr: asyncio's "Task was destroyed but it is pending!", an
# "Unclosed ..." resource (ResourceWarning, shown: PYTHONWARNINGS=default), "Exception ignored in", a
# traceback.
UNCLEAN = re.compile(r"Task was destroyed|[Uu]nclosed|ResourceWarning|Exception ignored|Traceback")


def config(tmp_path: Path, address: str, drain_s: float) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"pools:\n  - name: p\n    policy: round-robin\n    endpoints: ['{address}']\n    models: [m]\n"
        f"limits:\n  drainTimeoutSeconds: {drain_s}\n"
    )
    return path


# A pool gated at one request in flight by flow control (``{flow_control}``: its ``flowControl`` keys;
# ``{limits}``: more top-level keys, or nothing).
FLOW_CONTROLLED = """pools:
  - name: p
    endpoints: ['{address}']
    models: [m]
    endpointPickerConfig:
      apiVersion: inference.networking.x-k8s.io/v1alpha1
      kind: EndpointPickerConfig
      featureGates: [flowControl]
      saturationDetector:
        type: concurrency-detector
        parameters: {{maxConcurrency: 1, maxPendingRequests: 0}}
      flowControl: {{{flow_control}}}
{limits}"""


def flow_controlled_config(tmp_path: Path, address: str, flow_control: str, limits: str = "") -> Path:
    """``FLOW_CONTROLLED`` for the model server at ``address``, written to ``tmp_path``."""
    path = tmp_path / "gateway.yaml"
    path.write_text(FLOW_CONTROLLED.format(address=address, flow_control=flow_control, limits=limits))
    return path


async def serve_workers(cfg: Path, stderr: Path, n: int = 2) -> tuple[Any, int, int]:
    """``kvgate serve --config cfg --workers n --min-ready-workers n`` on free ports: (process, port, admin
    port); not yet awaited ready (``ready``)."""
    from gateway.backend import free_port

    port, admin = free_port(), free_port()
    proc = await serve(
        "--config", str(cfg), "--port", str(port), "--admin-port", str(admin), "--workers", str(n),
        "--min-ready-workers", str(n), stderr=stderr,
    )  # fmt: skip
    return proc, port, admin


async def serve(*args: str, stderr: Path) -> Any:
    """``kvgate serve <args>`` with warnings shown, its stderr into ``stderr``."""
    with stderr.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", *args, "--log-level", "WARNING",
            stdout=asyncio.subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONWARNINGS": "default"},
        )  # fmt: skip


async def _refused(port: int, within_s: float) -> None:
    """A new connection to ``port`` is refused (polled: the gateway handles its SIGTERM a moment later).

    A connect the kernel had completed into a listener's accept queue when the gateway closed that
    listener is reset, never accepted by the gateway (as by any server that stops listening): asyncio
    raises ``ConnectionResetError`` from the connect when the reset comes before its callback runs (a
    loaded machine), so that is no acceptance either and the poll goes on (doors17: this failed
    ``test_sigterm_drains_every_worker[cut-at-the-deadline]`` at load ~13;
    ``tests/gateway/test_drain_kit_refused.py``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        assert loop.time() < deadline, "a new connection was still accepted during the drain"
        await asyncio.sleep(0.02)


async def sigterm_mid_stream(proc: Any, port: int, tokens: int) -> tuple[bytes, bytes]:
    """A stream of ``tokens`` events opened, its first event read, SIGTERM sent; while it runs a new
    connection is refused; its first event and the rest (to the connection's end: a cut stream's rest
    is what came before the cut)."""
    body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": tokens})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    await writer.drain()
    async with asyncio.timeout(30):  # (a gateway process, a loaded machine: 10 s before)
        await reader.readuntil(b"\r\n\r\n")
        first = await reader.readuntil(b"\n\n")
    proc.send_signal(signal.SIGTERM)
    await _refused(port, within_s=30)  # (with --workers: the supervisor's signal to each; 5 s before)
    rest = b""
    async with asyncio.timeout(30):
        while chunk := await reader.read(65536):
            rest += chunk
    writer.close()
    return first, rest


async def check_sigterm_mid_stream(
    proc: Any,
    port: int,
    tokens: int,
    cut: bool,
    stderr: Path,
    *,
    ready_url: str,
    ready_s: float,
    exit_s: float,
) -> None:
    """``proc`` (``serve``'s, in front of one ``backends`` backend with ``tokens`` events a stream, its
    ``drainTimeoutSeconds`` 1 when ``cut`` else long) made ready (``ready_url`` within ``ready_s``), then
    ``sigterm_mid_stream``: it exits 0 within ``exit_s`` (killed if still running), and ``check_drained``."""
    try:
        await ready(ready_url, within_s=ready_s)
        first, rest = await sigterm_mid_stream(proc, port, tokens)
        assert await asyncio.wait_for(proc.wait(), exit_s) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    check_drained(first, rest, tokens, cut, stderr)


def check_drained(first: bytes, rest: bytes, tokens: int, cut: bool, stderr: Path) -> None:
    """The stream (``first``, ``rest``: ``sigterm_mid_stream``'s) finished, or when ``cut`` was cut at the
    drain's deadline (the log saying so, the drain's error event last); nothing unclean on stderr."""
    assert b"b0-0" in first
    said = "drain deadline (1s) passed with 1 request in flight at the deadline" in stderr.read_text()
    if cut:
        assert said, stderr.read_text()
        assert ends_with_the_drain_error_event(rest), rest[-400:]
    else:
        assert rest.count(b"data: ") == tokens and rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert not said
    assert unclean(stderr) == []


def ends_with_the_drain_error_event(rest: bytes) -> bool:
    """A stream the drain's deadline cut ends with an OpenAI error event naming the drain (503,
    ``service_unavailable``), no ``[DONE]``, and the chunked body's clean end (before doors16 it ended
    mid-body: no event, no end of the body)."""
    if b"[DONE]" in rest or not rest.endswith(b"\n\n\r\n0\r\n\r\n"):
        return False
    last = rest[: -len(b"\r\n0\r\n\r\n")].rsplit(b"data: ", 1)[-1]
    err = orjson.loads(last).get("error", {})
    return err.get("code") == "service_unavailable" and "drain deadline (1s)" in err.get("message", "")


def _accepted_ports(port: int) -> set[int]:
    """The remote ports of the connections to local ``port`` that a process has accepted: in ``/proc/net/tcp``
    (and ``tcp6``) a connection still in a listener's accept queue has inode 0, an accepted one its
    socket's inode."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


async def accepted(port: int, writers: list[asyncio.StreamWriter], within_s: float = 30.0) -> None:
    """Every one of ``writers``' connections to ``port`` accepted by the gateway (polled; Linux's
    ``/proc/net/tcp``). Once accepted, a worker's drain answers the request whose bytes it finds (read, or
    unread in the kernel: ``FrontServer.drain``); a connection still in the accept queue when the
    listener closes is reset. A worker's loop starts a connection it accepted (``connection_made``) before
    it runs the handler of a signal sent later, so a SIGTERM sent after this finds every one of them."""
    want = {w.get_extra_info("sockname")[1] for w in writers}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not want <= (got := _accepted_ports(port)):
        assert loop.time() < deadline, f"connections from {sorted(want - got)} never accepted on {port}"
        await asyncio.sleep(0.02)


def unclean(stderr: Path) -> list[str]:
    return [line for line in stderr.read_text(errors="replace").splitlines() if UNCLEAN.search(line)]


async def ready(url: str, within_s: float = 30.0) -> None:
    """``url`` (a ``/readyz``) answers 200."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert loop.time() < deadline, f"{url} not ready within {within_s}s"
            await asyncio.sleep(0.05)
