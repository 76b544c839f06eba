// 8-bit attention for x86 CPUs: INT8 Q.K^T on AVX-512 VNNI (vpdpbusd), online softmax in
// fp32, P.V in fp32 FMA. One pass over keys per block of query rows (flash-attention order: the
// score matrix is never written out).
//
// Layout: q (B, Nq, H*D), k and v (B, Nk, H*D), out (B, Nq, H*D), float32, contiguous: the
// layout of onnxruntime's com.microsoft.MultiHeadAttention, so the op drops in for it.
//
// Numerics (the Python reference `cpu_int8_attention_reference` computes the same):
//   - K is smoothed (its token mean is subtracted, per head and channel: softmax is invariant
//     to q.mean(K), a per-row constant) and quantized to int8 per block of 64 keys.
//   - Q, pre-multiplied by scale * log2(e), is quantized to int8 per row.
//   - Scores are exact int32 dot products, dequantized per (row, key block); softmax uses exp2
//     (degree-5 polynomial, relative error 1e-7) with a running row max; P.V in fp32.
// vpdpbusd multiplies unsigned by signed bytes: K is stored as k + 128 (uint8) and Q stays
// signed; the extra 128 * sum(q_row) is subtracted from each row's int32 scores.
//
// Built by lsgq_compiler/kernels/cpu_attention.py with g++ -O3 (no OpenMP: std::thread, so no
// pool keeps spinning on the cores after the call and onnxruntime's next op gets them).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <immintrin.h>

#include <stdexcept>
#include <string>

