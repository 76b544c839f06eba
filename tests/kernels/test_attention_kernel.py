"""8-bit attention: CPU reference numerics; the Triton kernel is exercised on CUDA only."""
import pytest
import torch

from lsgq_compiler.kernels.attention import int8_attention, int8_attention_reference, quantize_blocks
from lsgq_compiler.vsr.metrics import sqnr


def _qkv(n=300, d=64, seed=0, k_bias=0.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) for _ in range(3))
    return q, k + k_bias, v


def test_int8_attention_close_to_sdpa():
    q, k, v = _qkv()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = int8_attention(q, k, v, 64 ** -0.5, True)
    assert sqnr(ref, out) >= 30.0  # INT8 Q.K^T + FP16 P.V


def test_k_smoothing_helps_with_channel_bias():
    q, k, v = _qkv(k_bias=torch.linspace(-20, 20, 64))  # a strong per-channel bias in K, as in real DiTs
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    smooth = sqnr(ref, int8_attention_reference(q, k, v, smooth_k=True))
    plain = sqnr(ref, int8_attention_reference(q, k, v, smooth_k=False))
    assert smooth >= 30.0 and smooth > plain + 6.0


def test_quantize_blocks_shapes_and_range():
    x = torch.randn(2, 3, 130, 16)
    q, s = quantize_blocks(x, 64)
    assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (2, 3, 3)
    assert int(q.abs().max()) == 127


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
def test_triton_kernel_matches_reference():
    q, k, v = (t.cuda().to(torch.bfloat16) for t in _qkv(n=1000))
    out = int8_attention(q, k, v, 64 ** -0.5, True)
    ref = int8_attention_reference(q.float().cpu(), k.float().cpu(), v.float().cpu())
    assert sqnr(ref, out.float().cpu()) >= 35.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the Triton kernel needs CUDA"))])
