"""How this process was started, for a usage line. Imports no ``kvgate`` package: every package may use
it (``kvgate.sim.calibrate`` too)."""

from __future__ import annotations

import sys


def prog(module: str, command: str) -> str:
    """The program name a usage line gives a command with two entry points: ``python -m <module>`` when
    this process was started so (its ``__main__`` is ``module``), else ``kvgate <command>`` (the
    ``kvgate`` command line, or a caller of the module's ``main(argv)`` in its own process)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {module}" if getattr(spec, "name", None) == module else f"kvgate {command}"