namespace {

constexpr int BK = 64;           // keys per block (K scale granularity and tile width)
constexpr float LOG2E = 1.4426950408889634f;

struct Aligned {
  void* p = nullptr;
  explicit Aligned(size_t bytes) { p = std::aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64); }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

template <class F>
void parallel_for(int n, int threads, F&& fn) {
  std::atomic<int> next{0};
  auto worker = [&]() {
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  threads = std::max(1, std::min(threads, n));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// Per head: smoothed, quantized, packed K; V copied to (Nk_pad, D); per-key-block scales.
struct HeadKV {
  uint8_t* kp;   // (nkb, D/4, 4, 16, 4): block, dim group, 16-key sub-block, key, 4 dims; k + 128
  float* sk;     // (nkb,)
  float* v;      // (nkb * 64, D)
  float* kmax;   // (1,): max over keys of |dequantized smoothed k| (for the fixed row max)
};

// Round to nearest even without a libm call (|x| < 2^22; callers clamp to +-127 first), so the
// quantization loops vectorize; the same arithmetic on every path.
inline float round_even(float x) { return (x + 12582912.f) - 12582912.f; }

inline int8_t quant(float x, float inv) {
  return static_cast<int8_t>(round_even(std::min(127.f, std::max(-127.f, x * inv))));
}

// Smoothed, quantized, packed K and a copy of V for one head (k and v point at its first channel).
__attribute__((always_inline)) inline void prepare_kv_impl(const float* k, const float* v, int nk, int ld, int d,
                                                           HeadKV hk) {
  const int nkb = (nk + BK - 1) / BK, groups = d / 4;
  float mean[128], kc[128];
  for (int c = 0; c < d; ++c) mean[c] = 0.f;
  for (int j = 0; j < nk; ++j)
    for (int c = 0; c < d; ++c) mean[c] += k[(size_t)j * ld + c];
  for (int c = 0; c < d; ++c) mean[c] /= static_cast<float>(nk);
  float kmax = 0.f;
  for (int b = 0; b < nkb; ++b) {
    float amax = 0.f;
    for (int j = b * BK; j < std::min(nk, (b + 1) * BK); ++j)
      for (int c = 0; c < d; ++c) amax = std::max(amax, std::fabs(k[(size_t)j * ld + c] - mean[c]));
    const float s = std::max(amax, 1e-8f) / 127.f;
    hk.sk[b] = s;
    const float inv = 1.f / s;
    for (int jj = 0; jj < BK; ++jj) {
      const int j = b * BK + jj;
      const int sub = jj / 16, key = jj % 16;
      uint8_t codes[128];
      if (j < nk) {
        for (int c = 0; c < d; ++c) kc[c] = k[(size_t)j * ld + c] - mean[c];
        for (int c = 0; c < d; ++c) codes[c] = static_cast<uint8_t>(quant(kc[c], inv) + 128);
      } else {
        for (int c = 0; c < d; ++c) codes[c] = 128;
      }
      float n2 = 0.f;
      for (int c = 0; c < d; ++c) n2 += static_cast<float>((codes[c] - 128) * (codes[c] - 128));
      kmax = std::max(kmax, std::sqrt(n2) * s);
      uint8_t* dst = hk.kp + (((size_t)b * groups * 4 + sub) * 16 + key) * 4;
      for (int g = 0; g < groups; ++g) std::memcpy(dst + (size_t)g * 256, codes + 4 * g, 4);
      float* vr = hk.v + (size_t)j * d;
      if (j < nk)
        std::memcpy(vr, v + (size_t)j * ld, sizeof(float) * d);
      else
        std::memset(vr, 0, sizeof(float) * d);
    }
  }
  hk.kmax[0] = kmax;
}

// Q rows [r0, r0 + rows) of one head: int8 codes (rows, D), per-row scale, 128 * row sum and
// the dequantized row norm.
__attribute__((always_inline)) inline void quantize_q_impl(const float* q, int ld, int d, float qscale, int rows,
                                                           int8_t* qq, float* sq, int32_t* qsum, float* qnorm) {
  for (int r = 0; r < rows; ++r) {
    const float* x = q + (size_t)r * ld;
    float xs[128];
    float amax = 0.f;
    for (int c = 0; c < d; ++c) {
      xs[c] = x[c] * qscale;
      amax = std::max(amax, std::fabs(xs[c]));
    }
    const float s = std::max(amax, 1e-30f) / 127.f;
    const float inv = 1.f / s;
    int32_t sum = 0;
    float n2 = 0.f;
    for (int c = 0; c < d; ++c) {
      const int8_t code = quant(xs[c], inv);
      qq[(size_t)r * d + c] = code;
      sum += code;
      n2 += static_cast<float>(code * code);
    }
    sq[r] = s;
    qsum[r] = 128 * sum;
    qnorm[r] = std::sqrt(n2) * s;
  }
}

void prepare_kv(const float* k, const float* v, int nk, int ld, int d, HeadKV hk) {
  prepare_kv_impl(k, v, nk, ld, d, hk);
}
void quantize_q(const float* q, int ld, int d, float qscale, int rows, int8_t* qq, float* sq, int32_t* qsum,
                float* qnorm) {
  quantize_q_impl(q, ld, d, qscale, rows, qq, sq, qsum, qnorm);
}

// ---------------------------------------------------------------------------- portable path
float exp2_poly(float x) {  // same polynomial as the vector path
  x = std::max(x, -126.f);
  const float n = std::floor(x), f = x - n;
  float p = 0.0018951072909999703f;
  p = p * f + 0.008946214666335685f;
  p = p * f + 0.055863282659256316f;
  p = p * f + 0.24014077009183762f;
  p = p * f + 0.6931546200032986f;
  p = p * f + 0.9999998957631349f;
  return std::ldexp(p, static_cast<int>(n));
}

void rows_portable(const int8_t* qq, const float* sq, const int32_t* qsum, int rows, int nk, int d,
                   const HeadKV& hk, float* out, int ld_out) {
  const int nkb = (nk + BK - 1) / BK, groups = d / 4;
  std::vector<float> acc(d), p(BK);
  for (int r = 0; r < rows; ++r) {
    float m = -INFINITY, l = 0.f;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int b = 0; b < nkb; ++b) {
      float tmax = -INFINITY;
      for (int jj = 0; jj < BK; ++jj) {
        const int sub = jj / 16, key = jj % 16;
        int32_t dot = 0;
        for (int c = 0; c < d; ++c)
          dot += qq[(size_t)r * d + c] * hk.kp[((((size_t)b * groups + c / 4) * 4 + sub) * 16 + key) * 4 + c % 4];
        const float s = static_cast<float>(dot - qsum[r]) * (sq[r] * hk.sk[b]);
        p[jj] = b * BK + jj < nk ? s : -INFINITY;
        tmax = std::max(tmax, p[jj]);
      }
      const float mn = std::max(m, tmax), alpha = exp2_poly(m - mn);
      m = mn;
      float ts = 0.f;
      for (int jj = 0; jj < BK; ++jj) {
        p[jj] = exp2_poly(p[jj] - mn);
        ts += p[jj];
      }
      l = l * alpha + ts;
      for (int c = 0; c < d; ++c) {
        float a = acc[c] * alpha;
        for (int jj = 0; jj < BK; ++jj) a += p[jj] * hk.v[((size_t)b * BK + jj) * d + c];
        acc[c] = a;
      }
    }
    for (int c = 0; c < d; ++c) out[(size_t)r * ld_out + c] = acc[c] / l;
  }
}

// ---------------------------------------------------------------------------- AVX-512 VNNI path
#define LSGQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")))

LSGQ_AVX512 inline __m512 exp2_v(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(0.0018951072909999703f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.008946214666335685f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.055863282659256316f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24014077009183762f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931546200032986f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999998957631349f));
  return _mm512_scalef_ps(p, n);
}

LSGQ_AVX512 inline __m128i codes16(__m512 x, __m512 inv) {  // round(x * inv), clamped to +-127, as int8
  __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));
  q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
  return _mm512_cvtepi32_epi8(q);
}

