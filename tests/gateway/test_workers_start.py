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
import time
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
from gateway.workers_kit import children
from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.config.policies import precise_policy
from kvgate.datalayer.kvsubscriber import REPLAY_TIMEOUT_ENV
from kvgate.gateway.cli import _parser, build_config
from kvgate.gateway.cli import main as serve_main
from kvgate.gateway.workers import SPAWN_GIVE_UP_ENV
from kvgate.sim.tokenizer import tokenizer_dir

_END_SEQ = (-1).to_bytes(8, "big", signed=True)


def _children(pid: int) -> set[int]:
    """The supervisor's worker processes (spawn's: ``python -c 'from multiprocessing.spawn ...'``)."""
    return set(children(pid, b"multiprocessing.spawn"))


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
async def _serve(
    config: Path, log: Path, env: dict[str, str] | None = None, group: bool = False
) -> AsyncIterator[Any]:
    """``group``: in a process group of its own (the test may signal the whole group)."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--kv-events", "off",
            "--log-level", "WARNING", stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env={**os.environ, **(env or {})}, start_new_session=group,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def _readyz(s: aiohttp.ClientSession, admin: int) -> tuple[int, str]:
    """Its status and first line (the count; a line follows for each worker not plainly up)."""
    try:
        async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
            return r.status, (await r.text()).split("\n")[0]
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
    not answer yet; the replay timeout raised to 120 s, so the hold lasts until the test releases it,
    however loaded the machine). Meanwhile it must not listen on the data port (the kernel would hand it
    new connections), and with ``minReadyWorkers: 2`` the supervisor's ``/readyz`` is 503, naming why."""
    (b,) = await backends(1)
    feed = ReplayFeed(above=b.port)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, feed, minReadyWorkers=2)
    env, log = {REPLAY_TIMEOUT_ENV: "120"}, tmp_path / "stderr"
    try:
        async with _serve(tmp_path / "gw.yaml", log, env) as proc, aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            before = _children(proc.pid)
            assert len(before) == 2 and all(_listens(p, port) for p in before)
            while not feed.asked.empty():
                feed.asked.get_nowait()
            feed.hold = True
            os.kill(min(before), signal.SIGKILL)
            client = await asyncio.wait_for(feed.asked.get(), 60)  # the new worker is catching up
            (new,) = _children(proc.pid) - before
            await asyncio.sleep(2.5)  # past the default 1 s replay timeout: it would have gone on
            assert not _listens(new, port), "a worker still catching up listens on the data port"
            assert await _readyz(s, admin) == (503, "1/2 workers ready, 2 needed")
            feed.hold = False
            await feed.release(client)
            await _until_ready(s, admin)
            assert _listens(new, port)
            assert "gave no answer" not in log.read_text()
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


def _build(tmp_path: Path, listen: dict[str, Any], *flags: str) -> Any:
    """The config ``kvgate serve --config f.yaml *flags`` would run (file and flags, checked)."""
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump({"pools": [pool], "listen": listen}))
    return build_config(_parser().parse_args(["--config", str(f), *flags]))


def test_min_ready_workers_is_checked_against_the_final_workers(tmp_path) -> None:
    """The file's ``minReadyWorkers`` is checked against the worker count once ``--workers`` is applied:
    ``minReadyWorkers: 2`` with ``--workers 2`` was refused against the file's default of 1 worker."""
    cfg = _build(tmp_path, {"adminPort": 0, "minReadyWorkers": 2}, "--workers", "2")
    assert (cfg.workers, cfg.min_ready_workers) == (2, 2)
    cfg = _build(tmp_path, {"adminPort": 0, "workers": 3, "minReadyWorkers": 3})
    assert (cfg.workers, cfg.min_ready_workers) == (3, 3)
    assert _build(tmp_path, {"adminPort": 0, "workers": 3}, "--min-ready-workers", "3").min_ready_workers == 3
    bad = [
        ({"adminPort": 0, "workers": 3, "minReadyWorkers": 3}, ("--workers", "2"), r"listen\.minReady"),
        ({"adminPort": 0, "minReadyWorkers": 2}, (), r"listen\.minReadyWorkers.*workers \(1\)"),
        ({"adminPort": 0, "workers": 3}, ("--min-ready-workers", "4"), "--min-ready-workers"),
        ({"adminPort": 0, "workers": 3}, ("--min-ready-workers", "0"), "--min-ready-workers"),
    ]
    for listen, flags, match in bad:
        with pytest.raises(GatewayConfigError, match=match):
            _build(tmp_path, listen, *flags)
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}
    for wrong in (0, 65):  # the file alone: its range only
        with pytest.raises(GatewayConfigError, match=r"listen\.minReadyWorkers"):
            parse_gateway_config({"pools": [pool], "listen": {"minReadyWorkers": wrong}})


