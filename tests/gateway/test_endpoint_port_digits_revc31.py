"""rev-c31 F5, the sibling of review s31-qa31 Q6 (fixed in k8s/discovery.py): ``normalise_endpoint`` took a
port ``str.isdigit`` accepts and ``int`` refuses (superscript two), so config loading raised ValueError (a
traceback from ``kvgate serve --config``) instead of a GatewayConfigError naming the key.
Fails on beb11387."""

from __future__ import annotations

import pytest

from kvgate.config.gateway import GatewayConfigError, normalise_endpoint


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1:80\u00b2",  # superscript two: isdigit() yes, int() no
        "http://10.0.0.1:\u00b2/",
        "10.0.0.1:\u0668\u0660",  # Arabic-Indic 80: int() takes it, but it is no port a URL can carry
    ],
)
def test_a_non_ascii_digit_port_is_a_config_error_naming_the_key(value):
    with pytest.raises(GatewayConfigError, match=r"pools\[0\]\.endpoints\[0\]"):
        normalise_endpoint(value, "pools[0].endpoints[0]")


def test_an_ascii_port_still_normalises():
    assert normalise_endpoint("http://10.0.0.1:8000/", "pools[0].endpoints[0]") == "10.0.0.1:8000"
