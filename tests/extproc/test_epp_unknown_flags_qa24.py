"""qa24 F3: ``kvgate epp`` refuses an option that is neither its own nor one of the reference EPP's.

Before, every unknown option was logged with one WARNING and ignored (``parse_known_args``, so that a
Deployment written for the reference EPP, ``--v``, ``--zap-*``, ... starts): a misspelt option of kvgate's
own was ignored too, ``--plaintxt`` served TLS (a plaintext Envoy then fails every request),
``--ha-enable-leader-elction`` ran active-active, and docs/kubernetes.md named ``kvgate epp --pool-name
--leader-elect``, a flag that does not exist. Now only the reference EPP's flags are ignored (with their
values), anything else exits 2 naming it. The reference flags still start: ``test_cli.py``'s
``--v 3 --zap-encoder json``. The real ``kvgate epp`` on ports 0 (its own: no fixed port another process may
hold), killed after."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.extproc.cli import parser as epp_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("typo", ["--plaintxt", "--ha-enable-leader-elction", "--leader-elect"])
def test_a_misspelt_kvgate_epp_option_is_refused(typo: str) -> None:
    argv = [
        sys.executable, "-m", "kvgate.cli", "epp", "--endpoints", "127.0.0.1:9", "--model", "m",
        "--host", "127.0.0.1", "--port", "0", "--grpc-health-port", "0", "--metrics-port", "0",
        typo,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at its exit; "ready" means it took the typo and serves
            seen.append(line)
            if "kvgate epp ready" in line:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(timeout=30)
    assert not any("kvgate epp ready" in x for x in seen), f"{typo}: taken, serving: {''.join(seen)[-400:]}"
    assert rc == 2, rc
    assert typo in "".join(seen)


def test_reference_flags_and_their_values_are_ignored_the_rest_refused() -> None:
    from kvgate.extproc.upstream_flags import split_unknown  # (new in qa24 F3)

    unknown = ["--v", "3", "-v=2", "--zap-encoder", "json", "--enable-pprof=false", "--tracing=false",
               "--plaintxt", "stray", "--endpoint-selector", "app=vllm"]  # fmt: skip
    ignored, refused = split_unknown(unknown)
    assert refused == ["--plaintxt", "stray"]
    assert ignored == [w for w in unknown if w not in refused]


def test_docs_name_only_kvgate_epp_options_that_exist() -> None:
    known = {o for a in epp_parser()._actions for o in a.option_strings}
    used: set[str] = set()
    for f in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for span in re.findall(r"`(kvgate epp\b[^`]*)`", f.read_text()):
            used.update(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", span))
    assert "--pool-name" in used, "the doc lines this checks moved"
    assert used <= known, sorted(used - known)