def test_a_reload_the_next_restart_would_refuse_is_refused(tmp_path, caplog) -> None:
    """``minReadyWorkers: 5`` with ``workers: 2`` reloaded: refused at the reload (the running config
    kept, logged), as the next restart would refuse it; it was accepted as "restart to apply". The
    flags count: with ``--workers 5`` the same file is taken."""
    from kvgate.gateway.cli import reload_loader
    from kvgate.gateway.workers import Supervisor, _WorkersReload

    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}
    f = tmp_path / "gw.yaml"

    def write(**listen: Any) -> None:
        f.write_text(yaml.safe_dump({"pools": [pool], "listen": {"adminPort": 0, **listen}}))

    for flags, taken in (((), False), (("--workers", "5"), True)):
        write(workers=2)
        args = _parser().parse_args(["--config", str(f), *flags])
        sup = Supervisor(build_config(args), 2, str(f), load=reload_loader(args))
        sup.snapshot = str(tmp_path / "snap" / "config.pickle")
        watch = _WorkersReload(sup, str(f), load=sup.load)
        write(workers=2, minReadyWorkers=5)
        assert watch.reload() is taken, flags
        assert (sup.reloads, watch.failures) == ((1, 0) if taken else (0, 1))
    assert "listen.minReadyWorkers" in caplog.text and "keeping the running config" in caplog.text
    # The single-process reloader reads through the same check.
    from kvgate.gateway.reload import ConfigReloader

    write(workers=2)
    args = _parser().parse_args(["--config", str(f)])
    cfg = build_config(args)
    cr = ConfigReloader(str(f), cfg, [], poll_s=None, load=reload_loader(args))
    write(workers=2, minReadyWorkers=5)
    assert not cr.reload() and cr.failures == 1


def test_min_ready_workers_needs_the_admin_port(tmp_path) -> None:
    """Without an admin port there is no supervisor ``/readyz`` (each worker answers its own on the data
    port): a minimum above 1 would be silently ignored, so it is refused."""
    with pytest.raises(GatewayConfigError, match=r"listen\.minReadyWorkers.*admin port"):
        _build(tmp_path, {"workers": 2, "minReadyWorkers": 2})
    with pytest.raises(GatewayConfigError, match=r"--min-ready-workers.*admin port"):
        _build(tmp_path, {"workers": 2}, "--min-ready-workers", "2")
    cfg = _build(tmp_path, {"workers": 2}, "--min-ready-workers", "2", "--admin-port", "0")
    assert cfg.min_ready_workers == 2
    hup = signal.getsignal(signal.SIGHUP)  # serve ignores it while it starts
    try:
        f = tmp_path / "gw.yaml"
        assert serve_main(["--config", str(f), "--min-ready-workers", "2", "--kv-events", "off"]) == 2
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


