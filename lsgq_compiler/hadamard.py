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
