"""``metrics-data-source`` ``port: null`` (a Helm template's empty value) is refused as a port, as
llm-d-router refuses it (it reads null as 0: "invalid port 0"), naming the key; it was called an unknown
parameter, with a list of known keys that left ``port`` out (review s28-rev-fixes28a F8; fails on
8d12668e)."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError


@pytest.mark.parametrize("value", ["null", "0", "65536"])
def test_a_port_out_of_range_or_null_is_refused_as_a_port(value: str) -> None:
    doc = f"plugins:\n- type: metrics-data-source\n  parameters: {{port: {value}}}\n- type: queue-scorer\n"
    with pytest.raises(ConfigError) as e:
        build_director(load_config(doc), EndpointStore(), clock=lambda: 0.0, seed=0)
    assert str(e.value).startswith("plugins[0].parameters.port: must be in [1, 65535]"), str(e.value)


def test_a_port_given_is_taken() -> None:
    doc = "plugins:\n- type: metrics-data-source\n  parameters: {port: 9400}\n- type: queue-scorer\n"
    d = build_director(load_config(doc), EndpointStore(), clock=lambda: 0.0, seed=0)
    (src,) = (p.source for p in d.handle.plugins.values() if p.type_name == "metrics-data-source")
    assert src.port == 9400
