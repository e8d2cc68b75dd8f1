"""`python -m kvgate.bench.peers` answers --help and an unknown name with usage, not a KeyError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.bench import peers


def test_help_prints_usage_and_installs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(peers, "ensure_installed", lambda *a, **k: pytest.fail("installed on --help"))
    with pytest.raises(SystemExit) as exit_:
        peers.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "NAME" in out and all(name in out for name in peers.PEERS)


def test_an_unknown_peer_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(peers, "ensure_installed", lambda *a, **k: pytest.fail("installed"))
    with pytest.raises(SystemExit) as exit_:
        peers.main(["no-such-router"])
    assert exit_.value.code == 2
    assert "unknown peer no-such-router" in capsys.readouterr().err


def test_named_peers_are_installed_in_order(monkeypatch, capsys):
    got: list[str] = []
    monkeypatch.setattr(peers, "ensure_installed", lambda peer, quiet: got.append(peer.package) or "py")
    names = list(peers.PEERS)
    assert peers.main(list(reversed(names))) == 0
    assert got == [peers.PEERS[n].package for n in reversed(names)]


def test_the_usage_line_names_the_command_it_was_run_as(capsys, monkeypatch):
    """Failed before: ``kvgate bench peers --help`` printed ``usage: python -m kvgate.bench.peers``."""
    from kvgate.bench import cli

    monkeypatch.setattr(peers, "ensure_installed", lambda *a, **k: pytest.fail("installed on --help"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["peers", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kvgate bench peers ")
    src = str(Path(peers.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "kvgate.bench.peers", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m kvgate.bench.peers "), run.stdout
