"""Readers and writers over a stream of canonically named tensors, one module per layout."""