LSGQ_AVX512 inline float absmax16(__m512 x) { return _mm512_reduce_max_ps(_mm512_abs_ps(x)); }

template <int D>
LSGQ_AVX512 void prepare_kv_avx512(const float* k, const float* v, int nk, int ld, HeadKV hk) {
  constexpr int C = D / 16;
  const int nkb = (nk + BK - 1) / BK;
  __m512 mean[C];
  for (int c = 0; c < C; ++c) mean[c] = _mm512_setzero_ps();
  for (int j = 0; j < nk; ++j)
    for (int c = 0; c < C; ++c) mean[c] = _mm512_add_ps(mean[c], _mm512_loadu_ps(k + (size_t)j * ld + 16 * c));
  const __m512 invn = _mm512_set1_ps(1.f / static_cast<float>(nk));
  for (int c = 0; c < C; ++c) mean[c] = _mm512_mul_ps(mean[c], invn);
  float kmax = 0.f;
  for (int b = 0; b < nkb; ++b) {
    __m512 am = _mm512_setzero_ps();
    const int j1 = std::min(nk, (b + 1) * BK);
    for (int j = b * BK; j < j1; ++j)
      for (int c = 0; c < C; ++c)
        am = _mm512_max_ps(am, _mm512_abs_ps(_mm512_sub_ps(_mm512_loadu_ps(k + (size_t)j * ld + 16 * c), mean[c])));
    const float s = std::max(_mm512_reduce_max_ps(am), 1e-8f) / 127.f;
    hk.sk[b] = s;
    const __m512 inv = _mm512_set1_ps(1.f / s);
    for (int jj = 0; jj < BK; ++jj) {
      const int j = b * BK + jj;
      uint8_t* dst = hk.kp + (((size_t)b * (D / 4) * 4 + jj / 16) * 16 + jj % 16) * 4;
      float* vr = hk.v + (size_t)j * D;
      if (j >= nk) {
        for (int g = 0; g < D / 4; ++g) std::memset(dst + (size_t)g * 256, 128, 4);
        std::memset(vr, 0, sizeof(float) * D);
        continue;
      }
      __m512i n2 = _mm512_setzero_si512();
      for (int c = 0; c < C; ++c) {
        const __m128i q8 = codes16(_mm512_sub_ps(_mm512_loadu_ps(k + (size_t)j * ld + 16 * c), mean[c]), inv);
        const __m512i q32 = _mm512_cvtepi8_epi32(q8);
        n2 = _mm512_add_epi32(n2, _mm512_mullo_epi32(q32, q32));
        alignas(16) uint32_t w[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(w), _mm_xor_si128(q8, _mm_set1_epi8(static_cast<char>(0x80))));
        for (int u = 0; u < 4; ++u) std::memcpy(dst + (size_t)(4 * c + u) * 256, &w[u], 4);
        _mm512_store_ps(vr + 16 * c, _mm512_loadu_ps(v + (size_t)j * ld + 16 * c));
      }
      kmax = std::max(kmax, std::sqrt(static_cast<float>(_mm512_reduce_add_epi32(n2))) * s);
    }
  }
  hk.kmax[0] = kmax;
}

template <int D>
LSGQ_AVX512 void quantize_q_avx512(const float* q, int ld, float qscale, int rows, int8_t* qq, float* sq,
                                   int32_t* qsum, float* qnorm) {
  constexpr int C = D / 16;
  const __m512 qs = _mm512_set1_ps(qscale);
  for (int r = 0; r < rows; ++r) {
    __m512 x[C];
    float amax = 0.f;
    for (int c = 0; c < C; ++c) {
      x[c] = _mm512_mul_ps(_mm512_loadu_ps(q + (size_t)r * ld + 16 * c), qs);
      amax = std::max(amax, absmax16(x[c]));
    }
    const float s = std::max(amax, 1e-30f) / 127.f;
    const __m512 inv = _mm512_set1_ps(1.f / s);
    __m512i sum = _mm512_setzero_si512(), n2 = _mm512_setzero_si512();
    for (int c = 0; c < C; ++c) {
      const __m128i q8 = codes16(x[c], inv);
      const __m512i q32 = _mm512_cvtepi8_epi32(q8);
      sum = _mm512_add_epi32(sum, q32);
      n2 = _mm512_add_epi32(n2, _mm512_mullo_epi32(q32, q32));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qq + (size_t)r * D + 16 * c), q8);
    }
    sq[r] = s;
    qsum[r] = 128 * _mm512_reduce_add_epi32(sum);
    qnorm[r] = std::sqrt(static_cast<float>(_mm512_reduce_add_epi32(n2))) * s;
  }
}

