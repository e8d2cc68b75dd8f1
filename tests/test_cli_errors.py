"""A bad or unknown flag of any ``kvgate`` command ends with exit 2 and one line on stderr naming it (review
s18-qa L5, session 18's closing note: argparse printed the whole usage block first, for ``kvgate serve``
some 40 lines of flags with the error last; ``kvgate.entry.ArgumentParser`` is every command's parser)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvgate.bench.cli import DELEGATED
from kvgate.cli import COMMANDS, main

BASE = ["--endpoints", "127.0.0.1:9", "--model", "m"]
EPP = [*BASE, "--plaintext", "--grpc-health-port", "0"]


def _one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2, (e.value.code, err[-600:])
    assert len(lines) == 1, err[-600:]
    return lines[0]


# (``kvgate bench`` wants a scenario, ``kvgate hub-controller`` its clusters file.) ``kvgate epp`` ignores
# only the reference EPP's own flags (``--v``, ``--zap-*``, ...: a drop-in replacement) and refuses any
# other unknown one since qa24 F3 (``tests/extproc/test_epp_unknown_flags_qa24.py``).
COMMAND_ARGS = {"bench": ["list"], "hub-controller": ["--clusters", "c.yaml"]}


@pytest.mark.parametrize(
    "args",
    [[c, *COMMAND_ARGS.get(c, [])] for c in COMMANDS] + [["bench", name] for name in DELEGATED],
    ids=lambda a: " ".join(a),
)
def test_an_unknown_flag_is_one_line_naming_it(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line([*args, "--no-such-flag"], capsys)
    assert "--no-such-flag" in line and "error" in line, line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["serve", "--port", "70000", *BASE], "--port"),
        (["serve", "--admin-port", "-1", *BASE], "--admin-port"),
        (["serve", "--port", "http", *BASE], "--port"),
        (["epp", "--port", "70000", *EPP], "--port"),
        (["epp", "--port", "-5", *EPP], "--port"),
        (["epp", "--metrics-port", "-1", *EPP], "--metrics-port"),
        (["epp", "--max-concurrent-streams", "0", *EPP], "--max-concurrent-streams"),
        (["serve", "--engine", "nope", *BASE], "--engine"),
        (["hub-controller", "--port", "70000", *COMMAND_ARGS["hub-controller"]], "--port"),
        (["k8s-double", "--port", "70000"], "--port"),
        # NaN passed every "<= 0" check and then broke timers (review s19-docs L5); inf means nothing here.
        (["epp", "--stream-idle-timeout", "nan", *EPP], "--stream-idle-timeout"),
        (["epp", "--scrape-interval", "nan", *EPP], "--scrape-interval"),
        (["epp", "--ha-lease-duration", "inf", *EPP], "--ha-lease-duration"),
        (["epp", "--model-series-grace", "nan", *EPP], "--model-series-grace"),
        (["serve", "--model-series-grace", "nan", *BASE], "--model-series-grace"),
    ],
    ids=lambda a: a if isinstance(a, str) else " ".join(a[:3]),
)
def test_a_bad_value_is_one_line_naming_its_flag(
    args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _one_line(args, capsys)
    assert f"argument {flag}" in line, line
    assert line.startswith(f"kvgate {args[0]}: error: "), line


@pytest.mark.parametrize("command", ["bench", "hub-controller"])
def test_an_unknown_flag_alone_is_named_before_a_missing_argument(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse reports a missing argument before an unknown flag: ``kvgate bench --scenrio x`` read
    "required: scenario" (review s19-qa2 L3). The flag the user mistyped is named; a missing argument alone
    still is."""
    line = _one_line([command, "--no-such-flag"], capsys)
    assert "unrecognized arguments: --no-such-flag" in line, line
    assert "required" in _one_line([command], capsys)


@pytest.mark.parametrize(("flag", "value"), [("--base-port", "70000"), ("--kv-events-port", "-1")])
def test_the_simulators_ports_are_checked(flag: str, value: str) -> None:
    """(A process: before, ``kvgate sim`` took any int and started serving.)"""
    try:
        cmd = [sys.executable, "-m", "kvgate.cli", "sim", flag, value]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kvgate sim {flag} {value} started") from e
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and f"argument {flag}" in lines[0], r.stderr[-600:]


def test_from_the_command_line_too() -> None:
    """The QA's own check (``/work/team/reviews/s18-qa-tests/test_qa18_cli_ports.py``): a process, exit 2,
    no traceback, at most 2 lines, the flag named."""
    r = subprocess.run(
        [sys.executable, "-m", "kvgate.cli", "serve", "--port", "70000", "--admin-port", "0", *BASE],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--port" in lines[0], r.stderr[-600:]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["serve", *BASE, "--cluster-policy", "active-passive"], "--cluster-policy"),
        (["serve", *BASE, "--cluster-policy-seed", "3"], "--cluster-policy-seed"),
        (["serve", *BASE, "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig"),
        (["serve", *BASE, "--kube-server", "http://127.0.0.1:1"], "--kube-server"),
        (["serve", *BASE, "--pool-namespace", "prod"], "--pool-namespace"),
        (["epp", *EPP, "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig"),
        (["epp", *EPP, "--kube-server", "http://127.0.0.1:1"], "--kube-server"),
        (["epp", *EPP, "--cluster-policy", "round-robin"], "--cluster-policy"),
        (["epp", *EPP, "--pool-namespace", "prod"], "--pool-namespace"),  # (k8s27: as serve; main served)
    ],
    ids=lambda a: a if isinstance(a, str) else a[0],
)
def test_a_flag_that_cannot_apply_is_refused(args: list[str], flag: str) -> None:
    """A flag of another mode given where it cannot apply is one line naming it, exit 2, as its siblings
    (``--cert``: only with ``--admin-tls``), not taken silently: ``--cluster-policy active-passive`` without
    ``--clusters`` ran a plain gateway with no word (review s20-qa L1). (A process: the old code served.)"""
    try:
        cmd = [sys.executable, "-m", "kvgate.cli", *args, "--port", "0"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{flag} was taken silently: the command started") from e
    lines = [line for line in r.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert r.returncode == 2 and len(lines) == 1 and flag in lines[0], r.stderr[-600:]


@pytest.mark.parametrize(
    "args",
    [["serve", *BASE], ["epp", *EPP], ["hub-controller", *COMMAND_ARGS["hub-controller"]], ["sim"]],
    ids=lambda a: a[0],
)
def test_an_unknown_log_level_is_one_line(args: list[str]) -> None:
    """An unknown ``--log-level`` was a traceback from ``logging.basicConfig`` (``kvgate serve``, ``epp``;
    review s20-qa L1), or ran (``sim``). (A process: the old code could start serving.)"""
    try:
        cmd = [sys.executable, "-m", "kvgate.cli", *args, "--log-level", "verbose"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("--log-level verbose was taken: the command started") from e
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "argument --log-level" in lines[0], r.stderr[-600:]


def test_logging_s_own_aliases_are_levels_too() -> None:
    """``warn`` and ``fatal`` are logging's names as well; they worked before the level was checked
    (review s20-qa2 L1)."""
    from kvgate.entry import log_level

    assert [log_level(v) for v in ("warn", "WARN", "Fatal", "debug")] == ["WARN", "WARN", "FATAL", "DEBUG"]
