"""Kernels: 8-bit attention (a Triton kernel on CUDA, a simulation elsewhere; an AVX-512 VNNI
C++ kernel for the CPU and onnxruntime, in :mod:`.cpu_attention`)."""
