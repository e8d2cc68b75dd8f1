"""Review s30-rev-b30 of tok30's ``tokenizer: auto`` loader and start-up preload.

F1: a look-up that raises (``find_for_model``'s ``Path.is_file``/``is_dir`` raise for EACCES or
ENAMETOOLONG, ``expanduser`` raises RuntimeError for ``~nosuchuser``) is caught nowhere on the way up:
``tokenize.preload`` (``build_pools``, ``kvgate epp``) raises out of start-up, so ``kvgate serve --model
/<300 x's>`` exits with a traceback (it started on 6d96a979 and f6c2bf6a), and on the loader thread the
model is never recorded, so every request for it queues the look-up again and logs a traceback.
F2: ``preload`` records a miss for good: a listed model whose tokenizer is not in the (shared) Hugging Face
cache yet when the gateway starts (a co-located vLLM still downloading it) is scored with the estimate for
the life of the process; on f6c2bf6a its first request looked it up (after vLLM served it).
All fail on main b00cbefc (and ac00c309); the F2 one passes on f6c2bf6a (before the preload, a171b317).
Copied from the review's tests (/work/team/reviews/s30-rev-b30-tests/), plus the real look-up's errors for
names the file system refuses (fixrevb30).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.conftest import make_config
from kvgate.gateway.cli import build_pools
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir


def _auto_pool(model: str) -> list[dict[str, Any]]:
    return [{"name": "auto", "endpoints": ["127.0.0.1:1001"], "models": [model], "policy": "kvgate"}]


def _refused(calls: list[str]) -> Any:
    def find_for_model(model: str) -> Path | None:
        calls.append(model)
        raise PermissionError(13, "Permission denied", f"{model}/tokenizer.json")

    return find_for_model


def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this test's dicts)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    monkeypatch.setattr(tokenize, "_PENDING", set())


def test_a_listed_models_look_up_error_does_not_stop_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(tokenize, "find_for_model", _refused(calls))
    model = "/srv/private/models/m"  # (vLLM --model /path names the model by its path)
    build_pools(make_config([], extra={"pools": _auto_pool(model)}))  # main: PermissionError raised here
    assert calls == [model]
    assert tokenize.for_model_soon(model) is None  # the estimate


def test_a_failed_look_up_is_not_queued_again_at_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(tokenize, "find_for_model", _refused(calls))
    model = "/srv/private/models/m2"
    for _ in range(3):  # three requests, each after the loader is done with the one before
        assert tokenize.for_model_soon(model) is None
        tokenize.wait_loads(60)
    assert calls == [model], "each request looked the model up again (and logged a traceback)"


def test_a_listed_model_whose_tokenizer_arrives_after_start_up_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    _fresh(monkeypatch)
    build_pools(make_config([], extra={"pools": _auto_pool("org/late")}))  # nothing in the cache yet
    snap = hub / "models--org--late" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    shutil.copy(tokenizer_dir() / "tokenizer.json", snap / "tokenizer.json")  # vLLM's download lands
    for _ in range(3):  # later requests
        if tokenize.for_model_soon("org/late") is not None:
            break
        tokenize.wait_loads(60)
    assert tokenize.for_model_soon("org/late") is not None, "the miss at start-up was kept for good"


@pytest.mark.parametrize(
    "model",
    ["/" + "x" * 300, "~no-such-user-fixrevb30/models/m"],  # ENAMETOOLONG; expanduser's RuntimeError
    ids=["name-too-long", "no-such-user"],
)
def test_a_name_the_file_system_refuses_is_a_miss_with_one_warning(
    model: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fresh(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=tokenize.log.name):
        build_pools(make_config([], extra={"pools": _auto_pool(model)}))  # main: the error stops start-up
        for _ in range(3):  # three requests
            assert tokenize.for_model_soon(model) is None
            tokenize.wait_loads(60)
    assert tokenize._BY_MODEL.get(model, "unseen") is None, "the request's look-up recorded no miss"
    mine = [r for r in caplog.records if r.name == tokenize.log.name]
    # (one at start-up, whose miss is not kept, and one at the first request's look-up: then recorded)
    assert [r.levelno for r in mine] == [logging.WARNING] * 2, [r.getMessage() for r in mine]
    assert all(r.exc_info is None for r in mine), "a traceback was logged"
