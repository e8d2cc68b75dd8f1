"""``kvgate serve --config --workers 2`` reloads the file in every worker, as one process does: on SIGHUP
and when the file changes; a file that fails validation reaches no worker. Real processes, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from gateway.handler_server import serve_app
from gateway.test_workers import _children, _is_python
from gateway.workers_kit import until_ready

SMALL = b'{"model":"m","prompt":"x","max_tokens":1}'
BIG = orjson.dumps({"model": "m", "prompt": "x" * 2000, "max_tokens": 1})  # over a 1 KiB cap
LISTENING = re.compile(
    r"listening on http://127\.0\.0\.1:(\d+) \(2 workers\), admin on http://127\.0\.0\.1:(\d+)"
)
APPLIED = "config reload: limits applied: maxBodyBytes 1048576 -> 1024"


def _write(path: Path, addresses: list[str], limits: dict[str, Any]) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0, "workers": 2},
        "limits": limits,
        "pools": [{"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}],
    }
    path.write_text(yaml.safe_dump(doc))


@contextlib.asynccontextmanager
async def serve(config: Path, log: Path, own_group: bool = False) -> AsyncIterator[tuple[Any, int, int]]:
    """The supervisor on the file's port 0: (process, data port, admin port) as it printed them;
    ``own_group``: in a process group of its own (the supervisor's pid is the group's)."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=own_group,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "kvgate serve exited before listening"
            if m := LISTENING.search(line):
                port, admin = int(m.group(1)), int(m.group(2))
                break
        await until_ready(admin)
        yield proc, port, admin
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)


async def _statuses(port: int, body: bytes, n: int = 20) -> list[int]:
    """``n`` requests, each on a new connection: the kernel spreads connections over the workers, so
    20 of them all reach one worker with probability 2**-19."""
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(n):
            async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                await r.read()
                out.append(r.status)
    return out


async def _until(cond: Callable[[], Any], what: str) -> None:
    for _ in range(600):  # 60 s: every worker process on a loaded machine (20 s before)
        if cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


def _lines(log: Path, text: str) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if text in ln]


def _workers_that_logged(log: Path, text: str) -> set[str]:
    return {m.group(1) for ln in _lines(log, text) if (m := re.search(r"(kvgate-worker-\d+)", ln))}


async def test_sighup_reloads_limits_in_every_worker_and_a_bad_file_in_none(backends, tmp_path):
    (a,) = await backends(1)
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    _write(f, [a.address], {"maxBodyBytes": 1 << 20})
    async with serve(f, log) as (proc, port, admin):
        assert set(await _statuses(port, BIG)) == {200}

        _write(f, [a.address], {"maxBodyBytes": 1024})
        proc.send_signal(signal.SIGHUP)
        await _until(lambda: len(_workers_that_logged(log, APPLIED)) == 2, "not every worker reloaded")
        assert set(await _statuses(port, BIG)) == {413}  # the same request, refused by both workers
        assert set(await _statuses(port, SMALL)) == {200}

        # A file that fails validation: logged by the supervisor, never handed to a worker.
        f.write_text("pools: [{name: p, endpoints: ['bad host'], models: [m]}]")
        proc.send_signal(signal.SIGHUP)
        await _until(lambda: _lines(log, "is invalid, keeping the running config"), "the bad file not logged")
        await asyncio.sleep(0.5)
        assert not _workers_that_logged(log, "is invalid"), "a worker read the bad file"
        assert proc.returncode is None
        assert set(await _statuses(port, BIG)) == {413} and set(await _statuses(port, SMALL)) == {200}

        # A worker restarted after the reload starts from the reloaded limits, not the first file's.
        victim = next(p for p in _children(proc.pid) if _is_python(p))
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: victim not in _children(proc.pid), "the killed worker was not reaped")
        await until_ready(admin)
        assert set(await _statuses(port, BIG)) == {413}

        # And it reloads with the others.
        _write(f, [a.address], {"maxBodyBytes": 1 << 20})
        proc.send_signal(signal.SIGHUP)
        back = "maxBodyBytes 1024 -> 1048576"
        await _until(lambda: len(_workers_that_logged(log, back)) == 2, "not every worker reloaded")
        assert set(await _statuses(port, BIG)) == {200}
    assert proc.returncode == 0