// The fixed row max: |s_ij| <= |q_i| max_j |k_j| = M_i (Cauchy-Schwarz on the dequantized,
// smoothed vectors), so exp2(s_ij - M_i) <= 1 never overflows, and the row max of smoothed
// scores is >= their mean, q_i . mean(k) = 0, so the largest P is >= 2^-M_i: with M_i <=
// FIXED_LIMIT every P that matters stays a normal float. No running max, no rescaling of O.
// Tasks with a larger bound take the online path (rows_avx512).
constexpr float FIXED_LIMIT = 96.f;

// acc[r][t] = int32 dot products of R query rows (int8, D each) with keys 16t..16t+15 of one
// 64-key block (packed, k + 128): vpdpbusd over the D/4 groups of 4 dims.
template <int D, int R>
LSGQ_AVX512 __attribute__((always_inline)) inline void qk_tile(const int32_t* qw, const uint8_t* kb,
                                                                __m512i (&acc)[R][4]) {
  constexpr int G = D / 4;
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_si512();
  for (int g = 0; g < G; ++g) {
    const __m512i k0 = _mm512_load_si512(kb + g * 256), k1 = _mm512_load_si512(kb + g * 256 + 64);
    const __m512i k2 = _mm512_load_si512(kb + g * 256 + 128), k3 = _mm512_load_si512(kb + g * 256 + 192);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i qb = _mm512_set1_epi32(qw[r * G + g]);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], k0, qb);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], k1, qb);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], k2, qb);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], k3, qb);
    }
  }
}

// Scores and exponentials of R rows on one block of 64 keys: p[r][0..63] = exp2(s - M_r) (zero
// for padded keys), lsum[r] += p[r]. Separate, small functions keep each phase's accumulators in
// registers (one function for all phases spills them to the stack inside the inner loops).
template <int D, int R>
LSGQ_AVX512 __attribute__((noinline)) void qk_exp(const int32_t* qw, const uint8_t* kb, const float* sc,
                                                  const float* off, int valid, float* p, int ldp, float* lsum) {
  __m512i acc[R][4];
  qk_tile<D, R>(qw, kb, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 scv = _mm512_set1_ps(sc[r]), offv = _mm512_set1_ps(off[r]);
    __m512 ls = _mm512_load_ps(lsum + 16 * r);
    #pragma GCC unroll 16
    for (int t = 0; t < 4; ++t) {
      __m512 e = exp2_v(_mm512_fmsub_ps(_mm512_cvtepi32_ps(acc[r][t]), scv, offv));
      if (valid < BK) {
        const int lo = valid - 16 * t;
        const __mmask16 keep = lo >= 16 ? 0xFFFF : lo <= 0 ? 0 : static_cast<__mmask16>((1u << lo) - 1);
        e = _mm512_maskz_mov_ps(keep, e);
      }
      ls = _mm512_add_ps(ls, e);
      _mm512_store_ps(p + (size_t)r * ldp + 16 * t, e);
    }
    _mm512_store_ps(lsum + 16 * r, ls);
  }
}

