"""Review s28-rev-b28 F2: ``kvgate epp --config gw.yaml`` takes the file's ``limits.drainTimeoutSeconds``
(epp28), but the hub EPP, ``kvgate epp --clusters clusters.yaml``, dropped its clusters file's
``limits.drainTimeoutSeconds`` silently (``kvgate serve --clusters`` reads the same key from the same file
for its own stop): it drained 30 s whatever the file said. Now the key is the hub EPP's drain, the flag over
it, the drain's log lines naming the key, and, as ``kvgate serve --clusters``'s, read as last reloaded when
the stop begins. The file's drain and the reload fail on main 80d4cd38 (drain 30.0; no ``_file_drain``);
the flag over the file passes there (the guard)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import kvgate.extproc.cli as epp_cli

DEAD = "{name: a, aggregate: 'http://127.0.0.1:9/v1/pool/aggregate', gateway: '127.0.0.1:9'}"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, str]]:
    """``_serve`` replaced: (args, feed, drain_from) the hub EPP would serve with, nothing bound."""
    out: list[tuple[Any, Any, str]] = []

    async def fake(args: Any, *_a: Any, feed: Any = None, drain_from: str, **_k: Any) -> None:
        out.append((args, feed, drain_from))

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return out


def _clusters(tmp_path: Path, drain: float | None = 5) -> str:
    f = tmp_path / "clusters.yaml"
    limits = "" if drain is None else f"limits: {{drainTimeoutSeconds: {drain}}}\n"
    f.write_text(f"{limits}clusters:\n- {DEAD}\n")
    return str(f)


@pytest.mark.parametrize(("drain", "expected"), [(5, 5.0), (0, 0.0), (None, 30.0)])
def test_the_hub_epp_drains_as_its_clusters_file_says(
    tmp_path: Path, served: list[tuple[Any, Any, str]], drain: float | None, expected: float
) -> None:
    assert epp_cli.main(["--clusters", _clusters(tmp_path, drain), "--plaintext"]) == 0
    args, feed, drain_from = served[0]
    assert args.drain_timeout == expected, args.drain_timeout
    assert drain_from == "limits.drainTimeoutSeconds"  # (the drain's log lines name it)
    assert epp_cli._file_drain(feed, drain_from) == expected


def test_the_flag_stays_over_the_clusters_file(tmp_path: Path, served: list[tuple[Any, Any, str]]) -> None:
    argv = ["--clusters", _clusters(tmp_path), "--plaintext", "--drain-timeout", "3"]
    assert epp_cli.main(argv) == 0
    args, _feed, drain_from = served[0]
    assert args.drain_timeout == 3.0
    assert drain_from == "--drain-timeout"


@pytest.mark.parametrize(("flag", "at_stop"), [([], 9.0), (["--drain-timeout", "3"], None)])
def test_a_reload_sets_the_drain_the_stop_reads(
    tmp_path: Path, served: list[tuple[Any, Any, str]], flag: list[str], at_stop: float | None
) -> None:
    path = _clusters(tmp_path, 5)
    assert epp_cli.main(["--clusters", path, "--plaintext", *flag]) == 0
    _args, feed, drain_from = served[0]
    Path(path).write_text(f"limits: {{drainTimeoutSeconds: 9}}\nclusters:\n- {DEAD}\n")
    assert feed.clusters_file.reload_now(time.monotonic())  # (SIGHUP's read, as ``HubFeed.reload_now``)
    assert epp_cli._file_drain(feed, drain_from) == at_stop  # (None: the stop keeps the flag's)
