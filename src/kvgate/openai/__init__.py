"""OpenAI API on the wire, shared by the front doors (``kvgate serve``, ``kvgate epp`` and ``kvgate serve
--clusters``).

- ``kvgate.openai.request``: parse a request body once into one ``InferenceRequest`` (validation and
  400s naming the parameter live here, so the two doors cannot disagree on what a body means);
- ``kvgate.openai.protocol``: control-header names, the ``usage`` object, OpenAI error bodies;
- ``kvgate.openai.sse``: incremental ``text/event-stream`` scanning for usage and the first token;
- ``kvgate.openai.usage``: a response's usage from a whole body or a stream's bounded tail;
- ``kvgate.openai.requeststats``: the per-request metric families the doors share;
- ``kvgate.openai.labels``: bounded model label values for those metrics.

Imports only ``kvgate.scheduling.types`` and ``kvgate.scheduling.fastmetrics`` (HTTP-free) and
prometheus_client, nothing from any door.
"""
