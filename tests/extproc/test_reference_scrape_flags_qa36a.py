"""qa36a F6 / F13: ``kvgate epp`` applies the reference EPP's scrape flags (GIE ``options.go``):
``--model-server-metrics-port`` / ``-path`` / ``-scheme`` / ``-https-insecure-skip-verify``,
``--refresh-metrics-interval`` (Go durations) and ``--metrics-staleness-threshold`` (the pool gauges'
freshness bound). Before, each was "logged once and ignored": a pod whose metrics live on another port was
scraped on its inference port (404s), its metrics never read. A config's ``metrics-data-source`` key wins
over its flag, and a flag it overrides (``--scrape-interval`` under the source's ``interval`` too: F13)
is one WARNING naming both.

The live test runs the real ``kvgate epp`` (a subprocess, ports 0) on two loopback HTTP servers: the
endpoint's inference port H (404 for everything) and its metrics port S (a vLLM page on ``/custom``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from prometheus_client import REGISTRY

from kvgate.config.director import build_director
from kvgate.datalayer.scrape_source import ScrapeSource
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.extproc.cli import main as epp_main
from kvgate.extproc.cli import parser as epp_parser
from kvgate.extproc.scrapeflags import flag_source, merge
from kvgate.extproc.upstream_flags import go_duration

PAGE = b"vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0.1\n"
DEADLINE_S = 30.0


class _Server:
    """A loopback HTTP server on port 0 that records each GET's path; ``page``: None answers 404."""

    def __init__(self, page: bytes | None, path: str = "") -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                ok = page is not None and self.path.startswith(path)
                body = page if ok and page is not None else b"not found\n"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    inference, metrics = _Server(None), _Server(PAGE, "/custom")
    yield inference, metrics
    inference.close()
    metrics.close()


def _config(interval: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": [
                {"type": "queue-scorer"},
                {"type": "metrics-data-source", "parameters": {"interval": interval}},
            ],
            "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        }
    )


def test_the_metrics_port_and_path_flags_are_scraped(servers: tuple[_Server, _Server]) -> None:
    inference, metrics = servers
    argv = [
        sys.executable, "-m", "kvgate.cli", "epp", "--endpoints", f"127.0.0.1:{inference.port}",
        "--model", "m1", "--plaintext", "--host", "127.0.0.1", "--port", "0", "--grpc-health-port", "0",
        "--metrics-port", "0", "--model-server-metrics-port", str(metrics.port),
        "--model-server-metrics-path", "/custom", "--scrape-interval", "2",
        "--config-text", _config("50ms"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "kvgate epp ready" in line:
                ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not ready.is_set() and proc.poll() is None and time.monotonic() < deadline:
            ready.wait(0.1)
        assert ready.is_set(), "".join(seen)[-2000:]
        # The state: S scraped a few times, or H asked for a page at all (the flags ignored).
        deadline = time.monotonic() + DEADLINE_S
        while len(metrics.paths) < 3 and not inference.paths and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
    out = "".join(seen)
    assert inference.paths == [], f"the inference port was scraped: {inference.paths[:3]}\n{out[-1500:]}"
    assert len(metrics.paths) >= 3 and all(p.startswith("/custom") for p in metrics.paths), metrics.paths
    assert "ignoring the reference EPP's arguments" not in out
    # F13: the config's interval wins over the explicit flag, and that is said
    [line] = [x for x in out.splitlines() if "--scrape-interval" in x and "not applied" in x]
    assert "plugins[1].parameters.interval" in line and "WARNING" in line


def test_go_durations() -> None:
    assert go_duration("50ms") == pytest.approx(0.05)
    assert go_duration("1m0s") == 60.0 and go_duration("1h0m0s") == 3600.0
    assert go_duration("1m30s") == 90.0 and go_duration("2s") == 2.0
    for bad in ("0", "-1s", "5", "2s3", "", "abc", "1e3s"):
        with pytest.raises(argparse.ArgumentTypeError):
            go_duration(bad)


def test_the_flags_parse_with_the_reference_spellings() -> None:
    argv = ["--refresh-metrics-interval", "100ms", "--metrics-staleness-threshold", "2s",
            "--model-server-metrics-scheme", "https", "--model-server-metrics-port", "9400",
            "--model-server-metrics-https-insecure-skip-verify=false"]  # fmt: skip
    args = epp_parser().parse_args(argv)
    assert args.refresh_metrics_interval == pytest.approx(0.1) and args.metrics_staleness_threshold == 2.0
    src = flag_source(args)
    assert src is not None and (src.port, src.scheme) == (9400, "https")
    assert src.tls is not None and src.tls.check_hostname  # (skip-verify false: verified)
    bare = epp_parser().parse_args(["--model-server-metrics-https-insecure-skip-verify"])
    assert bare.model_server_metrics_https_insecure_skip_verify is True  # (a Go bool flag alone)
    assert flag_source(epp_parser().parse_args(["--model-server-metrics-port", "0"])) is None  # (own port)


def test_a_config_key_wins_over_its_flag_and_says_so() -> None:
    argv = ["--model-server-metrics-port", "9400", "--model-server-metrics-path", "/m"]
    args = epp_parser().parse_args(argv)
    given = {"model_server_metrics_port": "--model-server-metrics-port",
             "model_server_metrics_path": "--model-server-metrics-path"}  # fmt: skip
    config = ScrapeSource(port=9500, origin="plugins[1].parameters")
    src, warnings = merge(config, flag_source(args), given, None, args)
    assert src is not None and (src.port, src.path) == (9500, "/m")
    [w] = warnings
    assert w.startswith("--model-server-metrics-port 9400 not applied") and "plugins[1].parameters.port" in w
    src, warnings = merge(None, flag_source(args), given, None, args)
    assert src is not None and (src.port, src.path) == (9400, "/m") and warnings == []


def test_two_spellings_of_the_interval_and_a_bad_path_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--endpoints", "127.0.0.1:9", "--model", "m", "--plaintext", "--port", "0",
            "--grpc-health-port", "0", "--metrics-port", "0"]  # fmt: skip
    assert epp_main([*base, "--scrape-interval", "1", "--refresh-metrics-interval", "1s"]) == 2
    assert "--refresh-metrics-interval" in capsys.readouterr().err
    assert epp_main([*base, "--model-server-metrics-path", "metrics"]) == 2
    assert "--model-server-metrics-path: must start with '/'" in capsys.readouterr().err


def test_metrics_staleness_threshold_bounds_the_pool_gauges() -> None:
    now = [1000.0]
    store = EndpointStore()
    store.sync([make_endpoint(a, pool="qa36a-f6") for a in ("10.236.0.1:8000", "10.236.0.2:8000")])
    for ep, age in zip(store.all(), (0.1, 1.0), strict=True):
        ep.metrics.updated_at = ep.answered_at = now[0] - age
    director = build_director("round-robin", store, clock=lambda: now[0], seed=0)

    def ready() -> float | None:
        director.update_pool_metrics("qa36a-f6")
        return REGISTRY.get_sample_value("inference_pool_ready_pods", {"name": "qa36a-f6"})

    assert ready() == 2.0  # (not given: the health model's count, as before)
    director.gauge_staleness_s = 0.5
    assert ready() == 1.0
