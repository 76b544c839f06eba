"""The CPU 8-bit attention kernel (lsgq_compiler/kernels/cpu_attention.cpp) against its numpy
reference (same quantization: agreement is float rounding, >= 80 dB SQNR) and against exact
attention (8-bit error only: >= 30 dB on these inputs)."""
import numpy as np
import pytest

from lsgq_compiler.kernels import cpu_attention as ca


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - x).astype(np.float64) ** 2).sum()))


def _exact(q, k, v, heads, scale=None):
    b, n, hd = q.shape
    d = hd // heads
    qh, kh, vh = (x.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64) for x in (q, k, v))
    s = qh @ kh.transpose(0, 1, 3, 2) * (d ** -0.5 if scale is None else scale)
    p = np.exp(s - s.max(-1, keepdims=True))
    return ((p @ vh) / p.sum(-1, keepdims=True)).transpose(0, 2, 1, 3).reshape(b, n, hd)


def _qkv(b, nq, nk, heads, d, seed=0, q_gain=2.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((b, nq, heads * d)) * q_gain).astype(np.float32)
    k = (rng.standard_normal((b, nk, heads * d)) + np.linspace(-2, 2, heads * d)).astype(np.float32)  # channel bias
    v = rng.standard_normal((b, nk, heads * d)).astype(np.float32)
    return q, k, v


# ragged sizes on purpose: query rows not a multiple of the micro-block, keys not of 64
SHAPES = [(1, 100, 130, 2, 64), (2, 37, 64, 3, 128), (1, 50, 70, 2, 32), (1, 256, 300, 6, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["auto", "online", "portable"])
def test_kernel_matches_reference_and_exact(shape, mode):
    b, nq, nk, h, d = shape
    q, k, v = _qkv(b, nq, nk, h, d)
    out = ca.cpu_int8_attention(q, k, v, h, mode=mode)
    assert out.shape == q.shape and out.dtype == np.float32
    assert _sqnr(ca.cpu_int8_attention_reference(q, k, v, h), out) >= 80.0
    assert _sqnr(_exact(q, k, v, h), out) >= 30.0


def test_large_scores_take_the_online_path_with_the_same_result():
    """A row-norm bound above the fixed-max limit (96 in log2 units) must fall back to the
    running max: same numbers as the reference, no overflow or underflow."""
    q, k, v = _qkv(1, 96, 200, 2, 64, q_gain=40.0)
    out = ca.cpu_int8_attention(q, k, v, 2, mode="auto")
    assert np.isfinite(out).all()
    assert _sqnr(ca.cpu_int8_attention_reference(q, k, v, 2), out) >= 80.0


def test_threads_and_scale():
    q, k, v = _qkv(1, 64, 128, 2, 64)
    one = ca.cpu_int8_attention(q, k, v, 2, scale=0.05, threads=1)
    two = ca.cpu_int8_attention(q, k, v, 2, scale=0.05, threads=2)
    np.testing.assert_array_equal(one, two)  # rows are independent: threads change nothing
    assert _sqnr(_exact(q, k, v, 2, scale=0.05), one) >= 30.0


def test_bad_inputs_are_refused_clearly():
    q, k, v = _qkv(1, 16, 16, 2, 64)
    with pytest.raises(ValueError, match="float32"):
        ca.cpu_int8_attention(q.astype(np.float64), k, v, 2)
    with pytest.raises(ValueError, match=r"\(batch, tokens, heads \* head_dim\)"):
        ca.cpu_int8_attention(q[0], k, v, 2)
    with pytest.raises(ValueError, match="do not match"):
        ca.cpu_int8_attention(q, k[:, :8], v, 2)
    with pytest.raises(ValueError, match="heads"):
        ca.cpu_int8_attention(q, k, v, 5)
    with pytest.raises(ValueError, match="mode"):
        ca.cpu_int8_attention(q, k, v, 2, mode="fast")


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv("LSGQ_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        ca.build()


def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("LSGQ_CACHE_DIR", str(tmp_path))
    first = ca.build()
    mtime = first.stat().st_mtime_ns
    assert ca.build() == first and first.stat().st_mtime_ns == mtime  # no rebuild
    # no temporary left behind; the sha256 of the library built is recorded beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".sha256"]


def test_cached_library_is_verified_before_loading(monkeypatch, tmp_path):
    """Issue 15: a cached .so that is not the one we built (replaced, truncated, no record) is rebuilt."""
    monkeypatch.setenv("LSGQ_CACHE_DIR", str(tmp_path))
    first = ca.build()
    good = first.read_bytes()
    first.write_bytes(b"\x7fELF not the library we built")
    assert ca.build() == first and first.read_bytes() == good  # rebuilt, not loaded
    first.with_name(first.name + ".sha256").unlink()
    mtime = first.stat().st_mtime_ns
    ca.build()
    assert first.stat().st_mtime_ns != mtime and first.with_name(first.name + ".sha256").is_file()
