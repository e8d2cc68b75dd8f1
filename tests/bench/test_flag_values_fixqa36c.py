"""Review qa36c F5 / F7 / F11: a bad VALUE of a bench or sim flag is refused when the flags are parsed, as
docs/hardening.md's CLI row says: one line on stderr naming the flag, exit 2. Before, a misspelt policy or
capacity was a traceback (exit 1) after the run had started, and a negative rate or count was run."""

from __future__ import annotations

import pytest

from kvgate import cli

CASES = [
    # (argv, the flag the one line must name)
    (["bench", "shared-prefix", "--quick", "--policies", "kvgatee"], "--policies"),  # F5
    (["bench", "live", "--quick", "--no-netns", "--policies", "kvgatee"], "--policies"),
    (["bench", "multiturn", "--capacities", "a=foo"], "--capacities"),  # F5
    (["bench", "multiturn", "--capacities", "z=1"], "--capacities"),
    (["bench", "multiturn", "--policies", "kvgate,nope"], "--policies"),
    (["bench", "workers", "--capacities", "a=-1"], "--capacities"),
    (["bench", "workers", "--modes", "1,gosip"], "--modes"),
    (["bench", "live", "--quick", "--no-netns", "--qps", "-5"], "--qps"),  # F7
    (["bench", "live", "--quick", "--no-netns", "--qps", "0"], "--qps"),  # F7: was "use the default"
    (
        ["bench", "multiturn", "--set", "tuning", "--load", "-1", "--capacities", "a=1,b=1,c=1"],
        "--load",
    ),  # F7
    (["bench", "gateway-overhead", "--requests", "-1", "--repeats", "1"], "--requests"),  # F7
    (["bench", "precise", "--qps", "20,x"], "--qps"),
    (["bench", "sim-capacity", "--levels", "1,-2"], "--levels"),
    (["bench", "extproc", "--sizes", "1024,big"], "--sizes"),
    (["bench", "epp-replicas", "--repeats", "0"], "--repeats"),
    (["sim", "--profile", "nope"], "--profile"),  # F11: was exit 1 with a KeyError's repr
    (["sim", "--replicas", "0"], "--replicas"),  # F11: the line named three flags
    (["sim", "--time-scale", "0"], "--time-scale"),
]


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_is_one_line_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)  # (a value accepted would start the run: nothing here may get that far)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2, err
    assert len(err) == 1 and f"argument {flag}:" in err[0], err


def test_good_values_still_parse() -> None:
    from kvgate.bench.argtypes import family_capacities, fleet_policies
    from kvgate.entry import comma_list, positive_int

    assert fleet_policies("kvgate,sglang-cache-aware,kvgate-precise") == ["kvgate", "sglang-cache-aware",
                                                                           "kvgate-precise"]  # fmt: skip
    assert family_capacities("a=11.77,c=8.74") == {"a": 11.77, "c": 8.74}
    assert comma_list(positive_int)("1,32,64") == [1, 32, 64]