def test_lockless_directories_of_older_versions_are_cleaned_once_their_owner_is_gone(tmp_path) -> None:
    """Older kvgate made the same directories without a lock file; they were never cleaned. Now removed
    when they hold only what those versions wrote, unchanged for 10 minutes, with no socket a live worker
    holds; a config directory (nothing in it tells of its owner) only while no older supervisor looks
    alive (a lockless gossip directory with a live socket, or a new one). The ownership checks stay."""
    import socket as _socket

    from kvgate.gateway.workers import clean_stale_dirs

    now = time.time()
    old = now - 3600

    def make(
        name: str, files: tuple[str, ...] = ("config.pickle",), mode: int = 0o700, age: float = old
    ) -> Path:
        p = tmp_path / name
        p.mkdir()
        for f in files:
            (p / f).write_bytes(b"x")
        _age(p, mode, age)
        return p

    def _age(p: Path, mode: int, age: float) -> None:
        for f in p.iterdir():
            os.utime(f, (age, age), follow_symlinks=False)
        p.chmod(mode)
        os.utime(p, (age, age))

    socks: list[_socket.socket] = []

    def gossip(name: str, live: bool) -> Path:
        p = tmp_path / name
        p.mkdir()
        for w in range(2):
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            s.bind(str(p / f"w{w}.sock"))
            if live:
                socks.append(s)
            else:
                s.close()  # the worker died: its socket file stays, nobody holds it
        _age(p, 0o700, old)
        return p

    try:
        gone_now = [gossip("kvgate-gossip-dead1", live=False)]
        live = gossip("kvgate-gossip-live2", live=True)  # an older supervisor still runs (its workers)
        configs = [make("kvgate-config-old3"), make("kvgate-config-123-456-old4")]  # (the pid-named form too)
        kept = [
            make("kvgate-config-young5", age=now - 60),  # may be being made
            make("kvgate-config-odd6", ("config.pickle", "notes")),  # not only what kvgate wrote
            make("kvgate-gossip-new7", (".lock.new",)),  # this version's, being made
            make("kvgate-config-mode8", mode=0o755),
        ]
        removed = clean_stale_dirs(str(tmp_path))  # (now: the wall clock)
        assert sorted(removed) == sorted(str(p) for p in gone_now)
        assert live.exists() and all(p.exists() for p in configs + kept)
        for s in socks:  # that older supervisor is gone now
            s.close()
        socks.clear()
        removed = clean_stale_dirs(str(tmp_path))  # (now: the wall clock)
        assert sorted(removed) == sorted(str(p) for p in [live, *configs])
        assert all(p.exists() for p in kept) and not any(p.exists() for p in [live, *configs, *gone_now])
    finally:
        for s in socks:
            s.close()


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
        for _ in range(1200):  # (60 s: each orphan notices on its own loop; 20 s before)
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


def _tracker(pid: int) -> int | None:
    """The supervisor's multiprocessing resource tracker (a child running ``resource_tracker.main``)."""
    return next(iter(children(pid, b"resource_tracker")), None)


