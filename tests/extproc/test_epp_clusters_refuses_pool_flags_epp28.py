"""Session 27's closing note: ``kvgate epp --clusters`` (the hub EPP) took a pool EPP's flags and did nothing
with them: ``--endpoints``, ``--model``, ``--kube-server`` and the rest (its candidates are the clusters
file's clusters; ``kvgate serve --clusters`` refuses its own such flags). Each is refused now, argparse's way:
exit 2, one line naming the flag. ``--max-buffered-bytes`` was taken and ignored too (the budget stayed
1 GiB): it applies now, checked as a pool EPP's, and so is ``--stream-idle-timeout`` (0 was taken).
The refusals and the budget fail on main 2a9ab840 (it served)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import kvgate.extproc.cli as epp_cli

# Every option the hub EPP does not use, with a value where it takes one.
REFUSED = [
    ["--endpoints", "127.0.0.1:9"],
    ["--endpoint-label", "kvgate.io/gpu=H100"],
    ["--model", "m"],
    ["--engine", "vllm"],
    ["--adapter", "lora-a"],
    ["--pass-priority"],
    ["--session-header", "x-session"],
    ["--policy", "round-robin"],
    ["--config-file", "epc.yaml"],
    ["--config-text", "kind: EndpointPickerConfig"],
    ["--scrape-interval", "1"],
    ["--enable-conformance-hooks"],
    ["--shared-config"],
    ["--kube-server", "http://127.0.0.1:9"],
    ["--kubeconfig", "kubeconfig.yaml"],
    ["--ha-enable-leader-election"],
    ["--ha-lease-name", "lease"],
    ["--ha-lease-duration", "15"],  # (its default, given: still refused)
    ["--ha-renew-deadline", "10"],
    ["--ha-retry-period", "2"],
]


@pytest.fixture
def clusters(tmp_path: Path) -> str:
    f = tmp_path / "clusters.yaml"
    dead = "{name: a, aggregate: 'http://127.0.0.1:9/v1/pool/aggregate', gateway: '127.0.0.1:9'}"
    f.write_text(f"clusters:\n- {dead}\n")
    return str(f)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """``_serve`` replaced: (args, ctx) the hub EPP would serve with, nothing bound."""
    out: list[tuple[Any, Any]] = []

    async def fake(args: Any, _store: Any, ctx: Any, *_a: Any, **_k: Any) -> None:
        out.append((args, ctx))

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return out


@pytest.mark.parametrize("given", REFUSED, ids=[g[0] for g in REFUSED])
def test_a_pool_epp_s_flag_with_clusters_is_refused_naming_it(
    clusters: str, served: list[Any], capsys: pytest.CaptureFixture[str], given: list[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        rc = epp_cli.main(["--clusters", clusters, "--plaintext", *given])
        pytest.fail(f"kvgate epp --clusters took {given} (exit {rc}, served {bool(served)})")
    err = capsys.readouterr().err
    assert e.value.code == 2 and not served, err
    assert f"kvgate epp: error: {given[0]}: not with --clusters" in err, err
    assert len(err.strip().splitlines()) == 1, err  # (one line, no usage block)


def test_the_flags_the_hub_epp_takes_still_serve(
    clusters: str, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # (the last two: the reference EPP's own flags, ignored with a warning as without --clusters)
    argv = ["--clusters", clusters, "--plaintext", "--secure-serving", "false", "--host", "127.0.0.1",
            "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--tls-hosts", "h",
            "--max-concurrent-streams", "5", "--stream-idle-timeout", "9", "--drain-timeout", "3",
            "--cluster-policy", "round-robin", "--cluster-policy-seed", "1", "--model-series-grace", "60",
            "--kube-stale-after", "300", "--log-level", "warning",
            "--v", "3", "--zap-encoder", "json"]  # fmt: skip
    assert epp_cli.main(argv) == 0, capsys.readouterr().err
    args, _ctx = served[0]
    assert (args.drain_timeout, args.max_concurrent_streams, args.stream_idle_timeout) == (3.0, 5, 9.0)


def test_the_hub_epp_applies_max_buffered_bytes(clusters: str, served: list[Any]) -> None:
    assert epp_cli.main(["--clusters", clusters, "--plaintext", "--max-buffered-bytes", str(2 << 30)]) == 0
    assert served[0][1].budget.limit == 2 << 30  # (main: 1 GiB whatever the flag)
    served.clear()
    assert epp_cli.main(["--clusters", clusters, "--plaintext"]) == 0
    assert served[0][1].budget.limit == 1 << 30  # (the default, as a pool EPP's)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            ["--max-buffered-bytes", "1024"],
            "--max-buffered-bytes must be >= the body cap (67108864), got 1024",
        ),
        (["--max-buffered-bytes", "0"], "--max-buffered-bytes and --stream-idle-timeout must be > 0"),
        (["--stream-idle-timeout", "0"], "--max-buffered-bytes and --stream-idle-timeout must be > 0"),
    ],
)
def test_the_hub_epp_checks_its_stream_limits_as_a_pool_epp(
    clusters: str, served: list[Any], capsys: pytest.CaptureFixture[str], given: list[str], said: str
) -> None:
    rc = epp_cli.main(["--clusters", clusters, "--plaintext", *given])
    err = capsys.readouterr().err
    assert rc == 2 and not served, err
    assert f"kvgate epp: {said}" in err, err
