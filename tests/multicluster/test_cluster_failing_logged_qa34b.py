"""qa34b-F2: a cluster failing every request (503 "every cluster failed" to each client, the cluster backing
off) or found hung left nothing in the hub's log, where ``kvgate serve`` logs an endpoint's ejection. Now
a failing streak (attempts failing in a row there) says one WARNING at its 3rd failure (at once when the
cluster is found hung), with the last failure, and its end (a success there) one INFO; a new streak's
WARNING at most once a minute per cluster. ``kvgate serve --clusters --access-log`` was refused with a
reason about candidates: it now says the global gateway writes no access log and where to look instead."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kvgate.gateway.cli import main
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.state import FAILING_SAID_AFTER, FAILING_SAID_GAP_S, ClusterState
from multicluster.test_aggregate_failing_qa34b import until


def _said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and "cluster east" in r.getMessage()]


def test_a_failing_streak_is_warned_once_and_its_end_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "kvgate.multicluster")
    st = ClusterState(ClusterSpec("east", gateway="127.0.0.1:9"))
    for i in range(FAILING_SAID_AFTER - 1):
        st.failed(float(i), "unreachable: ClientConnectorError")
    assert not _said(caplog, logging.WARNING)  # (one or two failures: a blip, no line)
    for i in range(50):  # (the 3rd at t=2: its WARNING then)
        st.failed(2.0 + i / 10, "unreachable: ClientConnectorError")
    warned = _said(caplog, logging.WARNING)
    assert len(warned) == 1 and "unreachable: ClientConnectorError" in warned[0], warned
    st.succeeded()
    st.succeeded()
    assert len(_said(caplog, logging.INFO)) == 1, _said(caplog, logging.INFO)
    # A new streak within the minute: no second line (a flapping cluster says no line a request) ...
    for i in range(2 * FAILING_SAID_AFTER):
        st.failed(2.0 + FAILING_SAID_GAP_S - 10 + i, "status 503")
    st.succeeded()
    assert len(_said(caplog, logging.WARNING)) == 1 and len(_said(caplog, logging.INFO)) == 1
    # ... past it, one again.
    for i in range(FAILING_SAID_AFTER):
        st.failed(2.0 + FAILING_SAID_GAP_S + i, "status 503")
    assert len(_said(caplog, logging.WARNING)) == 2 and "status 503" in _said(caplog, logging.WARNING)[1]


def test_a_cluster_found_hung_is_warned_at_its_first_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "kvgate.multicluster")
    st = ClusterState(ClusterSpec("east", gateway="127.0.0.1:9"))
    st.fetched_at = st.hung_at = 1.0
    st.failed(2.0, "hung: no response head, and its gateway answered no probe within 2s")
    warned = _said(caplog, logging.WARNING)
    assert len(warned) == 1 and "found hung" in warned[0] and "answered no probe" in warned[0], warned


async def test_the_global_gateway_logs_a_cluster_refusing_every_request(tmp_path: Path) -> None:
    """The QA's case: one cluster whose gateway refuses connections (a bound socket that never listens);
    5 requests, each 503; the process's stderr names the cluster in a WARNING (polled, 30 s)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    f = tmp_path / "clusters.yaml"
    f.write_text(f"clusters:\n- {{name: east, gateway: '127.0.0.1:{dead.getsockname()[1]}'}}\n")
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--port", "0", "--clusters", str(f),
            stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = ""
        while "global gateway on" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, stderr.read_text()[-2000:]
        m = re.search(r"global gateway on http://127\.0\.0\.1:(\d+)", line)
        assert m is not None and "(1 cluster, policy" in line, line
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

        def post() -> int:
            url = f"http://127.0.0.1:{m.group(1)}/v1/chat/completions"
            req = urllib.request.Request(
                url, data=body.encode(), headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as e:
                e.read()
                return e.code

        statuses = [await asyncio.to_thread(post) for _ in range(5)]
        assert statuses == [503] * 5

        def warned() -> list[str]:
            return [ln for ln in stderr.read_text().splitlines() if "WARNING" in ln and "cluster east" in ln]

        await until(lambda: bool(warned()), lambda: stderr.read_text()[-2000:])
        assert len(warned()) == 1 and "unreachable" in warned()[0], stderr.read_text()[-2000:]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        dead.close()


@pytest.mark.parametrize("flags", [["--access-log"], ["--no-access-log"], ["--access-log-file", "x.log"]])
def test_access_log_flags_are_refused_with_a_reason_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: east, gateway: '127.0.0.1:9'}]\n")
    flags = [str(tmp_path / a) if a == "x.log" else a for a in flags]  # (were it taken: not in the repo root)
    assert main(["--clusters", str(f), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]}: not with --clusters (the global gateway writes no access log" in err, err
    assert "candidates" not in err and "x-kvgate-cluster" in err, err
