"""How this process was started, for a usage line, and the argparse types the commands share. Imports no
``kvgate`` package: every package may use it (``kvgate.sim.calibrate`` too)."""

from __future__ import annotations

import argparse
import io
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


def prog(module: str, command: str) -> str:
    """The program name a usage line gives a command with two entry points: ``python -m <module>`` when
    this process was started so (its ``__main__`` is ``module``), else ``kvgate <command>`` (the
    ``kvgate`` command line, or a caller of the module's ``main(argv)`` in its own process)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {module}" if getattr(spec, "name", None) == module else f"kvgate {command}"


def whole_lines() -> None:
    """stderr writes each line in one ``write``: unbuffered (``PYTHONUNBUFFERED``, ``python -u``) ``print``
    writes a line's text and its newline apart, and a log line from the off-loop writer thread
    (``kvgate.stderrlog``) to the same pipe could land between them, splicing a refusal a supervisor or test
    reads as one line (session 27's flake27). Line buffering flushes at each newline, as Python's default
    stderr does; with ``write_through`` on, the text layer kept nothing to join."""
    if isinstance(sys.stderr, io.TextIOWrapper) and sys.stderr.write_through:
        sys.stderr.reconfigure(line_buffering=True, write_through=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose error (a bad or unknown flag, a missing argument) is one line on stderr
    naming it, exit 2: ``kvgate serve: error: argument --port: must be a port in 0..65535 (0: ephemeral),
    got 70000 (kvgate serve --help lists the options)``. argparse's own printed the whole usage block
    first, a screen of flags for ``kvgate serve`` with the error last (review s18-qa L5, session 18's
    closing note). Every ``kvgate`` command's parser is one (their subparsers too)."""

    _given: list[str] | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required") and (bad := self._unknown()):
            # argparse reports a missing argument before an unknown flag: name the flag the user mistyped
            # (``kvgate bench --scenrio x`` read "required: scenario", review s19-qa2 L3).
            message = f"unrecognized arguments: {' '.join(bad)}"
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")

    def _unknown(self) -> list[str]:
        """The flags given to this parser that it does not know (argparse's own reading of each)."""
        bad = []
        for token in self._given or ():
            if token == "--":
                break
            got = self._parse_optional(token)
            if got is None:
                continue  # a positional (or a negative number)
            first = got[0] if isinstance(got, list) else got  # (3.12+: a list of readings)
            if first[0] is None:
                bad.append(token)
        return bad


def port_number(text: str) -> int:
    """An argparse type for a listen port: 0 (ephemeral) to 65535. Out of range, the OS or gRPC would wrap
    it (70000 listens on 4464) or fail later with a traceback (review s18-qa L5): exit 2 naming the flag."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535 (0: ephemeral), got {port}")
    return port


@contextmanager
def sighup_ignored() -> Iterator[None]:
    """SIGHUP ignored inside (a gateway's start, until its own handler is in: it must never end a gateway,
    review s20-qa L5), then put back as it was (a caller in the same process, a test, keeps its own)."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "warn", "fatal")  # (logging's aliases too)


def log_level(text: str) -> str:
    """An argparse type for ``--log-level``: one of ``LOG_LEVELS``, any case, as logging's name. An unknown
    one was a traceback from ``logging.basicConfig`` at start (review s20-qa L1)."""
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.upper()


def positive_int(text: str) -> int:
    """An argparse type for a count that must be at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def number(text: str) -> float:
    """An argparse type for a float flag: a number, never NaN (which passes every ``<= 0`` check and then
    breaks timers: review s19-docs L5, as s19-qa M1 for the config files). Infinity is kept where a flag
    gives it a meaning (``--model-series-grace inf``); the commands' own checks bound the rest. (The
    ``--kube-stale-*`` flags keep ``float``: ``kvgate.k8s.stalepolicy`` refuses NaN and inf there with the
    same line in both commands.)"""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def finite_number(text: str) -> float:
    """``number`` without infinity: seconds and intervals, where ``inf`` means nothing (0 is the files'
    "none" where there is one)."""
    value = number(text)
    if value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0: a rate, a load fraction, a duration (review qa36c F7: ``--qps -5`` ran round
    after round offering nothing, ``--load -1`` wrote a table of nothing measured)."""
    value = finite_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonneg_number(text: str) -> float:
    """A finite number >= 0 (0: the flag's "none" or "off", as its help says)."""
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def nonneg_int(text: str) -> int:
    """A whole number >= 0 (0: the flag's default or "none", as its help says)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def comma_list(item: Any, choices: Any = None) -> Any:
    """An argparse type for ``A,B,...``: each item read by ``item`` (an argparse type, whose refusal names the
    item) and, with ``choices``, one of them; empty items are refused. Read at parse time, so a typo is the
    one exit-2 line naming the flag, not a traceback minutes in (review qa36c F5)."""

    def parse(text: str) -> list[Any]:
        parts = text.split(",")
        if not text or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        out = []
        for part in parts:
            value = item(part)
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"unknown {part!r}; known: {', '.join(map(str, choices))}")
            out.append(value)
        return out

    return parse
