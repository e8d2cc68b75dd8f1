"""Scheduling plugins. Every module here is imported by ``kvgate.scheduling.registry.discover()`` and
registers its plugin types with ``@register("type-name")``; add a module, not an import line."""
