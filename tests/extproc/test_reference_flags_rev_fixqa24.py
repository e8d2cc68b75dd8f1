"""Review s24-rev-fixqa24 R3: GIE's pkg/epp/server/options.go
(kubernetes-sigs/gateway-api-inference-extension, read at commit 0e82c621) registers --enable-multi-engine
and --engine-label-key, and -v as a pflag shorthand (``IntVarP("v", "v", ...)``: -v3 and -v=3 are its
forms). kvgate epp refused them (exit 2), so a Deployment written for that reference did not start kvgate
epp (before d9464735 they were ignored)."""

from __future__ import annotations

import pytest

from kvgate.extproc.cli import parser
from kvgate.extproc.upstream_flags import split_unknown


@pytest.mark.parametrize(
    "argv",
    [
        ["--enable-multi-engine", "--engine-label-key", "inference.networking.k8s.io/engine-type"],
        ["--enable-multi-engine=true", "--engine-label-key=engine"],
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