// o (MR x D, in/out) += P (MR x keys, row stride ldp) . V (keys x D): MR x D/16 fp32 accumulators.
template <int D>
LSGQ_AVX512 __attribute__((noinline)) void pv(const float* p, int ldp, int keys, const float* v, float* o) {
  constexpr int MR = 384 / D, C = D / 16;
  __m512 ov[MR][C];
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 16
    for (int c = 0; c < C; ++c) ov[r][c] = _mm512_load_ps(o + r * D + 16 * c);
  for (int j = 0; j < keys; ++j) {
    __m512 vv[C];
    #pragma GCC unroll 16
    for (int c = 0; c < C; ++c) vv[c] = _mm512_load_ps(v + (size_t)j * D + 16 * c);
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 pj = _mm512_set1_ps(p[(size_t)r * ldp + j]);
      #pragma GCC unroll 16
      for (int c = 0; c < C; ++c) ov[r][c] = _mm512_fmadd_ps(pj, vv[c], ov[r][c]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 16
    for (int c = 0; c < C; ++c) _mm512_store_ps(o + r * D + 16 * c, ov[r][c]);
}

// MR query rows (MR * D == 384: 24 zmm accumulators for P.V) against all keys of one head, with
// the online softmax (running row max, O rescaled when it grows).
template <int D>
LSGQ_AVX512 void rows_avx512(const int8_t* qq, const float* sq, const int32_t* qsum, int nk, const HeadKV& hk,
                             float* out, int ld_out) {
  constexpr int MR = 384 / D, G = D / 4, C = D / 16;
  const int nkb = (nk + BK - 1) / BK;
  alignas(64) float o[MR][D];
  alignas(64) float p[MR][BK];
  float m[MR], alpha[MR];
  __m512 lsum[MR];
  for (int r = 0; r < MR; ++r) {
    m[r] = -INFINITY;
    lsum[r] = _mm512_setzero_ps();
    for (int c = 0; c < D; ++c) o[r][c] = 0.f;
  }
  const int32_t* qw = reinterpret_cast<const int32_t*>(qq);
  for (int b = 0; b < nkb; ++b) {
    __m512i acc[MR][4];
    qk_tile<D, MR>(qw, hk.kp + (size_t)b * G * 256, acc);
    const int valid = std::min(BK, nk - b * BK);
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512i corr = _mm512_set1_epi32(qsum[r]);
      const __m512 sc = _mm512_set1_ps(sq[r] * hk.sk[b]);
      __m512 s[4];
      #pragma GCC unroll 16
      for (int t = 0; t < 4; ++t) {
        s[t] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], corr)), sc);
        if (valid < BK) {
          const int lo = valid - 16 * t;
          const __mmask16 keep = lo >= 16 ? 0xFFFF : lo <= 0 ? 0 : static_cast<__mmask16>((1u << lo) - 1);
          s[t] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), keep, s[t]);
        }
      }
      const float tmax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(s[0], s[1]), _mm512_max_ps(s[2], s[3])));
      const float mn = std::max(m[r], tmax);
      alpha[r] = _mm512_cvtss_f32(exp2_v(_mm512_set1_ps(m[r] - mn)));
      m[r] = mn;
      const __m512 mv = _mm512_set1_ps(mn);
      __m512 ts = _mm512_setzero_ps();
      #pragma GCC unroll 16
      for (int t = 0; t < 4; ++t) {
        const __m512 e = exp2_v(_mm512_sub_ps(s[t], mv));
        ts = _mm512_add_ps(ts, e);
        _mm512_store_ps(&p[r][16 * t], e);
      }
      lsum[r] = _mm512_fmadd_ps(lsum[r], _mm512_set1_ps(alpha[r]), ts);
    }
    for (int r = 0; r < MR; ++r)  // O *= alpha, then O += P.V
      for (int c = 0; c < D; ++c) o[r][c] *= alpha[r];
    pv<D>(&p[0][0], BK, BK, hk.v + (size_t)b * BK * D, &o[0][0]);
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(lsum[r]));
    for (int c = 0; c < C; ++c)
      _mm512_storeu_ps(out + (size_t)r * ld_out + 16 * c, _mm512_mul_ps(_mm512_load_ps(&o[r][16 * c]), inv));
  }
}

// A task's rows (TR = 3072 / D: 48 at head dim 64) against all keys with the fixed row max, key
// block by key block: scores and exponentials of all TR rows for 64 keys go to P (TR x 64), then
// P.V runs micro-block by micro-block (MR rows, O in registers within the block). The block's K
// (4 KB) and V (16 KB at D = 64), P and O stay in L1 and are reused by every micro-block.
template <int D>
LSGQ_AVX512 void rows_avx512_fixed(const int8_t* qq, const float* sq, const int32_t* qsum, const float* bound,
                                   int rows, int nk, const HeadKV& hk, float* out, int ld_out) {
  constexpr int MR = 384 / D, G = D / 4, C = D / 16, TR = 3072 / D, R = MR % 3 == 0 ? 3 : MR;
  const int nkb = (nk + BK - 1) / BK;
  alignas(64) float p[TR][BK];
  alignas(64) float o[TR][D] = {};
  alignas(64) float lsum[TR][16] = {};
  float sc[TR], off[TR];
  const int32_t* qw = reinterpret_cast<const int32_t*>(qq);
  for (int b = 0; b < nkb; ++b) {
    for (int r = 0; r < rows; ++r) {  // s - M = acc * sc - (128 sum(q) * sc + M), sc = sq * sk
      sc[r] = sq[r] * hk.sk[b];
      off[r] = static_cast<float>(qsum[r]) * sc[r] + bound[r];
    }
    const uint8_t* kb = hk.kp + (size_t)b * G * 256;
    const int valid = std::min(BK, nk - b * BK);
    for (int r = 0; r < rows; r += R) qk_exp<D, R>(qw + r * G, kb, sc + r, off + r, valid, p[r], BK, lsum[r]);
    const float* vb = hk.v + (size_t)b * BK * D;
    for (int r = 0; r < rows; r += MR) pv<D>(p[r], BK, BK, vb, o[r]);
  }
  for (int r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(_mm512_load_ps(lsum[r])));
    for (int c = 0; c < C; ++c)
      _mm512_storeu_ps(out + (size_t)r * ld_out + 16 * c, _mm512_mul_ps(_mm512_load_ps(&o[r][16 * c]), inv));
  }
}

bool has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq");
}

}  // namespace

