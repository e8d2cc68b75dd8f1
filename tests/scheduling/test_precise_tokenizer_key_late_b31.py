"""late-b31: an unreadable ``tokenizer`` on ``precise-prefix-cache-scorer`` was a config error naming
``plugins[0].parameters``, not the key (``plugins[0].parameters.tokenizer``), through ``kvgate serve
--config`` and ``kvgate epp --config`` alike. Config errors name the exact key. Fails on 674e1c56."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvgate.scheduling.framework import ConfigError, Params, PluginHandle
from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer

KEY = "plugins[0].parameters.tokenizer"


def _tokenizers(tmp_path: Path) -> dict[str, str]:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    return {"missing": str(tmp_path / "no-such-tokenizer.json"), "unparsable": str(bad)}


@pytest.mark.parametrize("which", ["missing", "unparsable"])
def test_the_error_names_the_tokenizer_key(tmp_path: Path, which: str) -> None:
    path = _tokenizers(tmp_path)[which]
    params = Params({"tokenizer": path, "indexName": "late-b31"}, "plugins[0].parameters")
    with pytest.raises(ConfigError) as e:
        PrecisePrefixCacheScorer.create("precise-prefix-cache-scorer", params, PluginHandle())
    assert e.value.key == KEY and path in str(e.value), str(e.value)


def _config(tmp_path: Path, tokenizer: str) -> str:
    scorer = {
        "type": "precise-prefix-cache-scorer",
        "parameters": {"tokenizer": tokenizer, "indexName": "b31"},
    }
    picker = {
        "plugins": [scorer],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "precise-prefix-cache-scorer"}]}
        ],
    }
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"], "endpointPickerConfig": picker}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool]}))
    return str(path)


COMMANDS = {
    "serve": ["serve", "--port", "0", "--admin-port", "0"],
    "epp": ["epp", "--plaintext", "--port", "0", "--grpc-health-port", "0", "--metrics-port", "0"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("which", ["missing", "unparsable"])
def test_the_process_exits_2_naming_the_key(tmp_path: Path, command: str, which: str) -> None:
    tokenizer = _tokenizers(tmp_path)[which]
    argv = [sys.executable, "-m", "kvgate.cli", *COMMANDS[command], "--config", _config(tmp_path, tokenizer)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kvgate {command} started with an unreadable tokenizer: {e.stderr!r}")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-600:])
    assert f"{KEY}: " in proc.stderr and tokenizer in proc.stderr, proc.stderr[-600:]
