"""kvgate: an LLM-aware inference gateway and Endpoint Picker."""

__version__ = "0.1.0"