def _shared_memory(pid: int) -> list[str]:
    """The shared-memory segments process ``pid`` maps (the workers' in-flight table, the Responses ids')."""
    with open(f"/proc/{pid}/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "/dev/shm/psm_" in line})  # (not its lock's sem.*)
    assert len(paths) == 2 and paths[1] == paths[0] + "_rsp", paths
    return paths


def _exists(paths: list[str]) -> bool:
    return any(os.path.exists(p) for p in paths)


@pytest.mark.parametrize("end", ["terminate", "kill"])
async def test_a_process_group_sighup_leaves_the_resource_tracker_alive(backends, tmp_path, end):
    """``kill -HUP -PGID`` on a 2-worker supervisor (a reload for it and its workers) reached its
    multiprocessing resource tracker too, which it killed: the stop logged 'resource_tracker: process died
    unexpectedly', and the shared memory went untracked, so a supervisor SIGKILLed later leaked it in
    /dev/shm (the tracker unlinks what its clients leave once they are all gone)."""
    (b,) = await backends(1)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    log = tmp_path / "stderr"
    async with _serve(tmp_path / "gw.yaml", log, group=True) as proc, aiohttp.ClientSession() as s:
        await _until_ready(s, admin)
        tracker = _tracker(proc.pid)
        assert tracker is not None and _alive(tracker)
        workers = _children(proc.pid)
        segment = _shared_memory(min(workers))
        os.killpg(proc.pid, signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert _alive(tracker), "the process-group SIGHUP killed the resource tracker"
        assert all(_alive(w) for w in workers) and _children(proc.pid) == workers
        await _until_ready(s, admin)
        if end == "terminate":
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert "resource_tracker" not in _read(log), _read(log)
        else:
            proc.kill()  # no cleanup of its own: the workers drain (their lifeline), then the tracker's turn
            await proc.wait()
            for _ in range(1500):
                if not _exists(segment):
                    break
                await asyncio.sleep(0.02)
            assert not _exists(segment), f"{segment} leaked"
    assert not _exists(segment)


def _read(log: Path) -> str:
    return log.read_text()


async def _log_says(log: Path, text: str, limit_s: float = 60.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if text in _read(log):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never logged {text!r}: {_read(log)}")


def _limit_fds(pid: int, soft: int | None) -> int:
    """Limit process ``pid``'s descriptors (new ones fail with EMFILE; open ones still work); the old
    soft limit. ``None``: the hard limit."""
    import resource

    old, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard if soft is None else soft, hard))
    return old


async def test_a_worker_whose_spawn_fails_for_a_while_is_restarted(backends, tmp_path):
    """A restart whose spawn fails (here: EMFILE, the supervisor's descriptors limited for a while) ended
    the watch silently: the supervisor served on one worker short and never restarted another. The spawn
    is tried again (after a pause) and succeeds once descriptors are back."""
    (b,) = await backends(1)
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    log = tmp_path / "stderr"
    loop = asyncio.get_running_loop()
    launched = loop.time()
    async with _serve(tmp_path / "gw.yaml", log) as proc, aiohttp.ClientSession() as s:
        await _until_ready(s, admin)
        # Past the supervisor's "died at start" age: the kill is no fast death; the spawns alone count.
        await asyncio.sleep(max(0.0, launched + 6.0 - loop.time()))
        before = _children(proc.pid)
        soft = _limit_fds(proc.pid, 3)
        os.kill(min(before), signal.SIGKILL)
        await _log_says(log, "could not be started")
        _limit_fds(proc.pid, soft)
        await _until_ready(s, admin)
        assert len(_children(proc.pid) - before) == 1 and proc.returncode is None
        assert "Too many open files" in log.read_text()


async def test_a_worker_that_cannot_be_spawned_stops_the_supervisor_with_an_error(backends, tmp_path):
    """Spawns that keep failing: the supervisor gives up with exit status 1 (it used to run on unwatched,
    and exit 0 on stop), so a service manager's Restart=on-failure starts it again."""
    (b,) = await backends(1)
    tmp = tempfile.mkdtemp(prefix="kvt-", dir="/tmp")  # should the supervisor fail to remove its directories
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    log = tmp_path / "stderr"
    try:
        env = {"TMPDIR": tmp, SPAWN_GIVE_UP_ENV: "2"}  # (the window: 5 min by default)
        async with _serve(tmp_path / "gw.yaml", log, env) as proc, aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            soft = _limit_fds(proc.pid, 3)
            os.kill(min(_children(proc.pid)), signal.SIGKILL)
            await _log_says(log, "workers cannot be started; shutting down")
            _limit_fds(proc.pid, soft)  # for its shutdown (its event loop's close opens a socket pair)
            assert await asyncio.wait_for(proc.wait(), 60) == 1
        # Spawns failed at 0, 1 and 3 s: past the 2 s window (the kill is no spawn failure).
        assert log.read_text().count("could not be started") == 3, log.read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_spawn_failures_back_off_and_give_up_only_after_a_window(tmp_path) -> None:
    """Failed spawns are no deaths: retried after 1, 2, 4, ... 30 s while the other workers serve, given
    up (exit status 1) only once they have failed for the window (it took 3 failures, ~2 s: one transient
    EAGAIN after a long-lived worker died drained the whole gateway). Time injected."""
    from kvgate.gateway.workers import Supervisor

    cfg = _build(tmp_path, {"adminPort": 0, "workers": 2})
    now = [0.0]
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)
        now[0] += s

    def supervisor(failures: int) -> tuple[Supervisor, list[int]]:
        sup = Supervisor(cfg, 2)
        sup.clock, sup.sleep = (lambda: now[0]), sleep
        started: list[int] = []

        async def start_worker(i: int) -> None:
            if len(pauses) < failures:
                raise OSError(11, "Resource temporarily unavailable")
            started.append(i)

        sup.start_worker = start_worker  # type: ignore[method-assign]
        return sup, started

    sup, started = supervisor(6)
    assert asyncio.run(sup._restart(1)) and started == [1] and not sup.failed
    assert pauses == [1, 2, 4, 8, 16, 30] and sup.spawn_failures == 0 and sup.fast_deaths == 0
    pauses.clear()
    sup, started = supervisor(10**6)
    assert not asyncio.run(sup._restart(1)) and sup.failed and not started
    assert 300 <= sum(pauses) < 330 and pauses[-1] == 30


