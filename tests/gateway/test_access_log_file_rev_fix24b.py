"""Review s24-rev-fix24b F3: ``--access-log-file PATH`` alone turns the access log on (unless
``--no-access-log``); a bad path is one named start-up error (exit 2), also under ``--workers``."""

from __future__ import annotations

from pathlib import Path


def test_access_log_file_alone_turns_the_log_on(tmp_path: Path) -> None:
    from kvgate.gateway.cli import _parser, build_config

    base = ["--endpoints", "127.0.0.1:1", "--model", "m", "--access-log-file", str(tmp_path / "a.log")]
    cfg = build_config(_parser().parse_args(base))
    assert (cfg.access_log, cfg.access_log_file) == (True, str(tmp_path / "a.log"))
    assert build_config(_parser().parse_args([*base, "--no-access-log"])).access_log is False


def test_a_bad_access_log_file_is_one_named_error_before_any_worker(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = str(tmp_path / "no-such-dir" / "a.log")
    argv = [sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", "127.0.0.1:1", "--model", "m",
            "--port", "0", "--admin-port", "0", "--workers", "2", "--access-log",
            "--access-log-file", bad]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-1500:]
    assert "--access-log-file" in done.stderr and bad in done.stderr, done.stderr[-1500:]
    assert "Traceback" not in done.stderr and "worker" not in done.stderr, done.stderr[-1500:]
