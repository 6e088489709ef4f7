"""The model as a description: an `Architecture` (config type, parameter roles, the tensor
names of every layout) per model family, the parameter tree it makes for a config, and the
stream of named tensors every reader yields. Grok-1 is the one declared today."""

from converter.model.architecture import ARCHITECTURES, Architecture, architecture
from converter.model.grok1 import GROK1

__all__ = ["ARCHITECTURES", "GROK1", "Architecture", "architecture"]