class _FakeProc:
    """A worker process as the watch sees it."""

    def __init__(self, pid: int, alive: bool) -> None:
        self.pid, self.alive, self.exitcode = pid, alive, None if alive else -9

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        pass


async def test_one_slots_spawn_retries_do_not_hold_another_slots_restart(tmp_path) -> None:
    """Worker 0 died and its spawn keeps failing (retried for up to 5 minutes, here a pause that never
    ends); worker 1 dies meanwhile: it is restarted at once. The watch restarted one slot at a time, so
    worker 1 stayed dead until worker 0's retries ended. A give-up still ends the watch (failed), and
    ending it cancels the other slots' restarts."""
    from kvgate.gateway.workers import Supervisor

    cfg = _build(tmp_path, {"adminPort": 0, "workers": 2})
    sup = Supervisor(cfg, 2)
    sup.procs = [_FakeProc(100, alive=False), _FakeProc(101, alive=True)]  # type: ignore[list-item]
    sup.started_at = [time.monotonic() - 60] * 2  # long-lived: no fast deaths
    backoff = asyncio.Event()  # worker 0's retry pause: until the test ends it
    started: list[int] = []

    async def sleep(s: float) -> None:
        await backoff.wait()

    async def start_worker(i: int) -> None:
        if i == 0:
            raise OSError(11, "Resource temporarily unavailable")
        started.append(i)
        sup.procs[i] = _FakeProc(200 + i, alive=True)  # type: ignore[call-overload]

    sup.sleep = sleep  # type: ignore[method-assign]
    sup.start_worker = start_worker  # type: ignore[method-assign]
    watch = asyncio.create_task(sup.watch())
    try:
        for _ in range(600):  # worker 0's restart is in its retry pause (30 s: a loaded machine)
            if sup.spawn_failures:
                break
            await asyncio.sleep(0.05)
        assert sup.spawn_failures == 1
        sup.procs[1].alive = False  # type: ignore[union-attr]
        for _ in range(600):  # 30 s: the watch polls every 0.2 s
            if started:
                break
            await asyncio.sleep(0.05)
        assert started == [1] and sup.procs[1].pid == 201  # type: ignore[union-attr]
        assert not watch.done()
        sup.spawn_give_up_s = 0.0  # worker 0's next failure gives up: the watch ends, failed
        backoff.set()
        await asyncio.wait_for(watch, 30)
        assert sup.failed and sup.spawn_failures == 0
    finally:
        backoff.set()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


def test_a_spawn_that_fails_leaves_no_pipe_open_nor_a_zombie(tmp_path) -> None:
    """``proc.start()`` failing after its fork (BrokenPipeError: the child died before it read its data)
    left the child unreaped, a zombie per retry; failing otherwise (a pickling error) left the worker's
    four pipe ends open. A stand-in Process: a real child that exits at once, then the error."""
    import pickle

    from kvgate.gateway.workers import Supervisor, _zombie_children

    cfg = _build(tmp_path, {"adminPort": 0, "workers": 2})
    sup = Supervisor(cfg, 2)
    children: list[int] = []

    class FailingProcess:
        pid = None

        def __init__(self, error: BaseException, fork: bool, **_kw: Any) -> None:
            self.error, self.fork = error, fork

        def start(self) -> None:
            if self.fork:
                children.append(os.posix_spawn("/bin/true", ["true"], os.environ))
                for _ in range(3000):  # until it has exited (a zombie; 30 s, 5 s before)
                    if children[-1] in _zombie_children(os.getpid()):
                        break
                    time.sleep(0.01)
            raise self.error

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    for error, fork in ((BrokenPipeError(32, "Broken pipe"), True), (pickle.PicklingError("no"), False)):
        make = staticmethod(lambda *_a, e=error, f=fork, **_kw: FailingProcess(e, f))
        sup.ctx = type("Ctx", (), {"Pipe": staticmethod(sup.ctx.Pipe), "Process": make})()
        before = fds()
        with pytest.raises(type(error)):
            asyncio.run(sup.start_worker(0))
        assert fds() == before, error
    assert children and not set(children) & _zombie_children(os.getpid())


