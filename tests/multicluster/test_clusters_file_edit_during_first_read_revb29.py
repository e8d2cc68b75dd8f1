"""rev-b29: ClustersFile stats the file AFTER its first read (``self.config = self._load()`` then
``self._stamp = self._stat()``), so an edit that lands while the first read runs is stamped as read and
never applied by the poll (until another edit or a SIGHUP). The gateway's watch takes its stamp before the
read (ConfigReloader's ``stamp``); the clusters file should too. Deterministic: the edit is made from the
``check`` callback, which runs inside the first read."""

from __future__ import annotations

from pathlib import Path

from kvgate.multicluster.clusters import ClustersConfig, ClustersFile

from .test_clusters_file_same_mtime_lead29 import _text


def test_an_edit_during_the_first_read_is_applied_by_the_poll(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(_text("east"))
    edited: list[bool] = []

    def edit_once(cfg: ClustersConfig) -> None:
        if not edited:  # the operator's edit lands while the first read is under way
            edited.append(True)
            f.write_text(_text("west-cluster"))

    cfile = ClustersFile(f, check_every_s=0.0, check=edit_once)
    assert cfile.config.local == "east"  # what the first read saw
    assert cfile.maybe_reload(1.0), "the edit made during the first read was stamped as read: never applied"
    assert cfile.config.local == "west-cluster"
