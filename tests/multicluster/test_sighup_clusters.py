"""SIGHUP never ends ``kvgate serve --clusters`` nor the hub EPP (``kvgate epp --clusters``): it looks at
the clusters file now (re-read when its modification time changed, as the poll does; else said unchanged).
Before (review s20-qa L5) SIGHUP kept its default action: the process died at once, no drain, every
request in flight cut."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from kvgate.multicluster import clusters
from kvgate.multicluster.clusters import ClustersFile

BANNER = {"serve": "global gateway on", "epp": "kvgate epp ready"}
DOOR_ARGS = {
    "serve": ["serve", "--port", "0"],
    "epp": ["epp", "--plaintext", "--host", "127.0.0.1", "--port", "0", "--grpc-health-port", "0",
            "--metrics-port", "0"],
}  # fmt: skip


@pytest.mark.parametrize("door", ["serve", "epp"])
async def test_sighup_rereads_the_clusters_file_and_serves_on(tmp_path: Path, door: str) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", *DOOR_ARGS[door], "--clusters", str(f), "--log-level", "INFO",
            stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        while BANNER[door] not in (line := (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()):
            assert line, stderr.read_text()[-2000:]
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.5)
        assert proc.returncode is None, f"SIGHUP ended the process ({proc.returncode})"
        assert "SIGHUP: clusters file" in stderr.read_text() and "nothing to reload" in stderr.read_text()
        f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}, {name: b, gateway: '127.0.0.1:10'}]\n")
        proc.send_signal(signal.SIGHUP)
        for _ in range(600):  # (a process: 60 s, 10 s before)
            if "clusters file reloaded: a, b" in stderr.read_text():
                break
            await asyncio.sleep(0.1)
        assert "clusters file reloaded: a, b" in stderr.read_text(), stderr.read_text()[-2000:]
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in stderr.read_text()


def test_reload_now_reads_a_changed_file_before_the_next_poll(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    cf = ClustersFile(f, check_every_s=3600.0)
    assert cf.maybe_reload(0.0) is False  # (the first look: unchanged)
    f.write_text("clusters: [{name: b, gateway: '127.0.0.1:9'}]\n")
    os.utime(f, (1e9, 1e9))  # (a modification time surely not the one read)
    assert cf.maybe_reload(1.0) is False  # the poll: not before its interval
    assert cf.reload_now(2.0) is True and [c.name for c in cf.config.clusters] == ["b"]
    assert cf.reload_now(3.0) is False and cf.reloads == 1  # unchanged since: nothing to reload


def test_sighup_reads_a_file_replaced_within_its_modification_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced with its stamp unchanged (an edit within one timestamp tick of an earlier read, its
    size the same; the stamp pinned here: the change time cannot be set): the poll never sees it; a
    SIGHUP reads it whatever its stamp (review s20-qa2 L2), and says an unchanged one unchanged."""
    monkeypatch.setattr(clusters, "file_stamp", lambda _path: (1, 2, 3, 4))
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    os.utime(f, (2e9, 2e9))
    cf = ClustersFile(f, check_every_s=1.0)
    f.write_text("clusters: [{name: b, gateway: '127.0.0.1:9'}]\n")
    os.utime(f, (2e9, 2e9))
    assert cf.maybe_reload(10.0) is False and [c.name for c in cf.config.clusters] == ["a"]
    assert cf.reload_now(11.0) is True and [c.name for c in cf.config.clusters] == ["b"]
    assert cf.reload_now(12.0) is False and cf.reloads == 1
