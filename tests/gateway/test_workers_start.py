"""``kvgate serve --workers N`` while a worker starts: no connections before it is ready, the supervisor's
``/readyz`` against ``listen.minReadyWorkers``, a process-group SIGHUP right after a spawn, and the private
directories a SIGKILLed supervisor left behind. Real processes, real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
import zmq
import zmq.asyncio

from gateway.backend import free_port
from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.config.policies import precise_policy
from kvgate.gateway.cli import main as serve_main
from kvgate.sim.tokenizer import tokenizer_dir

_END_SEQ = (-1).to_bytes(8, "big", signed=True)


def _children(pid: int) -> set[int]:
    """The supervisor's worker processes (spawn's: ``python -c 'from multiprocessing.spawn ...'``)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"multiprocessing.spawn" in f.read():
                    out.add(int(entry))
    return out


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    return True
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ReplayFeed:
    """An engine's KV-event sockets as vLLM binds them: a PUB (silent) and the replay ROUTER, which
    answers each catch-up request with an empty buffer at once, or, while ``hold`` is set, only when the
    test says (``release``). Every request is queued in ``asked``."""

    def __init__(self, above: int) -> None:
        # Above the engine's port: the scorer finds them at fixed offsets from it (as a vLLM deployment).
        ctx = zmq.asyncio.Context.instance()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.events_port = self.pub.bind_to_random_port("tcp://127.0.0.1", min_port=above + 1)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1", min_port=above + 1)
        self.hold = False
        self.asked: asyncio.Queue[bytes] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            client, *_ = await self.router.recv_multipart()
            if not self.hold:
                await self.release(client)
            self.asked.put_nowait(client)

    async def release(self, client: bytes) -> None:
        await self.router.send_multipart([client, b"", b"", _END_SEQ, b""])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.pub.close(0)
        self.router.close(0)


def _config(path: Path, address: str, port: int, admin: int, feed: ReplayFeed | None, **listen: Any) -> None:
    pool: dict[str, Any] = {"name": "p", "endpoints": [address], "models": ["m"], "policy": "round-robin"}
    if feed is not None:  # precise prefix routing on the engine's KV events: a catch-up at every start
        pool.pop("policy")
        picker = precise_policy(str(tokenizer_dir()), bind=False)
        engine_port = int(address.rsplit(":", 1)[1])
        for plugin in picker["plugins"]:
            if plugin["type"] == "precise-prefix-cache-scorer":
                plugin["parameters"]["eventsPortOffset"] = feed.events_port - engine_port
                plugin["parameters"]["replayPortOffset"] = feed.replay_port - engine_port
        pool["endpointPickerConfig"] = picker
    doc = {"listen": {"host": "127.0.0.1", "port": port, "adminPort": admin, "workers": 2, **listen},
           "pools": [pool]}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))


