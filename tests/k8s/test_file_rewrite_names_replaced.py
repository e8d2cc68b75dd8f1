"""A pool's config-file rewrite rules' names stop being labels of their own once live
``InferenceModelRewrite`` rules replace the file's rules (k8s17; session 16's closing note: "a pool's
config-file rewrite names stay known after live rules replace them"). Before, ``kvgate epp`` *added* every
rule set's names to the known names (``ModelLabels.know``), so the file's names, and every live rule's
name ever seen, kept a label and series for good; ``kvgate serve`` kept the file's names known for good
(its live names were already swept, doors16). Now the rules' names are *replaced*
(``ModelLabels.set_rules``): a name that leaves is ``other`` for new requests, its series go ``GRACE_S``
later, and the requests in flight under it keep its label to their end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from k8s.reflector_kit import until
from kvgate.config.gateway import RewriteRule, RewriteTarget
from kvgate.extproc.cli import _kube_pool, model_labels, parser
from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.openai.labels import GRACE_S, OTHER_MODEL
from kvgate.openai.request import RequestPolicy

REWRITE = "llm-d.ai/v1alpha2"


def _rule(alias: str, target: str = "m") -> RewriteRule:
    return RewriteRule([alias], [RewriteTarget(target, 1)])


def test_the_epps_file_rule_names_leave_when_live_rules_replace_them() -> None:
    """``kvgate epp``'s labels as ``main`` builds them and its InferenceModelRewrite listener: the file's
    ``alias`` is a label until the live rules come, then ``other`` (its series forgotten ``GRACE_S`` later);
    a live rule's name replaced by the next live rules goes the same way. Fails before: both stayed known."""
    cfg = SimpleNamespace(
        pool=SimpleNamespace(name="llm", models=["m"], adapters=["m-lora"],
                             inference_pool=SimpleNamespace(name="llm", namespace="default", group=None)),
        gateway=SimpleNamespace(rewrites=[_rule("alias")], rewrite_seed=0),
    )  # fmt: skip
    now = [100.0]
    labels = model_labels(cfg, None, GRACE_S)
    labels.clock = lambda: now[0]
    forgotten: list[set[str]] = []
    labels.forget.append(lambda names: forgotten.append(set(names)))
    metrics = SimpleNamespace(models=labels)
    ctx = SimpleNamespace(policy=RequestPolicy(), observer=metrics, model_rewrite=None)
    args = parser().parse_args(["--pool-name", "llm", "--kube-server", "http://127.0.0.1:1"])
    on_policy = _kube_pool(args, cfg, SimpleNamespace(), ctx, None).on_policy  # type: ignore[arg-type]
    assert [labels.label(m) for m in ("m", "m-lora", "alias")] == ["m", "m-lora", "alias"]

    labels.hold("alias")  # a request under the file's rule, in flight when the live rules come
    on_policy({}, [_rule("live")])
    assert labels.label("live") == "live"
    assert labels.label("alias") == "alias", "the request in flight keeps its label to its end"
    labels.drop("alias")
    assert labels.label("alias") == OTHER_MODEL, "the file's rule name is still a label of its own"
    assert labels.label("m") == "m" and labels.label("m-lora") == "m-lora"  # (the config's names stay)

    on_policy({}, [_rule("live2")])  # the next live rules replace the last ones
    assert labels.label("live") == OTHER_MODEL and labels.label("live2") == "live2"
    now[0] += GRACE_S
    labels.sweep()
    assert forgotten == [{"alias", "live"}]  # their series go; the config's and live2's stay


async def test_serves_file_rule_names_leave_when_live_rules_replace_them(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    """``kvgate serve --config`` with a watched pool and a file rule ``alias -> m``: once an
    InferenceModelRewrite's rules replace the file's, ``alias`` is no label of its own (``other``), the
    live rule's name is. Fails before: the file's names stayed known for good."""
    double.create(
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "llm"},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": 8000}]},
        }
    )
    f = tmp_path / "gw.yaml"
    f.write_text(
        "pools:\n- name: llm\n  models: [m]\n  inferencePool: {name: llm, namespace: default}\n"
        "rewrites:\n- matches: [{model: {value: alias}}]\n  targets: [{modelRewrite: m}]\n"
    )
    flags = ["--config", str(f), "--kube-server", double.url, "--host", "127.0.0.1", "--port", "0",
             "--admin-port", "0", "--policy", "round-robin"]  # fmt: skip
    cfg = build_config(_parser().parse_args(flags))
    gw = GatewayServer(cfg, build_pools(cfg))
    labels = gw.metrics.models
    assert labels is not None and labels.label("alias") == "alias"
    await gw.start()
    try:
        double.create({"apiVersion": REWRITE, "kind": "InferenceModelRewrite", "metadata": {"name": "live"},
                       "spec": {"rules": [{"matches": [{"model": {"value": "live"}}],
                                           "targets": [{"modelRewrite": "m"}]}]}})  # fmt: skip
        await until(lambda: gw._live_names == {"live", "m"}, within_s=30.0)
        assert labels.label("live") == "live" and labels.label("m") == "m"
        assert labels.label("alias") == OTHER_MODEL, "the file's rule name is still a label of its own"
    finally:
        await gw.stop(drain_timeout=1.0)
