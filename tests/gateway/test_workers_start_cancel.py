"""``--workers``: the supervisor's wait for a worker's start report raises a cancellation landing in the
turn the report arrives. (Before, Python 3.11's ``asyncio.wait_for(ready, ...)`` returned the report and
dropped the cancel, CPython gh-86296: a stop cancelling a worker's restart, or the start-up, went on as if
the worker had simply started.) A stand-in Process that reports at once; the loop's reader callback for
the report is followed, in the same turn, by the cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.gateway.cli import _parser, build_config
from kvgate.gateway.workers import Supervisor


class _ReportingProcess:
    pid = 424242

    def __init__(self, *, args: tuple[Any, ...], **_kw: Any) -> None:
        self.send = args[2]

    def start(self) -> None:
        self.send.send(12345)  # the worker's admin port: started

    def is_alive(self) -> bool:
        return False

    def kill(self) -> None:
        pass


async def test_a_start_report_arriving_as_the_start_is_cancelled_raises_the_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump({"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]}))
    sup = Supervisor(build_config(_parser().parse_args(["--config", str(f)])), 1)
    sup.ctx = type("Ctx", (), {"Pipe": staticmethod(sup.ctx.Pipe), "Process": _ReportingProcess})()
    loop = asyncio.get_running_loop()
    real_add_reader = loop.add_reader
    task: asyncio.Task[None] | None = None

    def add_reader(fd: int, callback: Any, *args: Any) -> None:
        def report_then_cancel() -> None:
            callback(*args)
            assert task is not None
            task.cancel()

        real_add_reader(fd, report_then_cancel)

    monkeypatch.setattr(loop, "add_reader", add_reader)
    task = asyncio.create_task(sup.start_worker(0))
    await asyncio.wait([task], timeout=30.0)
    assert task.done()
    assert task.cancelled(), "the cancellation was swallowed: start_worker returned"
