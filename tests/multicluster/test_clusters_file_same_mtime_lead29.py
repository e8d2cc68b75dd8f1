"""A clusters-file edit finished within the modification-time tick of a half-written read (review s29-qa29
Q2, as fixqa29a fixed for the gateway's config; its note: the clusters file's watch compared the time
alone). The poll reads the half-written file (invalid, kept out), the rest lands with the same time: the
size differs, so the complete file is applied. ``os.utime`` pins the time; nothing waits on a clock."""

from __future__ import annotations

import os
from pathlib import Path

from kvgate.multicluster.clusters import ClustersFile


def _text(name: str) -> str:
    return (
        f"local: {name}\nclusters:\n- name: {name}\n"
        "  aggregate: http://127.0.0.1:9/v1/pool/aggregate\n  gateway: 127.0.0.1:9\n"
    )


def test_a_file_completed_within_the_same_mtime_is_applied(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(_text("east"))
    cfile = ClustersFile(f, check_every_s=0.0)
    assert cfile.config.local == "east"
    full = _text("west-cluster")
    f.write_text(full[: len(full) // 2])  # half written: "gateway:" and more still missing
    os.utime(f, ns=(5_000_000_000, 5_000_000_000))
    assert not cfile.maybe_reload(1.0)
    assert cfile.config.local == "east"
    f.write_text(full)  # the rest, in the same tick
    os.utime(f, ns=(5_000_000_000, 5_000_000_000))
    assert cfile.maybe_reload(2.0)
    assert cfile.config.local == "west-cluster"


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(_text("east"))
    cfile = ClustersFile(f, check_every_s=0.0)
    assert not cfile.maybe_reload(1.0) and not cfile.maybe_reload(2.0)
    assert cfile.reloads == 0
