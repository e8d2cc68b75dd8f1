"""qa34b-F1: an ``aggregate:`` that can never be fetched was taken without a word. A URL with no scheme
(``127.0.0.1:P/v1/pool/aggregate``, the shape ``gateway``/``epp``/``health`` take) or a non-HTTP one
(``ftp://``) started both doors (exit 0, ``/readyz`` 200), and a fetch that kept failing (404, refused, ...)
was logged at DEBUG only: the cluster was "unknown" for good, routed load-blind, with nothing in the log.
Now such a URL is refused at load (exit 2, naming ``clusters[i].aggregate``; a reload keeps the last good
file), and a failing streak says one WARNING (naming the cluster and URL) and its end one INFO."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.multicluster.clusters import ClustersError, ClustersFile, parse
from multicluster.east_aggregate import east_fetching

GOOD = (b'{"name":"p","snapshot_time":1.0,"ready_endpoints":1,"total_endpoints":1,"capacity":1.0,'
        b'"headroom":1.0,"request_slots":4.0,"metrics_age_s":0.1}')  # fmt: skip
DOORS = {
    "serve": ["serve", "--port", "0"],
    "epp": ["epp", "--plaintext", "--host", "127.0.0.1", "--port", "0", "--grpc-health-port", "0",
            "--metrics-port", "0"],
}  # fmt: skip
BANNER = {"serve": "global gateway on", "epp": "kvgate epp ready"}


async def until(cond: Callable[[], bool], what: Callable[[], str], within_s: float = 30.0) -> None:
    """Polls ``cond`` (a state) until it holds, or fails with ``what()`` past ``within_s``."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s:g}s: {what()}")
        await asyncio.sleep(0.1)


def _doc(aggregate: object) -> dict[str, object]:
    return {"clusters": [{"name": "a", "gateway": "127.0.0.1:9"},
                         {"name": "east", "gateway": "127.0.0.1:9", "aggregate": aggregate}]}  # fmt: skip


@pytest.mark.parametrize(
    "url, why",
    [("127.0.0.1:9/v1/pool/aggregate", "no scheme"), ("ftp://127.0.0.1:9/v1/pool/aggregate", "'ftp'"),
     ("http://127.0.0.1:70000/x", "out of range"), ("http://127.0.0.1:0/x", "port"),
     ("http:///v1/pool/aggregate", "host"), ("http://a b:9/x", "host"), (9, "URL")],
)  # fmt: skip
def test_an_aggregate_that_is_no_http_url_is_refused_at_load_naming_the_key(url: object, why: str) -> None:
    with pytest.raises(ClustersError, match=why) as e:
        parse(_doc(url))
    assert e.value.key == "clusters[1].aggregate"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1/pool/aggregate", "https://gw.example/v1/pool/aggregate", "http://[::1]:9/x",
            "HTTP://h:9/x", "https://bücher.example:443/x"],
)  # fmt: skip
def test_http_and_https_aggregates_are_taken(url: str) -> None:
    assert parse(_doc(url)).clusters[1].aggregate == url


def test_a_reload_with_such_an_aggregate_keeps_the_last_good_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: east, gateway: '127.0.0.1:9', aggregate: 'http://127.0.0.1:9/x'}]\n")
    cfile = ClustersFile(f)
    f.write_text("clusters: [{name: east, gateway: '127.0.0.1:9', aggregate: '127.0.0.1:9/x'}]\n")
    caplog.set_level(logging.WARNING, "kvgate.multicluster")
    assert not cfile.reload_now(0.0)
    assert cfile.config.clusters[0].aggregate == "http://127.0.0.1:9/x"
    assert any("clusters[0].aggregate" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("door", ["serve", "epp"])
async def test_both_doors_refuse_it_at_start_exit_2(tmp_path: Path, door: str) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: east, gateway: '127.0.0.1:9',\n"
                 "             aggregate: '127.0.0.1:9/v1/pool/aggregate'}]\n")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", *DOORS[door], "--clusters", str(f),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:  # (it took the file and serves: not left running past the test)
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, (proc.returncode, out, err)
    assert b"clusters[0].aggregate" in err and b"no scheme" in err, err


async def test_a_failing_streak_is_warned_once_and_its_end_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real HTTP on loopback: 404 for four rounds (none at the first, then one WARNING naming the cluster
    and its URL), then the aggregate (one INFO), then 500 twice (a new streak: a second WARNING)."""
    state = {"status": 404}

    async def handle(_req: web.Request) -> web.Response:
        if state["status"] != 200:
            return web.Response(status=state["status"])
        return web.Response(body=GOOD, content_type="application/json")

    caplog.set_level(logging.INFO, "kvgate.multicluster.fetcher")

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level and "east" in r.getMessage()]

    async with east_fetching(handle) as (st, fetcher, url):
        await fetcher.start()  # (its first round: one failure, a blip so far, no line)
        assert st.fetch_error == "HTTP 404" and st.aggregate is None
        assert not said(logging.WARNING)
        await fetcher.refresh()
        await fetcher.refresh()
        await fetcher.refresh()
        warned = said(logging.WARNING)
        assert len(warned) == 1 and url in warned[0] and "HTTP 404" in warned[0], warned
        state["status"] = 200
        await fetcher.refresh()
        assert st.aggregate is not None
        assert len(said(logging.INFO)) == 1, said(logging.INFO)
        state["status"] = 500
        await fetcher.refresh()
        await fetcher.refresh()
        warned = said(logging.WARNING)
        assert len(warned) == 2 and "HTTP 500" in warned[1], warned


@pytest.mark.parametrize("door", ["serve", "epp"])
async def test_both_doors_log_an_aggregate_that_keeps_answering_404(tmp_path: Path, door: str) -> None:
    """The process's stderr: a WARNING naming the cluster and ``aggregate`` within 30 s (polled); one only,
    however many rounds fail (``refresh_s`` 0.2: dozens of rounds by then)."""

    fetches = [0]

    async def handle(_req: web.Request) -> web.Response:
        fetches[0] += 1
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner, port = await serve_app(app)
    f = tmp_path / "clusters.yaml"
    f.write_text(f"refresh_s: 0.2\nclusters:\n- {{name: east, gateway: '127.0.0.1:{port}', "
                 f"aggregate: 'http://127.0.0.1:{port}/wrong'}}\n")  # fmt: skip
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", *DOORS[door], "--clusters", str(f),
            stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        while BANNER[door] not in (line := (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()):
            assert line, stderr.read_text()[-2000:]

        def warned() -> list[str]:
            return [ln for ln in stderr.read_text().splitlines()
                    if "WARNING" in ln and "aggregate from east" in ln]  # fmt: skip

        await until(lambda: bool(warned()), lambda: stderr.read_text()[-2000:])
        more = fetches[0] + 5  # (five more failed fetches: still one line)
        await until(lambda: fetches[0] >= more, lambda: f"{fetches[0]} fetches")
        assert len(warned()) == 1 and "HTTP 404" in warned()[0], stderr.read_text()[-3000:]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        await runner.cleanup()