async def test_a_changed_file_adds_an_endpoint_in_every_worker_without_a_signal(backends, tmp_path):
    a, b = await backends(2)
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    _write(f, [a.address], {})
    async with serve(f, log) as (_, port, _):
        assert set(await _statuses(port, SMALL)) == {200}
        assert not b.received
        _write(f, [a.address, b.address], {})  # no SIGHUP: the supervisor sees the modification time
        added = f"endpoints +['{b.address}']"
        await _until(lambda: len(_workers_that_logged(log, added)) == 2, "not every worker took the endpoint")
        assert set(await _statuses(port, SMALL)) == {200}
        assert b.received, "the endpoint added to the file never got traffic"


async def test_workers_apply_only_the_config_the_supervisor_checked(backends, tmp_path):
    """A SIGHUP to the whole process group (a terminal's hang-up, ``kill -HUP -PGID``) reaches the
    workers too: they reload the supervisor's checked snapshot, never the user's file, so a bad file
    (or one edited after the check) reaches no worker and the workers never split."""
    (a,) = await backends(1)
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    _write(f, [a.address], {"maxBodyBytes": 1 << 20})
    async with serve(f, log, own_group=True) as (proc, port, _):
        f.write_text("pools: [{name: p, endpoints: ['bad host'], models: [m]}]")
        os.killpg(proc.pid, signal.SIGHUP)
        await _until(lambda: _lines(log, "is invalid, keeping the running config"), "the bad file not logged")
        await asyncio.sleep(1.0)  # the workers' SIGHUP was handled long since
        assert not _workers_that_logged(log, "is invalid"), "a worker read the user's file"
        assert not _workers_that_logged(log, "config reload:"), "a worker applied something unchecked"
        assert proc.returncode is None
        assert set(await _statuses(port, BIG)) == {200}

        # A valid edit, then the group's SIGHUP: every worker lands on the same, checked config.
        _write(f, [a.address], {"maxBodyBytes": 1024})
        os.killpg(proc.pid, signal.SIGHUP)
        await _until(lambda: len(_workers_that_logged(log, APPLIED)) == 2, "not every worker reloaded")
        assert set(await _statuses(port, BIG)) == {413}
        assert not _workers_that_logged(log, "is invalid")


@pytest.mark.parametrize("workers", [1, 2])
async def test_an_edit_and_a_sighup_during_start_up_are_applied_not_fatal(tmp_path, workers):
    """Start-up can take a while (``--kv-events auto`` probes each endpoint): a SIGHUP then must not kill
    ``kvgate serve``, and an edit made then is applied once it runs (the file's modification time is
    taken before the file is read). The endpoint answers its KV-events probe only after the edit."""
    from aiohttp import web

    from kvgate.datalayer.kvdetect import PROBE_PATH

    probed, release = asyncio.Event(), asyncio.Event()

    async def server_info(request: web.Request) -> web.Response:
        probed.set()
        await release.wait()
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get(PROBE_PATH.partition("?")[0], server_info)
    runner, port = await serve_app(app)
    address = f"127.0.0.1:{port}"
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "workers": workers},
        "limits": {"maxBodyBytes": 1 << 20},
        "pools": [{"name": "p", "endpoints": [address], "models": ["m"]}],  # kvgate policy: probed
    }
    f.write_text(yaml.safe_dump(doc))
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--config", str(f), "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        await asyncio.wait_for(probed.wait(), 60)  # start-up is under way, the file already read
        doc["limits"] = {"maxBodyBytes": 1024}
        f.write_text(yaml.safe_dump(doc))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        release.set()
        assert proc.stdout is not None
        while "listening on" not in (line := (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()):
            assert line, f"kvgate serve exited during start-up: {log.read_text()}"
        await _until(
            lambda: len(_lines(log, APPLIED)) == workers, f"the edit was not applied: {log.read_text()}"
        )
        assert proc.returncode is None
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)
        await runner.cleanup()
    assert proc.returncode == 0