extern "C" {

// 1 when the AVX-512 VNNI path runs on this CPU, 0 when the portable path does.
int lsgq_cpu_attention_fast_path() { return has_vnni() ? 1 : 0; }

// mode 0: AVX-512 VNNI where the CPU has it, with the fixed row max where the bound allows;
// 1: the portable path; 2: AVX-512 VNNI with the online softmax only.
// Returns 0, or a negative code: -1 head dim not a multiple of 4 or above 128, -2 bad sizes,
// -3 out of memory.
int lsgq_int8_attention(const float* q, const float* k, const float* v, float* out, int batch, int nq, int nk,
                        int heads, int d, float scale, int threads, int mode) {
  if (d % 4 != 0 || d > 128) return -1;
  if (batch <= 0 || nq <= 0 || nk <= 0 || heads <= 0 || d <= 0) return -2;
  const bool fast = mode != 1 && has_vnni() && (d == 64 || d == 128);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int ld = heads * d, nkb = (nk + BK - 1) / BK, nkp = nkb * BK;
  const int bh = batch * heads;
  Aligned kp((size_t)bh * nkp * d), sk((size_t)bh * nkb * sizeof(float)), vbuf((size_t)bh * nkp * d * sizeof(float));
  Aligned kmax((size_t)bh * sizeof(float));
  if (!kp.p || !sk.p || !vbuf.p || !kmax.p) return -3;
  auto head = [&](int i) {
    return HeadKV{static_cast<uint8_t*>(kp.p) + (size_t)i * nkp * d, static_cast<float*>(sk.p) + (size_t)i * nkb,
                  static_cast<float*>(vbuf.p) + (size_t)i * nkp * d, static_cast<float*>(kmax.p) + i};
  };
  parallel_for(bh, threads, [&](int i) {
    const int b = i / heads, h = i % heads;
    const float* kh = k + (size_t)b * nk * ld + (size_t)h * d;
    const float* vh = v + (size_t)b * nk * ld + (size_t)h * d;
    if (fast && d == 64)
      prepare_kv_avx512<64>(kh, vh, nk, ld, head(i));
    else if (fast)
      prepare_kv_avx512<128>(kh, vh, nk, ld, head(i));
    else
      prepare_kv(kh, vh, nk, ld, d, head(i));
  });
  const int mr = fast ? 384 / d : 8;
  const int chunk = fast ? 3072 / d : 48;  // rows per task (a multiple of mr)
  const int per_head = (nq + chunk - 1) / chunk;
  const float qscale = scale * LOG2E;
  parallel_for(bh * per_head, threads, [&](int t) {
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  // flush denormals to zero (tiny P) while this worker computes
    const int i = t / per_head, b = i / heads, h = i % heads;
    const int r0 = (t % per_head) * chunk, rows = std::min(chunk, nq - r0);
    alignas(64) int8_t qq[48 * 128];
    alignas(64) float sq[48], qnorm[48], bound[48], obuf[48 * 64];
    int32_t qsum[48];
    const HeadKV hk = head(i);
    const float* qh = q + (size_t)b * nq * ld + (size_t)h * d + (size_t)r0 * ld;
    float* oh = out + (size_t)b * nq * ld + (size_t)h * d + (size_t)r0 * ld;
    if (!fast) {
      for (int r = 0; r < rows; r += mr) {
        const int n = std::min(mr, rows - r);
        quantize_q(qh + (size_t)r * ld, ld, d, qscale, n, qq, sq, qsum, qnorm);
        rows_portable(qq, sq, qsum, n, nk, d, hk, oh + (size_t)r * ld, ld);
      }
    } else {
      const int padded = (rows + mr - 1) / mr * mr;  // zero rows fill the last micro-block; dropped
      if (d == 64)
        quantize_q_avx512<64>(qh, ld, qscale, rows, qq, sq, qsum, qnorm);
      else
        quantize_q_avx512<128>(qh, ld, qscale, rows, qq, sq, qsum, qnorm);
      for (int z = rows; z < padded; ++z) {
        std::memset(qq + (size_t)z * d, 0, d);
        sq[z] = 1.f;
        qsum[z] = 0;
        qnorm[z] = 0.f;
      }
      bool fixed = mode != 2;
      for (int z = 0; z < padded; ++z) {
        bound[z] = qnorm[z] * hk.kmax[0];
        fixed = fixed && bound[z] <= FIXED_LIMIT;
      }
      float* dst = padded == rows ? oh : obuf;
      const int ldd = padded == rows ? ld : d;
      if (fixed) {
        if (d == 64)
          rows_avx512_fixed<64>(qq, sq, qsum, bound, padded, nk, hk, dst, ldd);
        else
          rows_avx512_fixed<128>(qq, sq, qsum, bound, padded, nk, hk, dst, ldd);
      } else {
        for (int r = 0; r < padded; r += mr) {
          if (d == 64)
            rows_avx512<64>(qq + (size_t)r * d, sq + r, qsum + r, nk, hk, dst + (size_t)r * ldd, ldd);
          else
            rows_avx512<128>(qq + (size_t)r * d, sq + r, qsum + r, nk, hk, dst + (size_t)r * ldd, ldd);
        }
      }
      if (dst == obuf)
        for (int z = 0; z < rows; ++z) std::memcpy(oh + (size_t)z * ld, obuf + (size_t)z * d, sizeof(float) * d);
    }
    _mm_setcsr(csr);
  });
  return 0;
}

}  // extern "C"

