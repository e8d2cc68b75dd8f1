"""``kvgate.filestamp.file_stamp`` includes the change time (review s29-rev-a29): a ``chmod`` (or ``chown``)
that makes a file refused as unreadable readable moves only its ctime, so with inode, size and mtime
alone the watches never read it again (until an edit or a SIGHUP). The unreadable read is a stand-in
here (as root ``chmod 000`` does not stop a read); the chmod is real, made once the clock has surely
moved past the tick of the file's last change (0.2 s; the coarse tick is at most 10 ms)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kvgate.filestamp import file_stamp
from kvgate.multicluster import clusters
from kvgate.multicluster.clusters import ClustersError, ClustersFile

A = "clusters: [{name: a, gateway: '127.0.0.1:9'}]\n"
B = "clusters: [{name: b, gateway: '127.0.0.1:9'}]\n"


def test_a_chmod_changes_the_stamp(tmp_path: Path) -> None:
    f = tmp_path / "f.yaml"
    f.write_text(A)
    time.sleep(0.2)
    before = file_stamp(f)
    os.chmod(f, 0o600)
    after = file_stamp(f)
    assert before is not None and after is not None and before != after
    assert before[:3] == after[:3]  # (inode, size, mtime: unmoved)


def test_a_clusters_file_made_readable_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(A)
    f.chmod(0o644)
    cf = ClustersFile(f, check_every_s=0.0)
    real_load = clusters.load
    readable = [False]

    def load(path: str | Path) -> clusters.ClustersConfig:
        if not readable[0]:
            raise ClustersError(str(path), "[Errno 13] Permission denied")
        return real_load(path)

    monkeypatch.setattr(clusters, "load", load)
    time.sleep(0.2)  # (the edit surely stamped apart from the first read: the poll reads it)
    f.write_text(B)  # the edit, unreadable to the gateway (its owner or mode wrong)
    assert cf.maybe_reload(1.0) is False and [c.name for c in cf.config.clusters] == ["a"]
    time.sleep(0.2)
    readable[0] = True
    os.chmod(f, 0o600)  # the fix: only the change time moves
    assert cf.maybe_reload(2.0) is True and [c.name for c in cf.config.clusters] == ["b"]
