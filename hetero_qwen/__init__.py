"""hetero-qwen: Qwen3.5/3.6 hybrid models on one consumer GPU plus host RAM."""

__version__ = "0.1.0"
