"""`python -m kvgate.bench.peers` answers --help and an unknown name with usage, not a KeyError."""

from __future__ import annotations

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
