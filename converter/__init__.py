"""grok1-toolchain: read, write and convert Grok-1 checkpoints without JAX or unpickling."""

__version__ = "0.1.0"
