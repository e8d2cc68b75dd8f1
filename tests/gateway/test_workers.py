"""``kvgate serve --workers N``: worker processes on one port, merged admin, drain, restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import workers_kit
from gateway.backend import free_port
from kvgate.config.gateway import GatewayConfigError, load_gateway_config
from kvgate.gateway.cli import main as serve_main
from kvgate.gateway.workers import merge_metrics


def _children(pid: int) -> list[int]:
    return workers_kit.children(pid)


def serve_workers(address: str, n: int, policy: str = "round-robin") -> Any:
    """``kvgate serve --endpoints address --model m --policy policy --workers n``, ready
    (``workers_kit.serve_workers``): (process, data port, admin port)."""
    return workers_kit.serve_workers(
        "--endpoints", address, "--model", "m", "--policy", policy, n=n
    )  # fmt: skip


async def test_workers_share_the_port_and_admin_merges_their_metrics(backends):
    (b,) = await backends(1)
    async with serve_workers(b.address, 2) as (_, port, admin):
        body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 2})
        # A new connection per request: the kernel spreads connections over the workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(40):
                async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                    assert r.status == 200
                    assert (await r.json())["choices"]
        per = await workers_kit.answers_per_worker(admin, "inference_objective_request")
    assert sum(per.values()) == 40
    # Both served some (all 40 on one worker: probability 2**-39 with SO_REUSEPORT's hashing).
    assert set(per) == {"0", "1"} and min(per.values()) > 0


@pytest.mark.parametrize("cut", [False, True], ids=["finished", "cut-at-the-deadline"])
async def test_sigterm_drains_every_worker(backends, tmp_path, cut):
    """As one process (``test_failures.py::test_cli_serve_drains_on_sigterm``, the same checks:
    ``drain_kit``): no new connection accepted by any worker, the stream finished or cut at the
    deadline (said by the worker that held it), exit code 0, nothing unclean on stderr."""
    from gateway import drain_kit

    tokens = 200 if cut else 40
    (b,) = await backends(1, tokens=tokens, chunk_delay=0.1)
    stderr = tmp_path / "stderr"
    cfg = drain_kit.config(tmp_path, b.address, drain_s=1 if cut else 30)
    proc, port, admin = await drain_kit.serve_workers(cfg, stderr)
    ready = f"http://127.0.0.1:{admin}/readyz"
    await drain_kit.check_sigterm_mid_stream(
        proc, port, tokens, cut, stderr, ready_url=ready, ready_s=60, exit_s=60
    )


async def test_the_drain_serves_every_workers_flow_control_queue(backends, tmp_path):
    """A pool gated at one request in flight, eight requests queued over two workers, then SIGTERM: the
    drain serves them all at the pool's pace. Before the fix each worker stopped following the other's
    in-flight counts at the signal, so its gate stayed saturated on a request long finished and its
    queued requests waited out their TTL (503) while the pool was idle (review s18-qa M3; it failed
    unless the kernel put every connection on one worker)."""
    from gateway import drain_kit

    (b,) = await backends(1)
    b.answer_delay = 0.5
    stderr = tmp_path / "stderr"
    proc, port, admin = await drain_kit.serve_workers(
        drain_kit.flow_controlled_config(tmp_path, b.address, "defaultRequestTTL: 20s"), stderr
    )
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})

    async def one(s: aiohttp.ClientSession) -> tuple[int, float]:
        t0 = asyncio.get_running_loop().time()
        async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
            await r.read()
            return r.status, asyncio.get_running_loop().time() - t0

    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            sent = []
            for _ in range(8):  # (a new connection each: the kernel spreads them over the workers)
                sent.append(asyncio.create_task(one(s)))
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            got = await asyncio.gather(*sent)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # (status, seconds) each: a request stuck behind the frozen gate ends 503 at its 20 s TTL.
    assert [status for status, _ in got] == [200] * 8, got


async def test_a_dead_worker_is_restarted(backends):
    (b,) = await backends(1)
    async with serve_workers(b.address, 2) as (proc, port, admin):
        before = _children(proc.pid)
        workers = [p for p in before if "kvgate-worker" in _cmdline(p) or _is_python(p)]
        assert len(workers) >= 2
        os.kill(workers[0], signal.SIGKILL)
        loop = asyncio.get_running_loop()
        # (its replacement is a fresh interpreter importing kvgate: as long as a start, ``READY_S``; this
        # gave up after 10 s before)
        deadline = loop.time() + workers_kit.READY_S
        async with aiohttp.ClientSession() as s:
            while True:
                await asyncio.sleep(0.05)
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    ready = r.status == 200 and "(2/2 workers)" in await r.text()
                if ready and workers[0] not in _children(proc.pid):
                    break
                assert loop.time() < deadline, "the killed worker was not replaced"
            body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 2})
            async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                assert r.status == 200
        assert proc.returncode is None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except OSError:
        return True


async def test_workers_exit_when_the_supervisor_is_killed(backends):
    # SIGKILL leaves the supervisor no chance to stop its workers: they must notice on their own.
    (b,) = await backends(1)
    async with serve_workers(b.address, 2) as (proc, _, _):
        workers = [p for p in _children(proc.pid) if _is_python(p)]
        assert len(workers) == 2
        proc.kill()
        await proc.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0  # (each notices on its own loop: a loaded machine; 10 s before)
        while not all(_gone(p) for p in workers):
            assert loop.time() < deadline, f"orphaned workers still running: {workers}"
            await asyncio.sleep(0.05)


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")
    return ""


def _is_python(pid: int) -> bool:
    # spawn's workers run "python -c 'from multiprocessing.spawn import spawn_main...'"
    return "multiprocessing.spawn" in _cmdline(pid)


def test_merge_keeps_families_whole_and_labels_each_worker() -> None:
    def text(v: int) -> str:
        return (
            "# HELP x_total things\n# TYPE x_total counter\n"
            f'x_total{{model_name="m"}} {v}\n'
            "# HELP g a gauge\n# TYPE g gauge\n"
            f"g {v * 10}\n"
        )

    out = merge_metrics([text(1), None, text(3)]).decode()
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    xs = {(s.labels["worker"], s.labels.get("model_name")): s.value for s in fams["x"].samples}
    assert xs == {("0", "m"): 1.0, ("2", "m"): 3.0}
    assert {s.labels["worker"]: s.value for s in fams["g"].samples} == {"0": 10.0, "2": 30.0}
    # One TYPE line per family, not one per worker.
    assert out.count("# TYPE g gauge") == 1


@pytest.mark.parametrize("value", [0, 65, True, "2"])
def test_listen_workers_is_validated(tmp_path, value) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(
        "pools: [{name: p, endpoints: ['127.0.0.1:8001'], models: [m]}]\n"
        f"listen: {{workers: {orjson.dumps(value).decode()}}}\n"
    )
    with pytest.raises(GatewayConfigError, match=r"listen\.workers"):
        load_gateway_config(str(p))


def test_listen_workers_accepted(tmp_path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text("pools: [{name: p, endpoints: ['127.0.0.1:8001'], models: [m]}]\nlisten: {workers: 4}\n")
    assert load_gateway_config(str(p)).workers == 4


def test_cli_refuses_zero_workers(capsys) -> None:
    rc = serve_main(["--endpoints", "127.0.0.1:8001", "--model", "m", "--workers", "0"])
    assert rc == 2 and "--workers" in capsys.readouterr().err


async def test_without_an_admin_port_each_worker_answers_admin_routes_on_the_data_port(backends):
    # As a single process does: probes and scrapes that work without --workers keep working with it.
    (b,) = await backends(1)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", b.address, "--model", "m",
        "--policy", "round-robin", "--port", str(port), "--workers", "2", "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await workers_kit.until_ready(port, "", "never ready")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(10):  # new connections: whichever worker takes each must answer
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    assert r.status == 200 and "kvgate_gateway_inflight_requests" in await r.text()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
