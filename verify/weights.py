"""Dequantized float weights of one layer at a time, from any checkpoint reader."""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.layouts import CheckpointReader
from converter.spec import TensorSpec
from converter.tensors import dense

__all__ = ["LayerWeights", "dense", "global_weights", "layer_specs", "load_layer"]

LayerWeights = dict[str, Any]


def layer_specs(reader: CheckpointReader, layer: int) -> dict[str, TensorSpec]:
    """The specs of one decoder layer, by role."""
    return {s.role: s for s in reader.specs if s.layer == layer}


def load_layer(reader: CheckpointReader, layer: int) -> LayerWeights:
    """The raw values of one layer by role (quantized values stay quantized until used)."""
    return {role: reader.read(spec) for role, spec in layer_specs(reader, layer).items()}


def global_weights(reader: CheckpointReader) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [vocab, emb], final norm scale [emb]) as float32."""
    by_role = {s.role: s for s in reader.specs if s.layer is None}
    return dense(reader.read(by_role["embed"])), dense(reader.read(by_role["final_norm"]))
