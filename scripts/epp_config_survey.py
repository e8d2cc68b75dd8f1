"""Load each ``EndpointPickerConfig`` sample (``scripts/epp_config_samples/*.yaml``: the reference's and
llm-d's, as published) through kvgate's loader and ``build_director``, and list what is refused or warned.

A refused plugin type is dropped (with its references) and the sample loaded again, so every refusal of a
sample is listed, not only the first. Usage: ``PYTHONPATH=src python scripts/epp_config_survey.py
[sample dir]``. docs/scheduling.md's compatibility table is what it printed (cfg29)."""

from __future__ import annotations

import copy
import logging
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError

SAMPLES = Path(__file__).with_name("epp_config_samples")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _drop(doc: dict[str, Any], name: str) -> None:
    doc["plugins"] = [p for p in doc.get("plugins", []) if (p.get("name") or p.get("type")) != name]
    for prof in doc.get("schedulingProfiles") or []:
        prof["plugins"] = [r for r in prof.get("plugins", []) if r.get("pluginRef") != name]
    for key in ("dataLayer", "data"):
        if isinstance(dl := doc.get(key), dict):
            dl["sources"] = [s for s in dl.get("sources", []) if s.get("pluginRef") != name]
            for s in dl["sources"]:
                s["extractors"] = [e for e in s.get("extractors", []) if e.get("pluginRef") != name]


def survey(doc: dict[str, Any]) -> list[str]:
    """``ERR``/``WARN`` lines for one sample (empty: it loads as written)."""
    grab = _Lines()
    logging.getLogger().addHandler(grab)
    out: list[str] = []
    try:
        for _ in range(len(doc.get("plugins", [])) + 2):
            grab.lines.clear()
            try:
                cfg = parse_config(copy.deepcopy(doc))
                build_director(
                    cfg, EndpointStore([make_endpoint("10.0.0.1:8000")]), clock=lambda: 0.0, seed=0
                )
                return out + [f"WARN {line}" for line in grab.lines]
            except ConfigError as e:
                msg = str(e)
                out.append(f"ERR  {msg}")
                m = re.match(r"plugins\[(\d+)\]\.type: unknown plugin type", msg)
                if not m:
                    return out
                p = doc["plugins"][int(m.group(1))]
                _drop(doc, p.get("name") or p.get("type"))
        return out
    finally:
        logging.getLogger().removeHandler(grab)


def main(argv: list[str]) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    for path in sorted(Path(argv[0] if argv else SAMPLES).glob("*.yaml")):
        lines = survey(yaml.safe_load(path.read_text()))
        print(f"== {path.name}: {'loads' if not lines else ''}")
        for line in lines:
            print("   ", line[:200])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
