"""Listen ports and counts on the command lines are checked by argparse: out of range is exit 2 with one
line naming the flag (review s18-qa L5: ``--port 70000`` listened on 4464, ``kvgate epp --metrics-port -1``
and ``--max-concurrent-streams 0`` ended in tracebacks)."""

from __future__ import annotations

import pytest

from kvgate.extproc.cli import main as epp_main
from kvgate.gateway.cli import main as serve_main

SERVE = ["--endpoints", "127.0.0.1:9", "--model", "m"]
EPP = ["--endpoints", "127.0.0.1:9", "--plaintext"]


@pytest.mark.parametrize(
    ("main", "argv", "flag"),
    [
        (serve_main, [*SERVE, "--port", "70000"], "--port"),
        (serve_main, [*SERVE, "--admin-port", "-1"], "--admin-port"),
        (epp_main, [*EPP, "--port", "70000"], "--port"),
        (epp_main, [*EPP, "--port", "-5"], "--port"),
        (epp_main, [*EPP, "--metrics-port", "-1"], "--metrics-port"),
        (epp_main, [*EPP, "--grpc-health-port", "65536"], "--grpc-health-port"),
        (epp_main, [*EPP, "--max-concurrent-streams", "0"], "--max-concurrent-streams"),
        (epp_main, [*EPP, "--port", "eighty"], "--port"),
    ],
)
def test_out_of_range_flags_exit_2_naming_the_flag(main, argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert flag in err[-1], err  # argparse's one error line, after the usage
    assert "Traceback" not in "\n".join(err)