@contextlib.asynccontextmanager
async def _failing_snapshots(tmp_path: Path, monkeypatch: Any, poll_s: float) -> AsyncIterator[Any]:
    """A supervisor's config watch (polling every ``poll_s``) whose snapshot writes fail (ENOSPC: /tmp
    full) until ``mend()``; the file already edited (maxBodyBytes 1 MiB -> 1024) and the watch triggered:
    (supervisor, watch, its task, the snapshot's directory, mend). The task cancelled at the end."""
    import errno

    from kvgate.config.gateway import load_gateway_config
    from kvgate.gateway.workers import Supervisor, _WorkersReload

    f = tmp_path / "gw.yaml"
    _write(f, ["127.0.0.1:1"], {"maxBodyBytes": 1 << 20})
    sup = Supervisor(load_gateway_config(str(f)), 2, config_path=str(f))
    snap_dir = tmp_path / "kvgate-config-x"
    snap_dir.mkdir(mode=0o700)
    sup.snapshot = str(snap_dir / "config.pickle")
    watch = _WorkersReload(sup, str(f))
    watch.poll_s = poll_s
    write = Supervisor.write_snapshot

    def full(self: Supervisor, cfg: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def mend() -> None:
        monkeypatch.setattr(Supervisor, "write_snapshot", write)

    monkeypatch.setattr(Supervisor, "write_snapshot", full)
    task = asyncio.create_task(watch.run())
    try:
        _write(f, ["127.0.0.1:1"], {"maxBodyBytes": 1024})
        watch.trigger()
        yield sup, watch, task, snap_dir, mend
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for lock in sup._locks.values():
            os.close(lock)


async def test_a_snapshot_that_cannot_be_written_is_logged_and_the_watch_goes_on(
    tmp_path, monkeypatch, caplog
):
    """/tmp full, or a tmpfiles cleaner removing the private directory: the supervisor's watch logs the
    failed reload, keeps watching and retries at the next poll (the directory made again)."""
    import shutil

    from kvgate.gateway.workers import read_snapshot

    async with _failing_snapshots(tmp_path, monkeypatch, 0.2) as (sup, watch, task, snap_dir, mend):
        await _until(lambda: watch.failures >= 1, "the failed write was not seen")
        assert not task.done() and watch.reloads == 0
        assert "could not be applied" in caplog.text and "No space left" in caplog.text
        mend()
        shutil.rmtree(snap_dir)  # the cleaner took the directory meanwhile
        await _until(lambda: watch.reloads == 1, "the reload was not retried")  # no new edit, no signal
        assert read_snapshot(sup.snapshot).limits.max_body_bytes == 1024
        assert (snap_dir.stat().st_mode & 0o777) == 0o700
        assert (snap_dir / ".lock").exists()  # made again with its lock (held: sup._locks)


async def test_a_failed_start_up_leaves_no_private_directory(tmp_path, monkeypatch):
    """The snapshot's (and gossip's) temporary directories are made inside the cleanup: a start-up step
    that fails after them (here: the shared in-flight table) removes them."""
    import errno
    import tempfile

    from kvgate.config.gateway import load_gateway_config
    from kvgate.gateway.shared_inflight import SharedInFlight
    from kvgate.gateway.workers import Supervisor

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOMEM, "no shared memory")

    monkeypatch.setattr(SharedInFlight, "create", fail)
    f = tmp_path / "gw.yaml"
    _write(f, ["127.0.0.1:1"], {"maxBodyBytes": 1 << 20})
    sup = Supervisor(load_gateway_config(str(f)), 2, config_path=str(f))
    with pytest.raises(OSError, match="no shared memory"):
        await sup.run()
    assert list(tmp.iterdir()) == []


async def test_a_snapshot_write_that_keeps_failing_is_logged_with_backoff(tmp_path, monkeypatch, caplog):
    """Retried at every check (so it applies as soon as it can), but logged at the 1st, 2nd, 4th, ...
    failure in a row, not at every check for as long as /tmp stays full; its recovery is logged."""
    async with _failing_snapshots(tmp_path, monkeypatch, 0.01) as (_, watch, _, _, mend):
        await _until(lambda: watch.failures >= 40, "the failed write was not retried")
        mend()
        await _until(lambda: watch.reloads == 1, "the reload was not retried")
        failed = [r.getMessage() for r in caplog.records if "could not be applied" in r.getMessage()]
        n = watch.failures
        assert len(failed) == len([k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]), (n, failed)
        assert "(2 failures in a row;" in failed[1]
        assert f"applied after {n} failures" in caplog.text


