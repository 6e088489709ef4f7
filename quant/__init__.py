"""Quantization schemes, packing formats, and their CPU reference and Triton kernels."""