@contextlib.asynccontextmanager
async def _serve(config: Path, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[Any]:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--kv-events", "off",
            "--log-level", "WARNING", stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def _readyz(s: aiohttp.ClientSession, admin: int) -> tuple[int, str]:
    try:
        async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
            return r.status, await r.text()
    except aiohttp.ClientConnectionError:
        return 0, ""


async def _until_ready(s: aiohttp.ClientSession, admin: int, text: str = "(2/2 workers)") -> None:
    for _ in range(1200):  # 60 s: two fresh interpreters on a loaded machine
        status, body = await _readyz(s, admin)
        if status == 200 and text in body:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not ready: {status} {body!r}")


async def test_a_restarted_worker_takes_no_connection_before_it_is_ready(backends, tmp_path):
    """Worker 0 is killed; its replacement's KV-event catch-up is held (the engine's replay socket does
    not answer yet). Meanwhile it must not listen on the data port (the kernel would hand it new
    connections), and with ``minReadyWorkers: 2`` the supervisor's ``/readyz`` is 503, naming why."""
    (b,) = await backends(1)
    feed = ReplayFeed(above=b.port)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, feed, minReadyWorkers=2)
    log = tmp_path / "stderr"
    try:
        async with _serve(tmp_path / "gw.yaml", log) as proc, aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            for _attempt in range(3):
                before = _children(proc.pid)
                assert len(before) == 2 and all(_listens(p, port) for p in before)
                while not feed.asked.empty():
                    feed.asked.get_nowait()
                feed.hold = True
                mark = len(log.read_text())
                os.kill(min(before), signal.SIGKILL)
                client = await asyncio.wait_for(feed.asked.get(), 60)  # the new worker is catching up
                (new,) = _children(proc.pid) - before
                listening = _listens(new, port)
                status, body = await _readyz(s, admin)
                feed.hold = False
                await feed.release(client)
                await _until_ready(s, admin)
                assert _listens(new, port)
                # The worker waits 1 s for the replay answer, then starts without it: a test process too
                # slow to look within that second saw a worker already started; look again then.
                if "gave no answer" in log.read_text()[mark:] and (listening or status != 503):
                    continue
                assert not listening, "a worker still catching up listens on the data port"
                assert (status, body) == (503, "1/2 workers ready, 2 needed")
                break
            else:
                raise AssertionError("the machine was too slow to look within the catch-up, 3 times")
            body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 2})
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as c:
                for _ in range(10):
                    async with c.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                        assert r.status == 200
    finally:
        await feed.close()


async def test_one_worker_restarting_keeps_the_default_supervisor_ready(backends, tmp_path):
    """Default ``minReadyWorkers`` 1: while worker 0 restarts, ``/readyz`` stays 200 on the other."""
    (b,) = await backends(1)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    async with _serve(tmp_path / "gw.yaml", tmp_path / "stderr") as proc, aiohttp.ClientSession() as s:
        await _until_ready(s, admin)
        before = _children(proc.pid)
        os.kill(min(before), signal.SIGKILL)
        seen = set()
        for _ in range(1200):
            status, body = await _readyz(s, admin)
            seen.add((status, body))
            if len(_children(proc.pid) - before) == 1 and (status, body) == (200, "ready (2/2 workers)"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the killed worker was not replaced: {seen}")
        assert (200, "ready (1/2 workers)") in seen and {st for st, _ in seen} == {200}


def test_min_ready_workers_is_checked_against_workers(tmp_path) -> None:
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}
    cfg = parse_gateway_config({"pools": [pool], "listen": {"workers": 3, "minReadyWorkers": 3}})
    assert cfg.min_ready_workers == 3
    for bad in (0, 4):
        with pytest.raises(GatewayConfigError, match=r"listen\.minReadyWorkers"):
            parse_gateway_config({"pools": [pool], "listen": {"workers": 3, "minReadyWorkers": bad}})
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump({"pools": [pool], "listen": {"workers": 3, "minReadyWorkers": 3}}))
    hup = signal.getsignal(signal.SIGHUP)  # serve ignores it while it starts
    try:
        assert serve_main(["--config", str(f), "--workers", "2", "--kv-events", "off"]) == 2  # 3 > 2
        assert serve_main(["--config", str(f), "--min-ready-workers", "4", "--kv-events", "off"]) == 2
    finally:
        signal.signal(signal.SIGHUP, hup)


