"""Fake-quantization primitives against a float64 reference (numpy loops)."""
import numpy as np
import pytest
import torch

from lsgq_compiler.quant import compute_qparams, fake_quantize, qrange, quantize_dequantize, quantize_to_int


def ref_fq(x: np.ndarray, bits: int, sym: bool, gran: str, gs: int | None) -> np.ndarray:
    """float64 reference: one scale per group of elements, min/max, round half to even."""
    qmin, qmax = qrange(bits, sym)
    out = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    res = out.reshape(-1, x.shape[-1])

    def q(v):
        if sym:
            s = max(np.abs(v).max() / qmax, 1e-8)
            z = 0.0
        else:
            lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
            s = max((hi - lo) / (qmax - qmin), 1e-8)
            z = np.clip(qmin - np.round(lo / s), qmin, qmax)
        return (np.clip(np.round(v / s) + z, qmin, qmax) - z) * s

    if gran == "tensor":
        return q(x.ravel()).reshape(x.shape)
    if gran in ("token", "row"):
        for i in range(rows.shape[0]):
            res[i] = q(rows[i])
    elif gran == "channel":
        for j in range(rows.shape[1]):
            res[:, j] = q(rows[:, j])
    elif gran == "group":
        for i in range(rows.shape[0]):
            for g0 in range(0, rows.shape[1], gs):
                res[i, g0:g0 + gs] = q(rows[i, g0:g0 + gs])
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "token", "channel", "group"])
def test_fake_quant_matches_float64_reference(bits, sym, gran):
    g = torch.Generator().manual_seed(bits * 10 + sym)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 3 + 0.5
    y = quantize_dequantize(x, bits, sym, gran, group_size=4 if gran == "group" else None)
    ref = ref_fq(x.numpy(), bits, sym, gran, 4)
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=1e-12)
    # the number of distinct levels per scale group never exceeds 2^bits
    if gran == "tensor":
        assert len(np.unique(y.numpy())) <= 2**bits


def test_error_shrinks_with_bits():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    errs = [(quantize_dequantize(x, b, True, "token") - x).pow(2).mean().item() for b in (2, 4, 6, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < errs[0] / 1000


def test_straight_through_gradient():
    x = torch.randn(4, 8, requires_grad=True)
    scale, zero = compute_qparams(x, 4, True, "token")
    y = fake_quantize(x, scale, zero, 4, True, "token")
    y.sum().backward()
    # inside the range the gradient is the identity (the max element sits at the clip edge qmax)
    assert torch.all((x.grad == 1) | (x.grad == 0))
    assert (x.grad == 1).float().mean() > 0.7


def test_learnable_scale_gets_gradient():
    x = torch.randn(16, 8)
    s = torch.full((16, 1), 0.1, requires_grad=True)
    fake_quantize(x, s, torch.zeros(16, 1), 4, True, "token").pow(2).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_quantize_to_int_reconstructs():
    w = torch.randn(8, 32)
    q, s, z = quantize_to_int(w, 4, False, "group", 16)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    back = ((q.float() - z) * s).reshape(w.shape)
    torch.testing.assert_close(back, quantize_dequantize(w, 4, False, "group", 16))


def test_bad_granularity_and_group():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="granularity"):
        quantize_dequantize(x, 4, True, "block")
    with pytest.raises(ValueError, match="does not divide"):
        quantize_dequantize(x, 4, True, "group", 3)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "token", "channel", "group"])
def test_stored_codes_are_the_fake_quantized_grid(sym, gran):
    """One mechanism: dequantize(quantize_to_int(x)) is bit-identical to quantize_dequantize(x)."""
    from lsgq_compiler.quant import dequantize

    x = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(3)) * 2 - 0.3
    gs = 8 if gran == "group" else None
    q, s, z = quantize_to_int(x, 4, sym, gran, gs)
    assert torch.equal(dequantize(q.float(), s, z, x.shape), quantize_dequantize(x, 4, sym, gran, gs))
