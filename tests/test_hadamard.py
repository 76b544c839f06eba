"""Block Walsh-Hadamard rotation: the butterfly form (fake-quant models, CPU deploy) and the
matmul form (deploy layers on GPUs) are the same map."""
from __future__ import annotations

import math

import pytest
import torch

from lsgq_compiler.hadamard import fwht, random_signs, rotate, rotate_matmul, sylvester, unrotate


@pytest.mark.parametrize("k,block", [(3072, 1024), (1536, 512), (384, 128), (256, 256), (96, 32)])
def test_matmul_form_is_the_butterfly_map(k: int, block: int) -> None:
    x = torch.randn(3, 5, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    s = random_signs(k, seed=7).double()
    ref = rotate(x, s, block)
    assert torch.allclose(rotate_matmul(x, s, block), ref, rtol=0, atol=1e-12)  # exact up to float64 rounding
    assert torch.allclose(unrotate(ref, s, block), x, rtol=0, atol=1e-12)
    # bf16 (the GPU path's dtype): only rounding apart, >= 45 dB SQNR (bf16 has 8 significant bits, ~48 dB)
    out = rotate_matmul(x.to(torch.bfloat16), s.to(torch.bfloat16), block).double()
    assert 10 * math.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()) >= 45.0


def test_fwht_is_the_orthonormal_sylvester_matrix() -> None:
    x = torch.randn(4, 64, dtype=torch.float64)
    assert torch.allclose(fwht(x, 64), x @ sylvester(64, dtype=torch.float64) / 8.0, rtol=0, atol=1e-12)
    h = sylvester(16)
    assert torch.equal(h @ h.t(), 16 * torch.eye(16))
