"""Review s24-rev-fixqa24 R3: GIE's pkg/epp/server/options.go
(kubernetes-sigs/gateway-api-inference-extension, read at commit 0e82c621) registers --enable-multi-engine
and --engine-label-key, and -v as a pflag shorthand (``IntVarP("v", "v", ...)``: -v3 and -v=3 are its
forms). kvgate epp refused them (exit 2), so a Deployment written for that reference did not start kvgate
epp (before d9464735 they were ignored). Since qa33a F6 --engine-label-key is a kvgate option (it names
the pod label read for the engine), no longer ignored."""

from __future__ import annotations

import pytest

from kvgate.extproc.cli import parser
from kvgate.extproc.upstream_flags import split_unknown


@pytest.mark.parametrize(
    "argv",
    [
        ["--enable-multi-engine"],
        ["--enable-multi-engine=true"],
        ["-v3"],
        ["-v=3"],
        ["-v", "3"],
    ],
)
def test_the_reference_epps_own_flags_are_all_ignored(argv: list[str]) -> None:
    _, unknown = parser().parse_known_args(["--endpoints", "127.0.0.1:1", *argv])
    ignored, refused = split_unknown(unknown)
    assert refused == [], refused
    assert ignored == argv, ignored


@pytest.mark.parametrize("word", ["-vx", "-v3x", "--enable-multi-engin", "--engine-label"])
def test_near_misses_are_still_refused(word: str) -> None:
    """(the shorthand is ``-v`` and digits only; a misspelt flag is no reference flag)"""
    _, unknown = parser().parse_known_args(["--endpoints", "127.0.0.1:1", word])
    assert split_unknown(unknown)[1] == [word]


@pytest.mark.parametrize(
    "argv", [["--engine-label-key", "example.com/engine"], ["--engine-label-key=example.com/engine"]]
)
def test_engine_label_key_is_a_kvgate_option(argv: list[str]) -> None:
    args, unknown = parser().parse_known_args(["--endpoints", "127.0.0.1:1", "--enable-multi-engine", *argv])
    assert args.engine_label_key == "example.com/engine"
    assert split_unknown(unknown) == (["--enable-multi-engine"], [])
