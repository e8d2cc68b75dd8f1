"""small34 (a): two clusters whose gateways are literally one address (the same IP address and port, however
spelt, or the same host name) are refused by the hub EPP (``kvgate epp --clusters``) at the start, exit 2
naming the key and both clusters, and at a reload, which keeps the last good file. Before, one string or
one name in two cases loaded and the hub's store (keyed by address) kept the first cluster with a WARNING,
the other never picked (session 33, rev-c33-F3); other spellings of one IP address were two endpoints at one
gateway, both picked (rev-a34-F2). Names that only resolve alike stay a WARNING
(``test_hub_gateway_names``). Each refusal test fails on f6b7eae9."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from extproc.test_cli import _launch, _stop
from kvgate.multicluster.clusters import ClustersError, ClustersFile
from multicluster.hub_pick import pick_once

TOTAL = "kvgate_multicluster_config_reloads_total"


def _file(tmp_path: Path, *gateways: str) -> Path:
    f = tmp_path / "clusters.yaml"
    names = ("east", "west", "north")
    rows = "".join(f"- {{name: {n}, gateway: '{g}'}}\n" for n, g in zip(names, gateways, strict=False))
    f.write_text(f"clusters:\n{rows}")
    return f


def _hub_file(path: Path, **kw: float) -> ClustersFile:
    from kvgate.multicluster.hub import hub_check  # (new with this fix)

    return ClustersFile(path, check=hub_check, **kw)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("10.1.0.2:8080", "10.1.0.2:8080"),
        ("10.1.0.2:8080", "http://10.1.0.2:8080/"),
        ("10.1.0.2:8080", "10.1.0.2:08080"),
        ("[::1]:8080", "[0:0::1]:8080"),
        ("10.1.0.2:8080", "[::ffff:10.1.0.2]:8080"),
        ("gw.example:8080", "GW.example:8080"),
    ],
)
def test_one_address_twice_is_refused_naming_the_key_and_both_clusters(
    tmp_path: Path, a: str, b: str
) -> None:
    with pytest.raises(ClustersError) as got:
        _hub_file(_file(tmp_path, "10.9.9.9:1", a, b))
    assert got.value.key == "clusters[2].gateway", got.value
    assert "north" in str(got.value) and "west" in str(got.value) and "clusters[1].gateway" in str(got.value)


def test_distinct_addresses_are_taken(tmp_path: Path) -> None:
    f = _file(tmp_path, "10.1.0.2:8080", "10.1.0.2:8081", "10.1.0.3:8080")
    assert [c.name for c in _hub_file(f).config.clusters] == ["east", "west", "north"]
    f = _file(tmp_path, "gw.example:8080", "gw.example.:8080")  # (a search domain may tell them apart)
    assert len(_hub_file(f).config.clusters) == 2


def test_a_reload_with_one_address_twice_keeps_the_last_good_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster")
    f = _file(tmp_path, "10.1.0.2:8080")
    cf = _hub_file(f, check_every_s=0.0)
    good = cf.config
    _file(tmp_path, "10.1.0.3:8080", "10.1.0.3:8080")
    os.utime(f, (2e9, 2e9))  # (a stamp surely not the one read)
    assert cf.maybe_reload(1.0) is False and cf.config == good
    said = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(said) == 1 and "clusters[1].gateway" in said[0] and "east" in said[0], said


async def test_kvgate_epp_refuses_it_at_the_start(tmp_path: Path) -> None:
    f = _file(tmp_path, "127.0.0.1:9", "127.0.0.1:9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--clusters", str(f), "--plaintext", "--port", "0",
        "--grpc-health-port", "0", "--metrics-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:  # (it took the file and serves: not left running past the test)
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, out
    assert "clusters[1].gateway" in out and "east" in out and "west" in out and "Traceback" not in out, out


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def test_kvgate_epp_keeps_its_clusters_at_a_reload_with_one_address_twice(tmp_path: Path) -> None:
    """The real hub EPP: the refused file counted invalid, and the destination still the last good file's
    (taken, the new file's first cluster would be named: 127.0.0.3:9)."""
    f = _file(tmp_path, "127.0.0.2:9")
    proc, ports = await _launch("--clusters", str(f), "--plaintext")
    url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    try:
        _file(tmp_path, "127.0.0.3:9", "127.0.0.3:9")
        os.utime(f, (2e9, 2e9))
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            while True:  # (the file is polled every second)
                async with http.get(url) as resp:
                    text = await resp.text()
                # (>= 1: the write and the utime are two stamps, so a poll between them counts it twice:
                # rev-a34 F5)
                if (_sample(text, f'{TOTAL}{{result="invalid"}}') or 0.0) >= 1.0:
                    break
                assert _sample(text, f'{TOTAL}{{result="applied"}}') == 0.0, "the file was applied"
                await asyncio.sleep(0.2)
        out = await pick_once(ports["grpc"])
        assert out.destination == "127.0.0.2:9", out.destination
    finally:
        assert await _stop(proc) == 0
