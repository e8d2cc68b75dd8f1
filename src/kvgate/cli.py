"""`kvgate` command line: a thin dispatcher to each front door's own CLI module.

Each subcommand lives next to the code it runs (``kvgate.<package>.cli:main``) and parses its own
arguments, so importing ``kvgate sim`` never loads the gateway or gRPC, and vice versa.
"""

from __future__ import annotations

import importlib
import signal
import sys

from kvgate.entry import whole_lines

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kvgate.gateway.cli", "run the OpenAI-compatible gateway in front of model servers"),
    "epp": ("kvgate.extproc.cli", "run the Envoy ext_proc Endpoint Picker (EPP) server"),
    "sim": ("kvgate.sim.cli", "run simulated vLLM/SGLang model servers"),
    "bench": ("kvgate.bench.cli", "run a benchmark scenario"),
    "demo": ("kvgate.bench.demo", "simulated fleet behind kvgate vs round robin, side by side"),
    "hub-controller": ("kvgate.multicluster.hub_controller", "run the InferencePoolImport hub controller"),
    "k8s-double": ("kvgate.k8s.cli", "run the Kubernetes API-server double (a test fixture) for kubectl"),
}


# Tooling outside the product install (pyproject's optional dependencies).
EXTRAS = {"sim": "sim", "bench": "bench", "demo": "bench"}
EXTRA_PACKAGES = frozenset({"numpy", "matplotlib", "rich"})

# Commands whose child processes end with them (``kvgate.bench.reaper``), installed only when run from
# the command line (``main()`` reading ``sys.argv``): an in-process ``main([...])`` caller keeps its own
# signal handlers and exit.
REAPED = frozenset({"bench", "demo"})
# The gateways and the hub controller, run from the command line: SIGHUP reloads (a file) or is ignored,
# never a kill.
HUP_IGNORED = frozenset({"serve", "epp", "hub-controller"})


def _usage() -> str:
    lines = ["usage: kvgate <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`kvgate <command> --help` shows each command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if argv is None:
        whole_lines()  # (a refusal is one line on stderr, whatever a log thread writes beside it)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from kvgate import __version__

        print(__version__)
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"kvgate: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if argv is None and args[0] in HUP_IGNORED:
        # SIGHUP never ends a gateway (reviews s20-qa L5, s20-qa2 L3/L4): ignored before the command's
        # module is imported (that takes ~0.5 s), and still after its ``main`` has put back what it found.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if argv is None and args[0] in REAPED:
        from kvgate.bench import reaper

        reaper.install()  # whatever it starts ends with it: SIGTERM, SIGHUP, Ctrl-C, any exit
    try:
        module = importlib.import_module(entry[0])
        result = module.main(args[1:])
    except ModuleNotFoundError as e:
        # Tooling imports its extras lazily: say which extra to install instead of a traceback.
        extra = EXTRAS.get(args[0])
        if extra is None or (e.name or "").split(".")[0] not in EXTRA_PACKAGES:
            raise
        print(f"kvgate {args[0]}: needs {e.name!r}; pip install 'kvgate[{extra}]'", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
