"""qa29 Q6: a picker swap builds the new picker on the event loop, tokenizer load included, so every
request of the process (with ``--workers``: of every worker at once, and the supervisor's admin port,
whose ``check_pickers`` builds it too) waits while a new tokenizer file is read and parsed.

Measured (``kvgate serve --config``, a pool with ``precise-prefix-cache-scorer`` ``mode: tokens``, each
SIGHUP naming a copy of the 1.1 MB test tokenizer at a new path, a client sending a 1-token request every
10 ms; load ~17 on 2 cores): request latency p50 0.7 ms, max 10 ms before; during 5 reloads max
330-490 ms (one process), 760-900 ms (``--workers 2``). The same swaps with the tokenizer path unchanged
(cached): max 15 ms, so it is the load. Real models' tokenizer.json files are 5-10x this one.

Expected: the file is read off the loop (``asyncio.to_thread``) before the synchronous build. (fixqa29b:
that takes the load-time checks off the loop, not the file's parse: ``Tokenizer.from_file`` holds the
GIL.) The test records, without timing, whether a ``PromptTokenizer`` was constructed on the thread
running the event loop during ``areload``.

Second test (L): tokenizers are cached by path for the life of the process (``tokenize._BY_PATH``), so a
tokenizer file replaced in place (a new model's, same path) is never read again: the reload swaps in a
picker that still hashes with the old tokenizer, silently. Expected: a changed file (mtime, size) is
read again.

Both fail on main 11cbef01 (and 8d0494f9); the third (fixqa29b: the cache by file is bounded) too."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import yaml

from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir

SCORER = "precise-prefix-cache-scorer"


def _precise(tokenizer: str, index: str) -> dict:
    params = {
        "mode": "tokens",
        "tokenizer": tokenizer,
        "eventsBind": False,
        "indexName": index,
    }
    return {
        "plugins": [{"type": SCORER, "parameters": params}, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": SCORER}, {"pluginRef": "queue-scorer"}],
            }
        ],
    }


def _plain() -> dict:
    return {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }


def _pools(picker: dict) -> list[dict]:
    return [
        {
            "name": "p",
            "endpoints": ["127.0.0.1:1001"],
            "models": ["m"],
            "endpointPickerConfig": picker,
        }
    ]


async def test_a_reload_reads_a_new_tokenizer_off_the_event_loop(tmp_path, monkeypatch):
    tok = tmp_path / f"tok-{uuid.uuid4().hex[:8]}.json"  # (a path no cache holds)
    shutil.copy(tokenizer_dir() / "tokenizer.json", tok)
    on_loop: list[bool] = []
    real = tokenize.PromptTokenizer

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)
            super().__init__(*a, **kw)

    cfg = make_config([], extra={"pools": _pools(_plain())})
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        monkeypatch.setattr(tokenize, "PromptTokenizer", Recording)
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump({"pools": _pools(_precise(str(tok), f"qa29-{uuid.uuid4().hex[:8]}"))}))
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        assert await rl.areload()
        assert on_loop, "the new tokenizer was never loaded"
        assert not any(on_loop), f"tokenizer loaded on the event loop during the reload ({on_loop})"
    finally:
        await gw.stop(drain_timeout=0.2)


async def test_a_tokenizer_file_replaced_in_place_is_read_again_by_a_reload(tmp_path):
    tok = tmp_path / f"tok-{uuid.uuid4().hex[:8]}.json"
    shutil.copy(tokenizer_dir() / "tokenizer.json", tok)
    cfg = make_config([], extra={"pools": _pools(_precise(str(tok), f"qa29-{uuid.uuid4().hex[:8]}"))})
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        old = gw.pools[0].director.handle.plugins[SCORER]._tokenizer.get("m")
        # A new model's tokenizer written over the old file (here: the file rewritten, a space added).
        tok.write_text(tok.read_text() + " ")
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump({"pools": _pools(_precise(str(tok), f"qa29-{uuid.uuid4().hex[:8]}"))}))
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        assert await rl.areload()  # "picker swapped"
        new = gw.pools[0].director.handle.plugins[SCORER]._tokenizer.get("m")
        assert new is not old, "the reloaded picker hashes with the tokenizer read before the file changed"
    finally:
        await gw.stop(drain_timeout=0.2)


def test_loaded_tokenizers_are_bounded_by_file(tmp_path, monkeypatch):
    """fixqa29b: the cache by file keeps the ``TOKENIZER_FILES`` most recently loaded (it kept every path
    for the life of the process)."""
    monkeypatch.setattr(tokenize, "_BY_PATH", {})
    monkeypatch.setattr(tokenize, "TOKENIZER_FILES", 2)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"tok-{i}.json")
        shutil.copy(tokenizer_dir() / "tokenizer.json", paths[-1])
        tokenize.load(paths[-1])
    assert list(tokenize._BY_PATH) == [str(p) for p in paths[1:]]
    assert tokenize.load(paths[2]) is tokenize._BY_PATH[str(paths[2])]  # (unchanged: not read again)
