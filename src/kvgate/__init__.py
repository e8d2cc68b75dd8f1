"""kvgate: an LLM-aware inference gateway and Endpoint Picker."""

import os as _os

__version__ = "0.1.0"

# Only a compiled build (`make compiled`) leaves this manifest; pure Python pays one stat for it.
_MANIFEST = _os.path.join(_os.path.dirname(__file__), "_compiled_manifest.json")
if _os.path.exists(_MANIFEST):
    from kvgate._compiled_check import check as _check

    _check(_MANIFEST)