def _write_picker(
    path: Path,
    address: str,
    prefix: dict[str, Any],
    extra: list[dict[str, Any]],
    limits: dict[str, Any] | None = None,
) -> None:
    plugins = [{"type": "queue-scorer"}, *extra, {"type": "prefix-cache-scorer", "parameters": prefix}]
    picker = {
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": p["type"]} for p in plugins]}],
    }
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0, "workers": 2},
        "limits": limits or {},
        "pools": [{"name": "p", "endpoints": [address], "models": ["m"], "endpointPickerConfig": picker}],
    }
    path.write_text(yaml.safe_dump(doc))


async def test_workers_swap_pickers_and_their_prefix_gossip_follows(backends, tmp_path):
    """Every worker swaps the picker, whether its prefix scorers stay (their indexes kept) or change (a
    new index: the gossip moves to the new layout in each worker); insertions still cross between the
    workers afterwards, and a worker restarted later starts on the reloaded picker."""
    (a,) = await backends(1)
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    _write_picker(f, a.address, {"blockSizeTokens": 16}, [])
    async with serve(f, log) as (proc, port, admin):
        assert set(await _statuses(port, SMALL)) == {200}
        _write_picker(f, a.address, {"blockSizeTokens": 16}, [{"type": "kv-cache-utilization-scorer"}])
        proc.send_signal(signal.SIGHUP)
        kept = "picker swapped (endpointPickerConfig -> endpointPickerConfig); prefix index kept"
        await _until(lambda: len(_workers_that_logged(log, kept)) == 2, "not every worker swapped")
        assert set(await _statuses(port, SMALL)) == {200}

        _write_picker(f, a.address, {"blockSizeTokens": 32}, [{"type": "kv-cache-utilization-scorer"}])
        proc.send_signal(signal.SIGHUP)
        new = "picker swapped (endpointPickerConfig -> endpointPickerConfig); prefix index new"
        await _until(lambda: len(_workers_that_logged(log, new)) == 2, "not every worker swapped")
        applied = await _gossip_applied(admin)
        assert set(await _statuses(port, BIG)) == {200}  # 20 picks of 15 blocks, spread over both workers
        await _until_async(lambda: _gossip_applied(admin), lambda n: n > applied, "no insertion crossed")
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
        assert re.search(r'kvgate_gateway_config_reloads_total\{result="applied",worker="\d"\} 2', text), text

        victim = next(p for p in _children(proc.pid) if _is_python(p))
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: victim not in _children(proc.pid), "the killed worker was not reaped")
        await until_ready(admin)
        before = len(_lines(log, "picker swapped"))
        # The same picker and a new limit: the restarted worker runs the reloaded picker already, so it
        # swaps nothing either (it would, had it started from the first file's).
        extra = [{"type": "kv-cache-utilization-scorer"}]
        _write_picker(f, a.address, {"blockSizeTokens": 32}, extra, limits={"maxBodyBytes": 1024})
        proc.send_signal(signal.SIGHUP)
        limited = "limits applied: maxBodyBytes"
        await _until(lambda: len(_lines(log, limited)) == 2, "not every worker reloaded")
        assert set(await _statuses(port, SMALL)) == {200}
        assert len(_lines(log, "picker swapped")) == before
    assert proc.returncode == 0


async def _gossip_applied(admin: int) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    return sum(
        float(m.group(1)) for m in re.finditer(r"kvgate_prefix_gossip_applied_total\{[^}]*\} (\S+)", text)
    )


async def _until_async(get: Callable[[], Any], cond: Callable[[Any], bool], what: str) -> None:
    for _ in range(600):  # 60 s: every worker process on a loaded machine (20 s before)
        if cond(await get()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)
