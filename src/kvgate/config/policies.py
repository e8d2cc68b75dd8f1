"""Named scheduling policies, as ``EndpointPickerConfig`` objects built from the same YAML users write."""

from __future__ import annotations

from typing import Any

import yaml

from kvgate.config.picker import EndpointPickerConfig, load_config

_HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

POLICIES: dict[str, str] = {
    # kvgate's default: expected-cost scoring (prefix savings vs queued work, lag-free in-flight load)
    # behind the conformance filter; see docs/scheduling.md. The prefix scorer is not in the profile
    # as a scorer: the cost scorer consumes its matches (and the profile runs its index hooks).
    "kvgate": """
plugins:
- type: header-based-testing-filter
- type: prefix-cache-scorer
  parameters:
    tokenizer: auto   # the served model's own tokenizer when it is available locally
    engineLru: true   # the index ages prefixes as the server's cache does (generated blocks count)
- type: kvgate-cost-scorer
  parameters:
    # a decode-heavy request no replica holds goes where its writes evict the least reused cache
    coldSpread: true
    coldSpreadDecodeHeavy: true
- type: lora-affinity-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: header-based-testing-filter
  - pluginRef: kvgate-cost-scorer
    weight: 10
  - pluginRef: lora-affinity-scorer
    weight: 5
  - pluginRef: max-score-picker
saturationDetector:
  # kvgate: a quiet page carried forward by the gateway's own in-flight accounting, so the scraper can
  # pause an endpoint only this gateway loads 0.5 s (docs/flowcontrol.md; the default is the reference
  # rule: metrics older than metricsStalenessThreshold, 200 ms, count as saturated)
  ownLoadStalenessThreshold: 1s
""",
    # The reference EPP default since v1.2 (queue 2, KV 2, prefix 3).
    "reference": """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
""",
    "round-robin": """
plugins:
- type: round-robin
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: round-robin
""",
    "least-request": """
plugins:
- type: least-request
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: least-request
""",
    "random": """
plugins:
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
""",
    "sglang-cache-aware": """
plugins:
- type: sglang-cache-aware-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: sglang-cache-aware-picker
""",
}


def policy_config(name: str) -> EndpointPickerConfig:
    """The named policy (``kvgate``, ``reference``, ``round-robin``, ``least-request``, ``random``,
    ``sglang-cache-aware``); ``KeyError`` names the known ones."""
    try:
        text = POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    cfg = load_config(_HEAD + text)
    cfg.name = name
    return cfg


def policy_yaml(name: str) -> str:
    return _HEAD + POLICIES[name].lstrip("\n")


# The index the detected-KV-events profile shares between its plugins (and a gateway's pools).
KV_EVENTS_INDEX = "kv-events"


def precise_policy(tokenizer: str, *, bind: bool) -> dict[str, Any]:
    """The ``kvgate`` policy as a picker-config mapping with its prefix signal from the engines' KV events
    (``precise-prefix-cache-scorer``) instead of routing history: what ``kvgate serve --kv-events auto``
    runs when every endpoint publishes events. ``tokens`` keys work with any engine hash algorithm and
    seed (and the simulator's); ``tokenizer`` is the servers' own, so text and chat prompts are hashed as
    the engines hash them. Event addresses come from each endpoint's ``kvgate.io/kv-events`` label.
    """
    doc: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
    for plugin in doc["plugins"]:
        if plugin["type"] == "prefix-cache-scorer":
            plugin["type"] = "precise-prefix-cache-scorer"
            plugin["parameters"] = {
                "mode": "tokens",
                "tokenizer": tokenizer,
                "eventsBind": bind,
                "indexName": KV_EVENTS_INDEX,
            }
        elif plugin["type"] == "kvgate-cost-scorer":
            params = dict(plugin.get("parameters") or {})
            # evictionPrice learns from the approximate index's block keys: with the precise source it
            # would price nothing, so the precise profile leaves it off
            params.pop("evictionPrice", None)
            plugin["parameters"] = {**params, "prefixPluginRef": "precise-prefix-cache-scorer"}
    return doc
