"""pyproject.toml's license is a PEP 639 SPDX expression, built by a setuptools that reads it.

setuptools warned at every install that the `{ text = "Apache-2.0" }` table form stops building after
2027-02-18; the string form needs setuptools >= 77 in [build-system]. `make check-install` builds it for real.
"""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string_and_the_backend_reads_it() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    pins = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert len(pins) == 1, data["build-system"]["requires"]
    m = re.fullmatch(r"setuptools==(\d+)\.(\d+)\.(\d+)", pins[0])
    assert m is not None, f"setuptools is pinned exactly, as every dependency: {pins[0]}"
    assert int(m.group(1)) >= 77, pins[0]
