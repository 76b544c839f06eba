"""Fast (block-diagonal) Walsh-Hadamard rotation of the last dimension.

For ``K = 2^a * m`` the rotation is block-diagonal with ``m`` blocks of the
``2^a``-point Walsh-Hadamard matrix (orthonormal), preceded by seeded random signs:
``R = diag(d) . blockdiag(H_b, ..., H_b)``. ``x -> x R`` runs in ``O(K log b)`` by
butterflies, never as a dense matmul. Applying the same map to the rows of ``W: (N, K)``
keeps ``(x R)(W R)^T = x W^T`` exactly (R is orthogonal).
"""
from __future__ import annotations

import torch


def hadamard_block_size(k: int, max_block: int | None = None) -> int:
    """Largest power of two dividing ``k`` (capped at ``max_block``)."""
    b = k & -k
    if max_block is not None:
        while b > max_block:
            b //= 2
    return b


def random_signs(k: int, seed: int) -> torch.Tensor:
    """``(k,)`` of +-1, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (k,), generator=g).float() * 2 - 1


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform on contiguous blocks of the last dim.

    Args:
        x: ``(..., K)`` with ``K % block == 0``, ``block`` a power of two.
    Returns:
        ``(..., K)``.
    """
    k = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(-1, k // block, block)
    h = 1
    while h < block:
        y = y.reshape(-1, k // block, block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return (y.reshape(*lead, k)) * (block ** -0.5)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``x R`` with ``R = diag(signs) . blockdiag(H_block)``. x: ``(..., K)``."""
    return fwht(x * signs.to(device=x.device, dtype=x.dtype), block)


def unrotate(y: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``y R^T`` (the inverse of :func:`rotate`). y: ``(..., K)``."""
    return fwht(y, block) * signs.to(device=y.device, dtype=y.dtype)


_SYLVESTER: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def sylvester(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The unnormalised ``(n, n)`` Sylvester Hadamard matrix of +-1 (``n`` a power of two), cached
    per device and dtype: the matrix :func:`fwht` applies (times ``n ** -0.5``)."""
    key = (n, str(device), dtype)
    if key not in _SYLVESTER:
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _SYLVESTER[key] = h.to(device=device, dtype=dtype)
    return _SYLVESTER[key]


def _fwht_rows(y: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform over dim -2 of ``y: (..., a, b)`` (``a`` a power of two):
    ``H_a @ y`` as ``log2(a)`` add/subtract stages, the same pairing as :func:`fwht`."""
    lead, a, b = y.shape[:-2], y.shape[-2], y.shape[-1]
    h = 1
    while h < a:
        y = y.reshape(*lead, a // (2 * h), 2, h, b)
        u, v = y[..., 0, :, :], y[..., 1, :, :]
        y = torch.stack((u + v, u - v), dim=-3)
        h *= 2
    return y.reshape(*lead, a, b)


def rotate_matmul(x: torch.Tensor, signs: torch.Tensor, block: int, inner: int = 128) -> torch.Tensor:
    """:func:`rotate` for GPUs: ``H_block = H_a (x) H_b`` (Sylvester matrices are Kronecker
    products), so each block of ``x``, viewed as an ``(a, b)`` matrix ``X``, becomes ``H_a X H_b``:
    ``X H_b`` as one tensor-core matmul with the +-1 matrix (exact in bf16 up to the output's
    rounding), then ``H_a`` over the ``a = block / b`` rows as ``log2(a)`` add/subtract stages
    (a few elementwise passes, which ``torch.compile`` fuses into one) instead of ``log2(block)``
    butterfly passes. (``H_a`` as a second matmul, a batched ``(a, a) @ (a, b)`` product of tiny
    matrices, is the likely cause of the deployed CogVideoX1.5-5B's 305 ms of GEMM time per call on
    the H200 against 176 ms for layers rotated in blocks of 128 by one matmul; the add/subtract
    form is not yet measured there.) Same map as :func:`rotate` up to rounding (exact in float64).

    Args:
        x: ``(..., K)``, ``K % block == 0``.
        signs: ``(K,)`` of +-1.
        block: power of two.
        inner: ``b``, the width of the matmul (``a = block / b``).
    Returns:
        ``(..., K)`` in ``x.dtype``.
    """
    k = x.shape[-1]
    lead = x.shape[:-1]
    b = min(block, inner)
    a = block // b
    y = (x * signs.to(device=x.device, dtype=x.dtype)).reshape(-1, k // block, a, b)
    y = y @ sylvester(b, x.device, x.dtype)
    if a > 1:
        y = _fwht_rows(y)
    return (y * (block ** -0.5)).reshape(*lead, k)