// ---------------------------------------------------------------------------- onnxruntime custom op
// The library doubles as an onnxruntime custom-op library: SessionOptions.register_custom_ops_library
// calls RegisterCustomOps, which adds com.lsgq::Int8Attention (inputs query, key, value as
// com.microsoft.MultiHeadAttention takes them, attributes num_heads and scale; output like its
// output). The declarations below are our own minimal binding of onnxruntime's C ABI: the
// OrtApi function table is indexed by slot (the table is append-only across versions; slots
// from API version 1), and OrtCustomOp is declared with the version-1 fields only.
namespace ortabi {

struct Status;
struct Value;
struct KernelInfo;
struct KernelContext;
struct SessionOptions;
struct Domain;
struct ShapeInfo;

using Api = void* const*;  // the OrtApi table
struct ApiBase {
  Api (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

enum Slot : int {
  kCreateStatus = 0,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttributeFloat = 85,
  kKernelInfoGetAttributeInt64 = 86,
  kKernelContextGetInputCount = 88,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTensorTypeAndShapeInfo = 99,
};

template <class F>
F fn(Api api, Slot s) {
  return reinterpret_cast<F>(api[s]);
}

constexpr uint32_t kApiVersion = 13;
constexpr int kFloat = 1;  // ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
constexpr int kFail = 1, kInvalidArgument = 2;

struct CustomOp {  // OrtCustomOp, version-1 layout
  uint32_t version;
  void* (*CreateKernel)(const CustomOp*, Api, const KernelInfo*);
  const char* (*GetName)(const CustomOp*);
  const char* (*GetExecutionProviderType)(const CustomOp*);
  int (*GetInputType)(const CustomOp*, size_t);
  size_t (*GetInputTypeCount)(const CustomOp*);
  int (*GetOutputType)(const CustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const CustomOp*);
  void (*KernelCompute)(void*, KernelContext*);
  void (*KernelDestroy)(void*);
  int (*GetInputCharacteristic)(const CustomOp*, size_t);   // version >= 8
  int (*GetOutputCharacteristic)(const CustomOp*, size_t);  // version >= 8
  int (*GetInputMemoryType)(const CustomOp*, size_t);       // version >= 13
};

void check(Api api, Status* st, const char* what) {
  if (st == nullptr) return;
  fn<void (*)(Status*)>(api, kReleaseStatus)(st);
  throw std::runtime_error(std::string("lsgq Int8Attention: onnxruntime call failed: ") + what);
}

struct Kernel {
  Api api;
  int heads;
  float scale;  // <= 0: head_dim ** -0.5
};

struct Shape {
  std::vector<int64_t> dims;
};

Shape shape_of(Api api, const Value* v) {
  ShapeInfo* info = nullptr;
  check(api, fn<Status* (*)(const Value*, ShapeInfo**)>(api, kGetTensorTypeAndShape)(v, &info), "shape");
  size_t n = 0;
  int type = 0;
  Status* st = fn<Status* (*)(const ShapeInfo*, size_t*)>(api, kGetDimensionsCount)(info, &n);
  Shape out;
  if (st == nullptr) {
    out.dims.resize(n);
    st = fn<Status* (*)(const ShapeInfo*, int64_t*, size_t)>(api, kGetDimensions)(info, out.dims.data(), n);
  }
  if (st == nullptr) st = fn<Status* (*)(const ShapeInfo*, int*)>(api, kGetTensorElementType)(info, &type);
  fn<void (*)(ShapeInfo*)>(api, kReleaseTensorTypeAndShapeInfo)(info);
  check(api, st, "dims");
  if (type != kFloat) throw std::runtime_error("lsgq Int8Attention: inputs must be float32");
  return out;
}

void* create_kernel(const CustomOp*, Api api, const KernelInfo* info) {
  int64_t heads = 0;
  float scale = 0.f;
  check(api, fn<Status* (*)(const KernelInfo*, const char*, int64_t*)>(api, kKernelInfoGetAttributeInt64)(
                 info, "num_heads", &heads),
        "attribute num_heads (required)");
  Status* st = fn<Status* (*)(const KernelInfo*, const char*, float*)>(api, kKernelInfoGetAttributeFloat)(
      info, "scale", &scale);
  if (st != nullptr) {  // optional attribute
    fn<void (*)(Status*)>(api, kReleaseStatus)(st);
    scale = 0.f;
  }
  if (heads <= 0) throw std::runtime_error("lsgq Int8Attention: num_heads must be positive");
  return new Kernel{api, static_cast<int>(heads), scale};
}

int env_threads() {
  const char* s = std::getenv("LSGQ_ATTENTION_THREADS");
  return s ? std::atoi(s) : 0;
}

void compute(void* kernel, KernelContext* ctx) {
  const Kernel& kn = *static_cast<Kernel*>(kernel);
  Api api = kn.api;
  const Value* in[3];
  for (size_t i = 0; i < 3; ++i)
    check(api, fn<Status* (*)(const KernelContext*, size_t, const Value**)>(api, kKernelContextGetInput)(ctx, i, &in[i]),
          "input");
  const Shape qs = shape_of(api, in[0]), ks = shape_of(api, in[1]), vs = shape_of(api, in[2]);
  if (qs.dims.size() != 3 || ks.dims.size() != 3 || vs.dims != ks.dims || ks.dims[0] != qs.dims[0] ||
      ks.dims[2] != qs.dims[2])
    throw std::runtime_error("lsgq Int8Attention: query (B, Nq, H*D), key and value (B, Nk, H*D) expected");
  const int64_t hd = qs.dims[2];
  if (hd % kn.heads != 0 || (hd / kn.heads) % 4 != 0 || hd / kn.heads > 128)
    throw std::runtime_error("lsgq Int8Attention: hidden size must split into num_heads heads of dim <= 128, % 4");
  const int d = static_cast<int>(hd / kn.heads);
  void* data[3];
  for (int i = 0; i < 3; ++i)
    check(api, fn<Status* (*)(Value*, void**)>(api, kGetTensorMutableData)(const_cast<Value*>(in[i]), &data[i]),
          "input data");
  Value* out = nullptr;
  check(api, fn<Status* (*)(KernelContext*, size_t, const int64_t*, size_t, Value**)>(api, kKernelContextGetOutput)(
                 ctx, 0, qs.dims.data(), 3, &out),
        "output");
  void* od = nullptr;
  check(api, fn<Status* (*)(Value*, void**)>(api, kGetTensorMutableData)(out, &od), "output data");
  const float scale = kn.scale > 0.f ? kn.scale : 1.f / std::sqrt(static_cast<float>(d));
  const int rc = lsgq_int8_attention(static_cast<const float*>(data[0]), static_cast<const float*>(data[1]),
                                     static_cast<const float*>(data[2]), static_cast<float*>(od),
                                     static_cast<int>(qs.dims[0]), static_cast<int>(qs.dims[1]),
                                     static_cast<int>(ks.dims[1]), kn.heads, d, scale, env_threads(), 0);
  if (rc != 0) throw std::runtime_error("lsgq Int8Attention: kernel failed (code " + std::to_string(rc) + ")");
}

const char* op_name(const CustomOp*) { return "Int8Attention"; }
const char* op_ep(const CustomOp*) { return "CPUExecutionProvider"; }
int op_type(const CustomOp*, size_t) { return kFloat; }
size_t op_inputs(const CustomOp*) { return 3; }
size_t op_outputs(const CustomOp*) { return 1; }
int op_required(const CustomOp*, size_t) { return 0; }  // INPUT_OUTPUT_REQUIRED
int op_memtype(const CustomOp*, size_t) { return 0; }   // OrtMemTypeDefault
void destroy(void* k) { delete static_cast<Kernel*>(k); }

const CustomOp kOp = {kApiVersion, create_kernel, op_name, op_ep,       op_type,    op_inputs,  op_type,
                      op_outputs,  compute,       destroy, op_required, op_required, op_memtype};

}  // namespace ortabi

extern "C" __attribute__((visibility("default"))) ortabi::Status* RegisterCustomOps(ortabi::SessionOptions* options,
                                                                                   const ortabi::ApiBase* base) {
  using namespace ortabi;
  Api api = base->GetApi(kApiVersion);
  if (api == nullptr) return nullptr;
  Domain* domain = nullptr;
  Status* st = fn<Status* (*)(const char*, Domain**)>(api, kCreateCustomOpDomain)("com.lsgq", &domain);
  if (st == nullptr) st = fn<Status* (*)(Domain*, const CustomOp*)>(api, kCustomOpDomainAdd)(domain, &kOp);
  if (st == nullptr) st = fn<Status* (*)(SessionOptions*, Domain*)>(api, kAddCustomOpDomain)(options, domain);
  return st;
}