def test_op_layout_matches_its_fake_for_permuted_inputs(device):
    """Wan's processor passes ``(B, N, H, D)`` tensors transposed to ``(B, H, N, D)`` views: the op returns a
    contiguous tensor like its fake (``torch.compile`` asserts the strides), with the same values as for
    contiguous inputs; ``torch.library.opcheck`` checks the fake against the real op."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 300, 2, 64, generator=g).to(device, torch.bfloat16).transpose(1, 2) for _ in range(3))
    out = torch.ops.lsgq.int8_attention(q, k, v, 64 ** -0.5, True)
    assert out.is_contiguous() and out.shape == q.shape
    assert torch.equal(out, torch.ops.lsgq.int8_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                                          64 ** -0.5, True))
    torch.library.opcheck(torch.ops.lsgq.int8_attention.default, (q, k, v, 64 ** -0.5, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
def test_triton_kernel_cross_attention_lengths():
    q = torch.randn(1, 2, 700, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 226, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert sqnr(ref, int8_attention(q, k, v, 64 ** -0.5, True).float()) >= 30.0


FAST_MODES = [dict(exp="x2"), dict(magic=True), dict(magic=True, bn=128, num_stages=4),
              dict(pv="bf16", exp="x2", magic=True), dict(pv="bf16", magic=True, bn=128),
              dict(pv="bf16", magic=True, bn=128, exp="poly4"), dict(pv="bf16", magic=True, exp="poly2"),
              dict(pv="bf16", magic=True, exp="poly1"), dict(pv="bf16", magic=True, bn=128, fixed_max=True),
              dict(pv="bf16", magic=True, fixed_max=True, num_stages=4),
              dict(pv="bf16", magic=True, fixed_max=True, num_stages=4, rowsum_mma=True),
              dict(pv="fp16", magic=True, rowsum_mma=True),
              dict(pv="bf16", magic=True, fixed_max=True, num_stages=4, rowsum_mma=True, exp="poly8"),
              dict(pv="bf16", magic=True, fixed_max=True, num_stages=4, rowsum_mma=True, exp="poly16")]


def test_fixed_max_needs_bf16_p():
    """fp16 P cannot hold the fixed-offset range (up to 2^64): a clear error, before any kernel."""
    from lsgq_compiler.kernels.triton_attention import triton_int8_attention

    q = torch.zeros(1, 1, 8, 64)
    with pytest.raises(ValueError, match="fixed_max=True needs pv='bf16'"):
        triton_int8_attention(q, q, q, 0.125, pv="fp16", fixed_max=True)


def test_poly_exp2_matches_exp2():
    """The FMA-pipe exponential (FlashAttention-4's trick) the kernel uses for part of P: relative
    error <= 1e-4 (P itself is rounded to bf16, 2^-9 = 2e-3), and -inf (masked keys) gives ~0."""
    from lsgq_compiler.kernels.triton_attention import exp2_mix_asm, poly_exp2_reference

    x = torch.cat([torch.linspace(-120.0, 0.0, 200_001), torch.rand(10_000) * -1.0])
    rel = (poly_exp2_reference(x).double() / torch.exp2(x.double()) - 1).abs().max().item()
    assert rel <= 1e-4
    assert 0.0 <= poly_exp2_reference(torch.tensor([float("-inf"), -500.0])).max().item() < 1e-37
    asm = exp2_mix_asm(4)
    assert asm.count("ex2.approx") == 3 and "$3, p, j" in asm and "$7" in asm  # 3 of 4 on the SFU
    assert exp2_mix_asm(1).count("ex2.approx") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
@pytest.mark.parametrize("mode", FAST_MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_triton_fast_paths_match_reference(mode):
    """Packed 16-bit exp2, the int32->fp32 bit trick and 128-key blocks keep the kernel at the
    reference's numerics (>= 35 dB, as the plain kernel), with a ragged last key block (1000 % 64)."""
    from lsgq_compiler.kernels.triton_attention import triton_int8_attention

    q, k, v = (t.cuda().to(torch.bfloat16) for t in _qkv(n=1000, k_bias=torch.linspace(-3, 3, 64)))
    ref = int8_attention_reference(q.float().cpu(), k.float().cpu(), v.float().cpu())
    out = triton_int8_attention(q, k, v, 64 ** -0.5, True, **dict(dict(num_warps=4), **mode))
    assert sqnr(ref, out.float().cpu()) >= 35.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
def test_triton_magic_conversion_is_exact():
    """The bit trick gives the same int32 scores as I2F: outputs agree far beyond quantization noise."""
    from lsgq_compiler.kernels.triton_attention import triton_int8_attention

    q, k, v = (t.cuda().to(torch.bfloat16) for t in _qkv(n=777))
    a = triton_int8_attention(q, k, v, 64 ** -0.5, True, num_warps=4, magic=False)
    b = triton_int8_attention(q, k, v, 64 ** -0.5, True, num_warps=4, magic=True)
    assert sqnr(a.float(), b.float()) >= 60.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernel_reads_strided_v_in_place(dtype):
    """(B, N, H, D) projections viewed as (B, H, N, D), as diffusers passes them: same result as
    contiguous inputs; the custom op picks P.V in V's dtype and stays close to the reference."""
    from lsgq_compiler.kernels.triton_attention import triton_int8_attention

    pv = "bf16" if dtype == torch.bfloat16 else "fp16"
    q, k, v = (t.cuda().to(dtype).transpose(1, 2).contiguous().transpose(1, 2) for t in _qkv(n=500))
    a = triton_int8_attention(q, k, v, 64 ** -0.5, True, pv=pv, magic=True)
    b = triton_int8_attention(q.contiguous(), k.contiguous(), v.contiguous(), 64 ** -0.5, True, pv=pv, magic=True)
    assert v.stride(-2) != v.shape[-1] and torch.equal(a, b)
    ref = int8_attention_reference(q.float().cpu(), k.float().cpu(), v.float().cpu())
    assert sqnr(ref, int8_attention(q, k, v, 64 ** -0.5, True).float().cpu()) >= 35.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs CUDA")
@pytest.mark.parametrize("q_gain", [1.0, 6.0, 60.0])
def test_triton_fixed_max_bound_and_fallback(q_gain):
    """``fixed_max`` replaces the running row max by a Cauchy-Schwarz bound. Gain 6 puts the bound
    near its limit (scores spread over ~2^-60..1, P must not underflow); gain 60 exceeds the limit, so
    those blocks take the online softmax. Either way the output matches the online kernel."""
    from lsgq_compiler.kernels.triton_attention import triton_int8_attention

    q, k, v = (t.cuda().to(torch.bfloat16) for t in _qkv(n=1000))
    q = q * q_gain
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    online = triton_int8_attention(q, k, v, 64 ** -0.5, True, pv="bf16", bn=128, magic=True)
    fixed = triton_int8_attention(q, k, v, 64 ** -0.5, True, pv="bf16", bn=128, magic=True, fixed_max=True)
    assert torch.isfinite(fixed).all()
    assert sqnr(online.float(), fixed.float()) >= 40.0
    assert sqnr(ref, fixed.float()) >= sqnr(ref, online.float()) - 1.0