async def test_a_sighup_right_after_a_spawn_does_not_kill_the_worker(backends, tmp_path):
    """A process-group SIGHUP (terminal hang-up, ``kill -HUP -PGID``) can reach a worker before its first
    statement; it was fatal there. SIGHUP is sent to the replacement of a killed worker as soon as it
    exists, then every 10 ms for 2 s: it must live on (and become ready), not be restarted."""
    (b,) = await backends(1)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    log = tmp_path / "stderr"
    async with _serve(tmp_path / "gw.yaml", log) as proc, aiohttp.ClientSession() as s:
        await _until_ready(s, admin)
        before = _children(proc.pid)
        os.kill(min(before), signal.SIGKILL)
        for _ in range(6000):  # poll fast: the point is to signal it before it runs any statement
            new = _children(proc.pid) - before
            if new:
                break
            await asyncio.sleep(0.002)
        else:
            raise AssertionError("no replacement worker")
        (pid,) = new
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while loop.time() < end and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
            await asyncio.sleep(0.01)
        assert _alive(pid), "the SIGHUP killed the starting worker"
        await _until_ready(s, admin)
        assert pid in _children(proc.pid)
    assert log.read_text().count("exited with") == 1, log.read_text()  # the SIGKILLed one only


def test_only_private_directories_of_gone_supervisors_are_cleaned(tmp_path) -> None:
    """Gone: the lock file can be taken (its holder died). Kept: a held lock (a live supervisor, whatever
    its pid namespace), no lock file (being made), not 0700, a link, a lock file that is a link, other
    names."""
    from kvgate.gateway.workers import clean_stale_dirs, private_dir

    def make(name: str, mode: int = 0o700, lock: bool = True) -> Path:
        p = tmp_path / name
        p.mkdir()
        p.chmod(mode)
        (p / "config.pickle").write_bytes(b"x")
        if lock:
            (p / ".lock").write_bytes(b"")
        return p

    tempfile_dir = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        live, fd = private_dir("config")  # held, as a running supervisor holds it
    finally:
        tempfile.tempdir = tempfile_dir
    try:
        gone = [make("kvgate-config-a1"), make("kvgate-gossip-b2")]
        kept = [Path(live), make("kvgate-config-c3", lock=False), make("kvgate-config-d4", 0o755),
                make("kvgate-other-e5"), make("kvgate-config-x-f6"), make("elsewhere")]  # fmt: skip
        (tmp_path / "kvgate-config-g7").symlink_to(tmp_path / "elsewhere")
        linked = make("kvgate-gossip-h8", lock=False)
        (linked / ".lock").symlink_to(tmp_path / "elsewhere" / "config.pickle")
        kept.append(linked)
        assert sorted(clean_stale_dirs(str(tmp_path))) == sorted(str(p) for p in gone)
        assert not any(p.exists() for p in gone)
        assert all(p.exists() for p in kept) and (tmp_path / "elsewhere" / "config.pickle").exists()
    finally:
        os.close(fd)
    # Its supervisor gone (here: the lock released), the next start removes it.
    assert clean_stale_dirs(str(tmp_path)) == [live]


async def test_a_sigkilled_supervisors_private_directories_are_removed_at_the_next_start(backends, tmp_path):
    """SIGKILL leaves the supervisor no cleanup: its config snapshot and gossip directories stayed in the
    temp dir for good. The next supervisor removes them (their owner is gone), keeps its own, and removes
    its own on a clean stop."""
    (b,) = await backends(1)
    tmp = tempfile.mkdtemp(prefix="kvt-", dir="/tmp")  # short: the gossip sockets' paths are bounded
    env = {"TMPDIR": tmp}
    config, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    try:
        port, admin = free_port(), free_port()
        _config(tmp_path / "gw.yaml", b.address, port, admin, None)
        async with _serve(config, log, env) as proc, aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            workers = _children(proc.pid)
            proc.kill()
            await proc.wait()
        for _ in range(400):
            if not any(_alive(p) for p in workers):
                break
            await asyncio.sleep(0.05)
        left = set(os.listdir(tmp))
        assert {n.split("-")[1] for n in left} == {"config", "gossip"} and len(left) == 2, left
        port, admin = free_port(), free_port()
        _config(tmp_path / "gw.yaml", b.address, port, admin, None)
        async with _serve(config, log, env) as proc, aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            now = set(os.listdir(tmp))
            assert len(now) == 2 and not now & left, (left, now)
        assert os.listdir(tmp) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
