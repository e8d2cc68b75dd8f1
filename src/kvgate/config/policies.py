"""Named scheduling policies, as ``EndpointPickerConfig`` objects built from the same YAML users write."""

from __future__ import annotations

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
- type: kvgate-cost-scorer
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
