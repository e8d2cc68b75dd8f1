"""Configuration loading (``picker``: the EndpointPickerConfig YAML of the reference EPP)."""

from kvgate.config.picker import ConfigError, EndpointPickerConfig, load_config, parse_config

__all__ = ["ConfigError", "EndpointPickerConfig", "load_config", "parse_config"]
