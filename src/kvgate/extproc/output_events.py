"""A stream's output counted from its events, for the latency model when no ``usage`` comes.

``kvgate serve`` adds ``stream_options.include_usage`` to every stream (and strips the chunk), so it
always learns decode time (TPOT, the Director's per-endpoint pace, the mean decode length) from
``usage.completion_tokens``. ``kvgate epp`` does not change the request, and a client that does not ask
for the usage chunk (the OpenAI SDK's default) gets none: the EPP then counts the stream's output
events instead (review s23-qa F1). vLLM writes one chunk per choice per engine step
(``stream_interval`` 1, its default), so each chat / completions event with a choice, from the first
output on, is one token; a server that groups tokens into fewer events is undercounted (its decode
learned slower than it is). Typed streams (Responses, Anthropic) end with their usage: not counted.
"""

from __future__ import annotations

from kvgate.openai.sse import SSEScanner
from kvgate.scheduling.types import Usage

# A chunk with at least one choice (the usage-only chunk's list is empty), as vLLM / orjson / pydantic
# write it, and as Python's json module does.
_CHOICE = (b'"choices":[{', b'"choices": [{')


class CountingScanner(SSEScanner):
    """``SSEScanner`` that also counts the output events (from the first one with output: the role-only
    opening chunk is none). The count costs a substring test per event, no second parse."""

    def __init__(self, rewrite_to: str | None = None) -> None:
        super().__init__(rewrite_to)
        self.output_events = 0
        self._counting = False

    def _line(self, line: bytes) -> bytes:
        if not self.saw_output:
            out = super()._line(line)
            if self.saw_output:
                # A typed stream's first output (no choices) starts no count: its events are no tokens.
                self._counting = _CHOICE[0] in line or _CHOICE[1] in line
                self.output_events = int(self._counting)
            return out
        if self._counting and line.startswith(b"data:") and (_CHOICE[0] in line or _CHOICE[1] in line):
            self.output_events += 1
        return super()._line(line)

    def learned_usage(self) -> Usage | None:
        """The stream's usage; without one, its output events as its completion tokens (None: none)."""
        if self.usage is not None:
            return self.usage
        return Usage(completion_tokens=self.output_events) if self.output_events else None
