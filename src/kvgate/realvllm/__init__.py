"""Real vLLM (CPU) in the loop: the harness (``harness``), routing experiments (``bench``) and the CLI."""
