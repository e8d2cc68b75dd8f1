"""``kvgate serve``'s model labels (doors16; session 15's closing note: "`kvgate serve` without `--clusters`
never removes a series for a model dropped by a reload").

- A config reload never drops a model from a running ``kvgate serve``: ``models`` (and ``rewrites``) are
  "restart to apply", so the model is still served, and its series still grow, until the restart that
  drops it starts every series afresh. Removing them earlier would reset the counters of a model still
  served: nothing to remove (the docs said "no longer growing": not so).
- A catch-all rewrite rule (no ``matches``) makes any client name routable, and each one was its own
  ``model_name`` series (client-made, without bound); now the names that are no configured name are
  ``other``. Names ``InferenceModelRewrite``s add and drop live: ``tests/k8s/test_serve_model_series.py``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import orjson
import yaml

from gateway.conftest import base_url, labelled_counts, make_config, running_gateway

TOTAL = "inference_objective_request_total"


def _requests(registry: object) -> dict[tuple[str, str], float]:
    return labelled_counts(registry, TOTAL, "model_name", "target_model_name")


async def test_a_catch_all_rewrite_rule_does_not_make_a_series_per_client_name(backends) -> None:
    (b,) = await backends(1)
    rule = {"targets": [{"modelRewrite": "m"}]}  # no matches: every model name is rewritten to m
    async with running_gateway(make_config([b.address], extra={"rewrites": [rule]})) as gw:
        async with aiohttp.ClientSession() as s:
            for i in range(40):
                body = orjson.dumps({"model": f"made-up-{i}", "prompt": "x", "max_tokens": 1})
                async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                    assert r.status == 200
            body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})
            async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                assert r.status == 200
        # fails before: 41 series, one per client name
        assert _requests(gw.metrics.registry) == {("other", "m"): 40.0, ("m", "m"): 1.0}


async def _serve(config):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    admin = None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "kvgate serve exited before listening"
        if m := re.search(r"admin on http://127\.0\.0\.1:(\d+)", line):
            admin = int(m.group(1))
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            return proc, int(m.group(1)), admin


def _series(text: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(TOTAL + "{") and f'model_name="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_reload_that_drops_a_model_leaves_it_served_and_counted_until_a_restart(backends, tmp_path):
    """The decision, checked on a real ``kvgate serve``: a reload that drops ``n`` logs it as "restart to
    apply"; ``n`` is still answered and its series still counts (so none is removed)."""
    (b,) = await backends(1)
    f = tmp_path / "gw.yaml"
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0},
        "pools": [{"name": "p", "endpoints": [b.address], "models": ["m", "n"], "policy": "round-robin"}],
    }
    f.write_text(yaml.safe_dump(doc))
    proc, port, admin = await _serve(f)
    try:
        assert admin is not None
        async with aiohttp.ClientSession() as s:

            async def ask(model: str) -> int:
                body = orjson.dumps({"model": model, "prompt": "x", "max_tokens": 1})
                async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                    return r.status

            async def count(model: str) -> float:
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    return _series(await r.text(), model)

            for _ in range(600):  # ready (30 s: a gateway process on a loaded machine; 5 s before)
                if await ask("n") == 200:
                    break
                await asyncio.sleep(0.05)
            before = await count("n")
            assert before >= 1
            doc["pools"][0]["models"] = ["m"]
            f.write_text(yaml.safe_dump(doc))
            proc.send_signal(signal.SIGHUP)
            assert proc.stderr is not None
            async with asyncio.timeout(20):
                while b"restart to apply" not in (line := await proc.stderr.readline()):
                    assert line, "kvgate serve exited"
            assert b"pools[p].models" in line
            assert await ask("n") == 200
            assert await count("n") == before + 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


def test_a_name_in_flight_keeps_its_label_and_series_after_its_rule_is_gone() -> None:
    """A request admitted under a live rule's name that ends after the rule is gone, later than the grace:
    counted under its own name at its end, its series kept while it is in flight, removed ``GRACE_S``
    after it ends (``ModelLabels.hold`` / ``label``; before, its end was counted under ``other``)."""
    from kvgate.gateway.metrics import GatewayMetrics
    from kvgate.openai.labels import GRACE_S, ModelLabels
    from kvgate.openai.requeststats import RequestEnd

    now = [1000.0]
    live = [frozenset({"alias"})]
    m = GatewayMetrics()
    m.bound(ModelLabels(["m"], reported=lambda: live[0], clock=lambda: now[0]))
    models = m.models
    assert models is not None
    m.observe(RequestEnd("alias", "m", 0.1, None))
    models.hold("alias")  # (as the proxy: at its admission, a label then)
    models.label("alias")
    live[0] = frozenset()  # the rule is deleted
    now[0] += 2 * GRACE_S
    models.sweep()
    assert _requests(m.registry) == {("alias", "m"): 1.0}  # in flight: kept
    m.observe(RequestEnd("alias", "m", 0.1, None))  # its end
    models.drop("alias")
    assert _requests(m.registry) == {("alias", "m"): 2.0}  # fails before: ("other", "m") too
    now[0] += GRACE_S - 1.0
    models.sweep()
    assert ("alias", "m") in _requests(m.registry)
    now[0] += 1.0
    models.sweep()
    assert _requests(m.registry) == {}