def test_the_cleaner_skips_a_lock_that_is_not_a_regular_file(tmp_path) -> None:
    """A FIFO named .lock: opening it for reading waited for a writer, so a supervisor's start hung."""
    import threading

    from kvgate.gateway.workers import clean_stale_dirs

    d = tmp_path / "kvgate-config-fifo1"
    d.mkdir(mode=0o700)
    os.mkfifo(d / ".lock")
    done: list[list[str]] = []
    t = threading.Thread(target=lambda: done.append(clean_stale_dirs(str(tmp_path))), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock it (a writer arrives), then fail
        os.close(os.open(d / ".lock", os.O_WRONLY | os.O_NONBLOCK))
        t.join(30)
        raise AssertionError("the cleaner waited on a FIFO named .lock")
    assert done == [[]] and d.exists()


def test_a_private_directory_a_tmp_cleaner_removed_is_made_again_with_a_held_lock(tmp_path, monkeypatch):
    """The config snapshot's directory removed under a running supervisor (a /tmp cleaner) was made again
    without a lock file: a later SIGKILL left it for good (the cleaner keeps lockless directories)."""
    import fcntl

    from kvgate.gateway.workers import Supervisor, clean_stale_dirs, private_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}
    cfg = parse_gateway_config({"pools": [pool]})
    sup = Supervisor(cfg, 2, "unused.yaml")
    path, sup._locks[path] = private_dir("config")  # as Supervisor.run makes it
    sup.snapshot = os.path.join(path, "config.pickle")
    try:
        sup.write_snapshot(cfg)
        shutil.rmtree(path)
        sup.write_snapshot(cfg)
        assert os.path.exists(sup.snapshot)
        fd = os.open(os.path.join(path, ".lock"), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # held: by the supervisor
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert clean_stale_dirs(str(tmp_path)) == []
        os.close(sup._locks.pop(path))  # the supervisor gone: now the cleaner removes it
        assert clean_stale_dirs(str(tmp_path)) == [path]
    finally:
        for fd in sup._locks.values():
            os.close(fd)


def test_private_directories_without_flock_or_descriptors(tmp_path, monkeypatch, caplog) -> None:
    """A temp dir without ``flock`` (some network and FUSE file systems): the supervisor starts (it used
    to fail), logs that its directory will stay if it is killed, and no cleaner removes it. No descriptor
    left for the lock file: no directory is left behind either."""
    import errno
    import fcntl

    from kvgate.gateway import workers
    from kvgate.gateway.workers import clean_stale_dirs, private_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_flock, real_open = fcntl.flock, os.open

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as m:
        m.setattr(workers.fcntl, "flock", no_flock)
        path, fd = private_dir("gossip")
        try:
            assert os.path.exists(os.path.join(path, ".lock")) and "stays" in caplog.text
            assert clean_stale_dirs(str(tmp_path)) == []
        finally:
            os.close(fd)
    assert fcntl.flock is real_flock
    shutil.rmtree(path)

    def no_fds(p: Any, *args: Any, **kw: Any) -> int:
        if str(p).endswith(".lock.new"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(p, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(workers.os, "open", no_fds)
        with pytest.raises(OSError, match="Too many open files"):
            private_dir("config")
    assert os.listdir(tmp_path) == []
