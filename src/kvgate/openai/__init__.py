"""OpenAI API on the wire, shared by both front doors (``kvgate serve`` and ``kvgate epp``).

- ``kvgate.openai.request``: parse a request body once into one ``InferenceRequest`` (validation and
  400s naming the parameter live here, so the two doors cannot disagree on what a body means);
- ``kvgate.openai.protocol``: control-header names, the ``usage`` object, OpenAI error bodies;
- ``kvgate.openai.sse``: incremental ``text/event-stream`` scanning for usage and the first token.

Imports only ``kvgate.scheduling.types`` (the HTTP-free request type), nothing from either door.
"""
