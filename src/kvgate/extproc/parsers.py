"""Which request parser reads a path: the config's parser chain (``EndpointPickerConfig.parsers``).

As llm-d-router's ParserRegistry: a parser claiming paths takes those, and a parser claiming none (the
``passthrough-parser``) takes every other path. kvgate's ``openai-parser`` claims the paths whose API kvgate
reads, each as a path suffix as llm-d-router's parsers claim theirs (``kind_for_suffix``:
``/openai/v1/chat/completions`` is a chat completion, rev-b34 F7); with no fallback after it, it reads
any other path too (a JSON body naming its ``model``: routed as before), where llm-d-router's answers 400.
The default chain is ``openai-parser`` alone, which refuses a body it cannot read (400), as the
reference's default parser does (qa34a F2). A passthrough request is picked without reading its body: no
prompt, no model (the ``x-gateway-model-name`` header's, if any), no usage read from its answer (qa34a F3).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.config.picker import FALLBACK_PARSERS
from kvgate.openai.request import OTHER, kind_for_suffix

OPENAI = "openai-parser"


class ParserRoutes:
    """``passthrough(path)``: whether the fallback parser, not ``openai-parser``, reads ``path``."""

    __slots__ = ("_claims", "_fallback")

    def __init__(self, chain: Sequence[str] = ()) -> None:
        at = _fallback_at(chain)
        self._claims = OPENAI in chain[:at]  # (an openai-parser after the fallback is never reached)
        self._fallback = at < len(chain)

    def passthrough(self, path: str) -> bool:
        if not self._fallback:
            return False
        return not (self._claims and kind_for_suffix(path) != OTHER)


def _fallback_at(chain: Sequence[str]) -> int:
    return next((i for i, t in enumerate(chain) if t in FALLBACK_PARSERS), len(chain))


OPENAI_ONLY = ParserRoutes()
