"""Kernels: 8-bit attention (a Triton kernel on CUDA, a simulation elsewhere)."""
