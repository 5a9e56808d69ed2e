"""The fast decode loop's one-token step over the 30 (or however many) decoder layers, in C++.

``rlhf.decode._forward`` runs about 1,500 small tensor operations per generated token (norms,
rotations, casts, cache writes, attention, products), each paying a few microseconds of Python and
dispatch: at PPO's batch 4 on the bundled model that was more time than the products themselves.
Here one C++ call per token runs the layers: the products (oneDNN's packed bfloat16 product, as
``rlhf.ppo.rollout.bf16_linear``), attention's two batched matmuls, softmax and SiLU are ATen's; the
norms with their cast, the rotary embedding with the cache writes, the roundings to bfloat16, the
residual adds and a training LoRA adapter's two small products (``rlhf.decode.Adapter``; oneDNN's
product costs more per call than these take) are plain loops over the same values. The key/value cache is kept in float32 (each
value its bfloat16 rounding, as the Python step's cache holds it), so attention no longer converts
the whole prefix at every token. The sampled tokens are the Python step's, the scores equal but for
float32 rounding (the norms add their squares in another order): ``tests/ppo/test_decode.py``.
``torch.compile`` and TorchScript were measured for this first (README, "Generation"): neither keeps
oneDNN's packed weights.

It is compiled on first use with torch's own C++ extension loader (g++ and ninja, the same as
DeepSpeed's first run; about 25 s on two cores) into ``$TORCH_EXTENSIONS_DIR`` (``rlhf.runtime``
points it at the cache, so it happens once per machine). Where it cannot be built, ``available()``
is False after saying why once, and the loop runs its steps in Python as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import sysconfig
import threading

import torch

log = logging.getLogger("rlhf.decode")

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cmath>
#include <cstring>
#include <algorithm>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define RLHF_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

using at::Tensor;

// rlhf.ppo.rollout.bf16_linear: oneDNN's product for a packed bfloat16 weight, else F.linear.
static Tensor product(const Tensor& x, const Tensor& w) {
  if (w.is_mkldnn()) {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{x, w, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue(std::string(""))};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  return at::linear(x, w);
}

// rms_norm (as F.rms_norm: x * rsqrt(mean(x^2) + eps) * weight) of each row of float32 `hidden`, written
// as bfloat16 to `out` (or float32 when `out` is float32). One pass instead of rms_norm's and the cast's
// dozen dispatched operations; only the sum of squares is added up in another order than ATen's.
static void norm_rows(const Tensor& hidden, const Tensor& weight, double eps, Tensor& out) {
  const int64_t width = hidden.size(-1), rows = hidden.numel() / width;
  const float* h = hidden.data_ptr<float>();
  const float* g = weight.data_ptr<float>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  for (int64_t r = 0; r < rows; ++r, h += width) {
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= width; j += 8)
      for (int u = 0; u < 8; ++u) sums[u] += h[j + u] * h[j + u];
    for (; j < width; ++j) sums[0] += h[j] * h[j];
    const float total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]));
    const float inv = 1.0f / std::sqrt(total / static_cast<float>(width) + static_cast<float>(eps));
    if (bf16) {
      at::BFloat16* o = out.data_ptr<at::BFloat16>() + r * width;
      for (j = 0; j < width; ++j) o[j] = at::BFloat16(h[j] * inv * g[j]);
    } else {
      float* o = out.data_ptr<float>() + r * width;
      for (j = 0; j < width; ++j) o[j] = h[j] * inv * g[j];
    }
  }
}

// hidden += x (float32 += bfloat16, as `hidden + x` promotes), row-major, same shapes.
static void add_into(Tensor& hidden, const Tensor& x) {
  float* h = hidden.data_ptr<float>();
  const at::BFloat16* v = x.data_ptr<at::BFloat16>();
  const int64_t n = hidden.numel();
  for (int64_t j = 0; j < n; ++j) h[j] += static_cast<float>(v[j]);
}

// Rotary embedding of q and k from one token's qkv row (bfloat16), as rlhf.decode._rotate computes it
// (x * cos + rotate_half(x) * sin in float32, rounded to bfloat16). q goes to `q` (batch, heads, dim), k
// and v to the float32 caches (batch, kv_heads, length, dim) at slot `start`, each value as its bfloat16
// rounding: what the Python step's bfloat16 cache holds and its attention reads back as float32.
static void rotate_into(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& keys,
                        Tensor& values, int64_t start, int64_t heads, int64_t kv_heads, int64_t dim) {
  const int64_t batch = qkv.size(0), half = dim / 2, row = qkv.size(-1), total = keys.size(2);
  const at::BFloat16* in = qkv.data_ptr<at::BFloat16>();
  const float* c0 = cos.data_ptr<float>();
  const float* s0 = sin.data_ptr<float>();
  float* qo = q.data_ptr<float>();
  float* ko = keys.data_ptr<float>();
  float* vo = values.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const float* c = c0 + b * cos.stride(0);
    const float* s = s0 + b * sin.stride(0);
    const at::BFloat16* x = in + b * row;
    for (int64_t h = 0; h < heads + kv_heads; ++h, x += dim) {
      float* o = h < heads ? qo + (b * heads + h) * dim : ko + ((b * kv_heads + (h - heads)) * total + start) * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const float rotated = j < half ? -static_cast<float>(x[j + half]) : static_cast<float>(x[j - half]);
        const float a = static_cast<float>(x[j]) * c[j];
        const float bsin = rotated * s[j];
        o[j] = static_cast<float>(at::BFloat16(a + bsin));
      }
    }
    for (int64_t h = 0; h < kv_heads; ++h, x += dim) {
      float* o = vo + ((b * kv_heads + h) * total + start) * dim;
      for (int64_t j = 0; j < dim; ++j) o[j] = static_cast<float>(x[j]);
    }
  }
}

// One-query attention's weights in one pass per row, where five ATen calls per layer cost more than the
// arithmetic (rlhf.decode._attend_one): `scores` (rows x `end` float32, unscaled; row r belongs to
// batch row r / per_batch) become the exponentials of scale x score less the row's largest, rounded to
// bfloat16 (zero where `masked`, (batch, 1, 1, end) boolean, hides the key), and `totals` (rows) the
// float32 sums of the unrounded exponentials.
static void exponentials(Tensor& scores, const Tensor& masked, int64_t per_batch, float scale, Tensor& totals) {
  const int64_t end = scores.size(-1), rows = scores.numel() / end;
  const int64_t batch_stride = masked.stride(0), key_stride = masked.stride(3);
  const bool* hide = masked.data_ptr<bool>();
  float* s = scores.data_ptr<float>();
  float* t = totals.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r, s += end) {
    const bool* h = hide + (r / per_batch) * batch_stride;
    float top = -INFINITY;
    for (int64_t j = 0; j < end; ++j) {
      s[j] *= scale;
      if (!h[j * key_stride]) top = std::max(top, s[j]);
    }
    float total = 0.f;
    for (int64_t j = 0; j < end; ++j) {
      if (h[j * key_stride]) {
        s[j] = 0.f;
      } else {
        const float e = std::exp(s[j] - top);
        total += e;
        s[j] = static_cast<float>(at::BFloat16(e));
      }
    }
    t[r] = total;
  }
}

// Sixteen floats, and sixteen bfloat16 widened to them (a bfloat16 is the top half of a float32), with
// GCC's vector extensions: AVX-512 registers where the compiler targets them (-march=native), pairs or
// quadruples of narrower ones elsewhere.
typedef float floats16 __attribute__((vector_size(64)));
typedef uint16_t halves16 __attribute__((vector_size(32)));
typedef uint32_t words16 __attribute__((vector_size(64)));
static inline floats16 widen16(const at::BFloat16* p) {
  halves16 h;
  std::memcpy(&h, p, sizeof h);
  const words16 w = __builtin_convertvector(h, words16) << 16;
  floats16 f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
static inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
// Sixteen floats rounded to bfloat16 (to nearest, ties to even, as at::BFloat16; not-a-number is not
// expected here): the rounded values as floats, or their sixteen bfloat16 stored at `out`.
static inline words16 rounded_bits16(floats16 f) {
  words16 w;
  std::memcpy(&w, &f, sizeof w);
  return (w + 0x7FFFu + ((w >> 16) & 1u)) & 0xFFFF0000u;
}
static inline floats16 round16(floats16 f) {
  const words16 w = rounded_bits16(f);
  std::memcpy(&f, &w, sizeof f);
  return f;
}
static inline void store16(floats16 f, at::BFloat16* out) {
  const halves16 h = __builtin_convertvector(rounded_bits16(f) >> 16, halves16);
  std::memcpy(out, &h, sizeof h);
}
static inline float round_bf16(float v) { return static_cast<float>(at::BFloat16(v)); }

// The adapter's sums may use fused multiply-adds (they add up in another order than oneDNN's anyway);
// every other loop here rounds as ATen's operations do.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

// Sixteen columns of `rows` (at most 8, a compile-time count so the sums stay in registers) rows of
// x M, for x bfloat16 (row stride `xstride`, 2 x `pairs` terms) and M bfloat16 laid out in pairs of
// its rows: (pairs, 16, 2), each column's two terms side by side (rlhf.decode._pairs_of_16):
// acc[r] = sum over t of x[r][t] * M[t][0..16). Every product of two bfloat16 is exact in float32, so
// the two ways below differ only in the order of the additions. Two chains of additions per row keep
// the vector units busy.
template <int rows, bool native>
static inline void pair_sums16(floats16 (&acc)[rows], const at::BFloat16* x, int64_t xstride,
                               const at::BFloat16* m, int64_t pairs) {
#if defined(__AVX512BF16__)
  if (native) {  // vdpbf16ps: sixteen columns' two terms multiplied and added in one instruction
    __m512 even[rows], odd[rows];
    for (int r = 0; r < rows; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 2 <= pairs; p += 2) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(m + p * 32);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(m + (p + 1) * 32);
      for (int r = 0; r < rows; ++r) {
        int32_t x0, x1;
        std::memcpy(&x0, x + r * xstride + 2 * p, 4);
        std::memcpy(&x1, x + r * xstride + 2 * p + 2, 4);
        even[r] = _mm512_dpbf16_ps(even[r], (__m512bh)_mm512_set1_epi32(x0), w0);
        odd[r] = _mm512_dpbf16_ps(odd[r], (__m512bh)_mm512_set1_epi32(x1), w1);
      }
    }
    if (p < pairs) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(m + p * 32);
      for (int r = 0; r < rows; ++r) {
        int32_t x0;
        std::memcpy(&x0, x + r * xstride + 2 * p, 4);
        even[r] = _mm512_dpbf16_ps(even[r], (__m512bh)_mm512_set1_epi32(x0), w0);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const __m512 sum = _mm512_add_ps(even[r], odd[r]);
      std::memcpy(&acc[r], &sum, sizeof sum);
    }
    return;
  }
#endif
  // Elsewhere: a pair's 32 bfloat16 read as sixteen 32-bit words, whose low halves are the first
  // term's sixteen columns and high halves the second's (a bfloat16 is the top half of a float32).
  floats16 odd[rows];
  for (int r = 0; r < rows; ++r) acc[r] = odd[r] = floats16{};
  for (int64_t p = 0; p < pairs; ++p) {
    words16 w;
    std::memcpy(&w, m + p * 32, sizeof w);
    const words16 lo = w << 16, hi = w & 0xFFFF0000u;
    floats16 m0, m1;
    std::memcpy(&m0, &lo, sizeof m0);
    std::memcpy(&m1, &hi, sizeof m1);
    for (int r = 0; r < rows; ++r) {
      acc[r] += widen(x[r * xstride + 2 * p]) * m0;
      odd[r] += widen(x[r * xstride + 2 * p + 1]) * m1;
    }
  }
  for (int r = 0; r < rows; ++r) acc[r] += odd[r];
}

// rlhf.decode.Adapter.delta added into the product `y` of `x` (both bfloat16, one row per batch row), as
// peft's LoRA layer under bfloat16 autocast: u = bf16(x A^T); per module y = bf16(y + bf16(bf16(u B^T) * s)).
// `as` holds A^T in runs of sixteen columns, each in pairs of rows (runs, in / 2, 16, 2; Adapter.a_blocks)
// and `bs` each module's B^T so (Adapter.b_blocks); `seg` per module: rows k0..k1 of u (k0 even, and u
// zero from k1 to the next even row), columns o0..o1 of y, scaling s, offset of its blocks. `x` has an
// even row stride `in` (zero-padded), `u` (bfloat16) `runs` x 16. Sixteen columns at a time for four
// rows at a time, so each adapter weight is read once per token.
template <int rows, bool native>
static void adapt_rows(const at::BFloat16* x, at::BFloat16* ys, const at::BFloat16* as, const at::BFloat16* bs,
                       const double* seg, int64_t modules, int64_t in, int64_t runs, int64_t out, at::BFloat16* u) {
  const int64_t ranks = runs * 16;
  floats16 acc[rows];
  for (int64_t c = 0; c < runs; ++c) {
    pair_sums16<rows, native>(acc, x, in, as + c * in * 16, in / 2);
    for (int r = 0; r < rows; ++r) store16(acc[r], u + r * ranks + c * 16);
  }
  for (int64_t m = 0; m < modules; ++m, seg += 6) {
    const int64_t k0 = static_cast<int64_t>(seg[0]), pairs = (static_cast<int64_t>(seg[1]) - k0 + 1) / 2;
    const int64_t o0 = static_cast<int64_t>(seg[2]), o1 = static_cast<int64_t>(seg[3]);
    const float scale = static_cast<float>(seg[4]);
    const at::BFloat16* blocks = bs + static_cast<int64_t>(seg[5]);
    for (int64_t o = o0; o < o1; o += 16, blocks += pairs * 32) {
      pair_sums16<rows, native>(acc, u + k0, ranks, blocks, pairs);
      const int64_t width = std::min<int64_t>(16, o1 - o);
      for (int r = 0; r < rows; ++r) {
        at::BFloat16* target = ys + r * out + o;
        if (width == 16) {
          store16(widen16(target) + round16(round16(acc[r]) * scale), target);
        } else {
          for (int64_t l = 0; l < width; ++l)
            target[l] = at::BFloat16(widen(target[l]) + round_bf16(round_bf16(acc[r][l]) * scale));
        }
      }
    }
  }
}

// y = x W^T for a few rows of x (bfloat16, at most 8; with the tile registers tile_product_rows below
// takes up to 16) and W in the pairs layout (runs, pairs, 16, 2;
// rlhf.decode._pairs_of_16 of W zero-padded): y's first `out` columns, bfloat16. Each thread takes a
// contiguous share of the runs of 16 output columns, so the weights stream from memory on every core
// (for the bundled model's 30 layers at 4 rows: 4.9 ms a token where oneDNN's packed product takes
// 6.4, streaming about 33 GB/s; a token at batch 4 10.2 ms instead of 12.0, at 8 16.1 instead of 17.0).
static inline void store_run(const floats16& acc, at::BFloat16* y, int64_t width) {
  if (width == 16) {
    store16(acc, y);
  } else {
    for (int64_t l = 0; l < width; ++l) y[l] = at::BFloat16(acc[l]);
  }
}

#if defined(__AVX512BF16__)
// `runs` runs of sixteen columns at once (their weights `pairs` x 32 apart): each row's broadcast pair
// of x serves every run. The LM head (49,152 x 576) at 4 rows: 1.12 ms against 1.37 a run at a time
// (1.00 at 1 row, where the weights' bytes bound it); at 8 rows 2.06 against 2.38, where vdpbf16ps's
// throughput bounds it on two cores.
template <int rows, int runs>
static inline void pair_sums16_runs(floats16 (&acc)[rows][runs], const at::BFloat16* x, int64_t xstride,
                                    const at::BFloat16* m, int64_t pairs) {
  __m512 sums[rows][runs];
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < runs; ++j) sums[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh w[runs];
    for (int j = 0; j < runs; ++j) w[j] = (__m512bh)_mm512_loadu_si512(m + j * pairs * 32 + p * 32);
    for (int r = 0; r < rows; ++r) {
      int32_t x0;
      std::memcpy(&x0, x + r * xstride + 2 * p, 4);
      const __m512bh xs = (__m512bh)_mm512_set1_epi32(x0);
      for (int j = 0; j < runs; ++j) sums[r][j] = _mm512_dpbf16_ps(sums[r][j], xs, w[j]);
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < runs; ++j) std::memcpy(&acc[r][j], &sums[r][j], sizeof sums[r][j]);
}
#endif

template <int rows>
static void pair_product_rows(const at::BFloat16* x, int64_t in, const at::BFloat16* w, int64_t pairs,
                              at::BFloat16* y, int64_t out, int64_t c0, int64_t c1) {
  int64_t c = c0;
#if defined(__AVX512BF16__)
  constexpr int runs = 4;  // measured against 1 and 2 (and two chains per sum) at 1, 4 and 8 rows: the fastest
  floats16 sums[rows][runs];
  for (; c + runs <= c1; c += runs) {
    pair_sums16_runs<rows, runs>(sums, x, in, w + c * pairs * 32, pairs);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < runs; ++j)
        store_run(sums[r][j], y + r * out + (c + j) * 16, std::min<int64_t>(16, out - (c + j) * 16));
  }
#endif
  floats16 acc[rows];
  for (; c < c1; ++c) {
    pair_sums16<rows, true>(acc, x, in, w + c * pairs * 32, pairs);
    for (int r = 0; r < rows; ++r) store_run(acc[r], y + r * out + c * 16, std::min<int64_t>(16, out - c * 16));
  }
}

#pragma GCC pop_options

#if defined(RLHF_AMX)
// Whether this process may use the processor's tile registers (AMX): Linux hands their state to a
// process only on request (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, kernel 5.16 on);
// asked once. Off with RLHF_DECODE_AMX=0.
static bool amx_permitted() {
  static const bool permitted = [] {
    const char* off = std::getenv("RLHF_DECODE_AMX");
    if (off != nullptr && std::string(off) == "0") return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return permitted;
}

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// pair_product_rows with the tile registers (AMX), for up to 16 rows and a width of whole blocks of
// 32 (`pairs` a multiple of 16): four runs of sixteen columns at a time, each a tile of sums (rows x 16
// floats, tiles 0 to 3), over blocks of 16 pairs: x's block (rows x 32 bfloat16, tile 4) times each
// run's block (16 pairs x 16 columns x 2, the pairs layout as it is: tiles 5 to 7). The products run at
// the weights' streaming speed at any of these row counts: the LM head (49,152 x 576) in 1.06 ms at 1,
// 4, 8 and 16 rows, where vdpbf16ps took 1.12 at 4 rows and 2.06 at 8; the remaining runs as before.
static void tile_product_rows(const at::BFloat16* x, int64_t in, const at::BFloat16* w, int64_t pairs,
                              at::BFloat16* y, int64_t out, int64_t c0, int64_t c1, int rows) {
  TileConfig config{};
  config.palette = 1;
  for (int t = 0; t < 5; ++t) {
    config.rows[t] = static_cast<uint8_t>(rows);
    config.colsb[t] = 64;
  }
  for (int t = 5; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  const int64_t blocks = pairs / 16, run = pairs * 32;
  alignas(64) float sums[16 * 64];
  int64_t c = c0;
  for (; c + 4 <= c1; c += 4) {
    const at::BFloat16* b = w + c * run;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t q = 0; q < blocks; ++q) {
      _tile_loadd(4, x + q * 32, in * 2);
      _tile_loadd(5, b + q * 512, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, b + run + q * 512, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(7, b + 2 * run + q * 512, 64);
      _tile_dpbf16ps(2, 4, 7);
      _tile_loadd(5, b + 3 * run + q * 512, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
    _tile_stored(0, sums, 256);
    _tile_stored(1, sums + 16, 256);
    _tile_stored(2, sums + 32, 256);
    _tile_stored(3, sums + 48, 256);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < 4; ++j) {
        floats16 acc;
        std::memcpy(&acc, sums + r * 64 + j * 16, sizeof acc);
        store_run(acc, y + r * out + (c + j) * 16, std::min<int64_t>(16, out - (c + j) * 16));
      }
  }
  _tile_release();
  floats16 acc[1];
  for (; c < c1; ++c)  // the last runs, one at a time and a row at a time
    for (int r = 0; r < rows; ++r) {
      pair_sums16<1, true>(acc, x + r * in, in, w + c * run, pairs);
      store_run(acc[0], y + r * out + c * 16, std::min<int64_t>(16, out - c * 16));
    }
}
#endif

// The most rows pair_product takes: 16 with the tile registers, 8 with vdpbf16ps, else none (0).
static int64_t pair_rows() {
#if defined(RLHF_AMX)
  if (amx_permitted()) return 16;
#endif
#if defined(__AVX512BF16__)
  return 8;
#else
  return 0;
#endif
}

// Whether pair_product takes `rows` rows of x for `w` (pairs layout): up to 16 where the tile registers
// take its width (whole blocks of 32), up to 8 with vdpbf16ps.
static bool pair_fits(int64_t rows, const Tensor& w) {
  return w.numel() > 0 && rows <= (w.size(1) % 16 == 0 ? pair_rows() : std::min<int64_t>(pair_rows(), 8));
}

// `tiles` false: the vdpbf16ps loops even where the tile registers are there (tests compare the two).
static Tensor pair_product(const Tensor& x, const Tensor& w, int64_t out, bool tiles = true) {
  const int64_t runs = w.size(0), pairs = w.size(1), in = pairs * 2, width = x.size(-1), rows = x.numel() / width;
  bool amx = false;
#if defined(RLHF_AMX)
  amx = tiles && amx_permitted() && pairs % 16 == 0 && rows <= 16;
#endif
  TORCH_CHECK((amx || rows <= 8) && in - width < 2 && w.is_contiguous() && x.is_contiguous() && runs * 16 >= out,
              "decode step: pair product layouts");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  Tensor y = at::empty(shape, x.options());
  Tensor xs = x;
  if (width != in) {  // an odd width: a zero after each row, so the pairs line up
    xs = at::zeros({rows, in}, x.options());
    xs.narrow(1, 0, width).copy_(x.reshape({rows, width}));
  }
  const at::BFloat16* xp = xs.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const int threads = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#if defined(_OPENMP)
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int t = 0, team = 1;
#endif
    const int64_t c0 = runs * t / team, c1 = runs * (t + 1) / team;
#if defined(RLHF_AMX)
    if (amx) {
      tile_product_rows(xp, in, wp, pairs, yp, out, c0, c1, static_cast<int>(rows));
    } else
#endif
    switch (rows) {
      case 8: pair_product_rows<8>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 7: pair_product_rows<7>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 6: pair_product_rows<6>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 5: pair_product_rows<5>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 4: pair_product_rows<4>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 3: pair_product_rows<3>(xp, in, wp, pairs, yp, out, c0, c1); break;
      case 2: pair_product_rows<2>(xp, in, wp, pairs, yp, out, c0, c1); break;
      default: pair_product_rows<1>(xp, in, wp, pairs, yp, out, c0, c1); break;
    }
  }
  return y;
}

// rlhf.ppo.rollout.top_exact_logits for a few rows (as many as pair_fits) with the head in the pairs layout: the
// logits from one bfloat16 product (`pairs`: the head as rlhf.decode._pair_layout, `vocab` rows), then
// each row's `k` largest recomputed in float32 from `exact` (the head, float32, (vocab, width)) and
// `hidden` (float32). The selection is one pass per row keeping the k largest in a heap (few entries
// ever enter it), where torch's topk, the gather and the scatter took 0.4 of the head's 1.6 ms at
// batch 4; the product streams the head on every core, as the step's own product does.
static Tensor head_logits(const Tensor& hidden, const Tensor& pairs, const Tensor& exact, int64_t k) {
  const int64_t width = hidden.size(-1), rows = hidden.numel() / width, vocab = exact.size(0);
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && exact.scalar_type() == at::kFloat && exact.is_contiguous() &&
              exact.size(1) == width && k > 0, "decode head: layouts");
  const Tensor h = hidden.reshape({rows, width}).contiguous();
  const Tensor logits = pair_product(h.to(at::kBFloat16), pairs, vocab).to(at::kFloat);
  k = std::min(k, vocab);
  float* lp = logits.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const float* ep = exact.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<std::pair<float, int64_t>> heap(k);
    const auto larger = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return a.first > b.first;  // a min-heap: the smallest kept entry on top
    };
    for (int64_t r = r0; r < r1; ++r) {
      float* row = lp + r * vocab;
      for (int64_t j = 0; j < k; ++j) heap[j] = {row[j], j};
      std::make_heap(heap.begin(), heap.end(), larger);
      float least = heap.front().first;
      for (int64_t j = k; j < vocab; ++j) {
        if (row[j] > least) {
          std::pop_heap(heap.begin(), heap.end(), larger);
          heap.back() = {row[j], j};
          std::push_heap(heap.begin(), heap.end(), larger);
          least = heap.front().first;
        }
      }
      const float* x = hp + r * width;
      for (const auto& entry : heap) {
        const float* e = ep + entry.second * width;
        floats16 acc{};
        int64_t t = 0;
        for (; t + 16 <= width; t += 16) {
          floats16 a, b;
          std::memcpy(&a, e + t, sizeof a);
          std::memcpy(&b, x + t, sizeof b);
          acc += a * b;
        }
        float sum = 0.f;
        for (int l = 0; l < 16; ++l) sum += acc[l];
        for (; t < width; ++t) sum += e[t] * x[t];
        row[entry.second] = sum;
      }
    }
  });
  std::vector<int64_t> shape(hidden.sizes().begin(), hidden.sizes().end());
  shape.back() = vocab;
  return logits.view(shape);
}

// `native` false: the portable loops even where vdpbf16ps is there (tests compare the two).
static void adapt(const Tensor& x, Tensor& y, const Tensor& a, const Tensor& b, const Tensor& segments,
                  bool native = true) {
  if (a.numel() == 0) return;
  const int64_t runs = a.size(0), in = a.size(1) * 2, width = x.size(-1), rows = x.numel() / width;
  const int64_t out = y.numel() / rows;
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous() && a.is_contiguous() && b.is_contiguous() &&
              a.dim() == 4 && in - width < 2 && segments.size(1) == 6, "decode step: adapter layouts");
  // x with an even row stride (a zero after an odd width); u zero where no row of A is (odd ranks)
  std::vector<at::BFloat16> xs(rows * in, at::BFloat16(0.0f)), u(rows * runs * 16, at::BFloat16(0.0f));
  const at::BFloat16* x0 = x.data_ptr<at::BFloat16>();
  for (int64_t r = 0; r < rows; ++r) std::memcpy(xs.data() + r * in, x0 + r * width, width * sizeof(at::BFloat16));
  const at::BFloat16* as = a.data_ptr<at::BFloat16>();
  const at::BFloat16* bs = b.data_ptr<at::BFloat16>();
  const double* seg = segments.data_ptr<double>();
  at::BFloat16* ys = y.data_ptr<at::BFloat16>();
  const int64_t modules = segments.size(0);
#if defined(__AVX512BF16__)
  const bool fast = native;
#else
  const bool fast = false;
#endif
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const at::BFloat16* xr = xs.data() + r0 * in;
    at::BFloat16* yr = ys + r0 * out;
    at::BFloat16* ur = u.data() + r0 * runs * 16;
    const int64_t n = std::min<int64_t>(4, rows - r0);
#define RLHF_ADAPT(R) (fast ? adapt_rows<R, true>(xr, yr, as, bs, seg, modules, in, runs, out, ur) \
                            : adapt_rows<R, false>(xr, yr, as, bs, seg, modules, in, runs, out, ur))
    if (n == 4) RLHF_ADAPT(4); else if (n == 3) RLHF_ADAPT(3); else if (n == 2) RLHF_ADAPT(2); else RLHF_ADAPT(1);
#undef RLHF_ADAPT
  }
}

// rlhf.decode.Adapter.refresh: the modules' current A and B (any floating dtype and strides) copied into
// the adapter's bfloat16 layouts: a_rows (A stacked from row k0 of each module), b (B block-diagonal,
// times b_times: a power of two, so exactly),
// a_blocks (_pairs_of_16(a_rows)) and b_blocks (each module's _pairs_of_16 of its padded B). Only
// where a module's values go is written: the zeros around them stay from when the adapter was made.
static void lay_out(const std::vector<Tensor>& as, const std::vector<Tensor>& bs, const Tensor& segments,
                    Tensor a_rows, Tensor b, Tensor a_blocks, Tensor b_blocks, double b_times) {
  TORCH_CHECK(a_rows.is_contiguous() && b.is_contiguous() && a_blocks.is_contiguous() && b_blocks.is_contiguous() &&
              a_rows.size(1) % 2 == 0 && segments.size(0) == static_cast<int64_t>(as.size()), "adapter layouts");
  const double* seg = segments.data_ptr<double>();
  at::BFloat16* rows = a_rows.data_ptr<at::BFloat16>();
  at::BFloat16* diag = b.data_ptr<at::BFloat16>();
  at::BFloat16* blocks = b_blocks.data_ptr<at::BFloat16>();
  const int64_t row_width = a_rows.size(1), ranks = b.size(1);
  for (size_t m = 0; m < as.size(); ++m, seg += 6) {
    // (ATen's conversion to bfloat16 is vectorised; the loops below only move values)
    const Tensor a = as[m].to(at::kBFloat16).contiguous(), bm = bs[m].to(at::kBFloat16).contiguous();
    const int64_t k0 = static_cast<int64_t>(seg[0]), rank = a.size(0), in = a.size(1);
    const int64_t o0 = static_cast<int64_t>(seg[2]), out = bm.size(0), pairs = (rank + 1) / 2;
    const at::BFloat16* av = a.data_ptr<at::BFloat16>();
    const at::BFloat16* bv = bm.data_ptr<at::BFloat16>();
    for (int64_t i = 0; i < rank; ++i)
      std::memcpy(rows + (k0 + i) * row_width, av + i * in, in * sizeof(at::BFloat16));
    at::BFloat16* mine = blocks + static_cast<int64_t>(seg[5]);
    const Tensor scaled = b_times == 1.0 ? bm : (bs[m].to(at::kFloat) * b_times).to(at::kBFloat16).contiguous();
    const at::BFloat16* sv = scaled.data_ptr<at::BFloat16>();
    for (int64_t i = 0; i < out; ++i) {
      std::memcpy(diag + (o0 + i) * ranks + k0, sv + i * rank, rank * sizeof(at::BFloat16));
      // each pair of B's columns side by side: one 32-bit word (the last of an odd rank: one value)
      at::BFloat16* to = mine + ((i / 16) * pairs * 16 + i % 16) * 2;
      for (int64_t k = 0; k < rank; k += 2, to += 32)
        std::memcpy(to, bv + i * rank + k, std::min<int64_t>(2, rank - k) * sizeof(at::BFloat16));
    }
  }
  // a_blocks[c][p][j][e] = a_rows[16 c + j][2 p + e]
  at::BFloat16* ab = a_blocks.data_ptr<at::BFloat16>();
  const int64_t runs = a_rows.size(0) / 16, row_pairs = row_width / 2;
  for (int64_t c = 0; c < runs; ++c)
    for (int64_t p = 0; p < row_pairs; ++p)
      for (int64_t j = 0; j < 16; ++j) {
        const at::BFloat16* from = rows + (16 * c + j) * row_width + 2 * p;
        at::BFloat16* to = ab + ((c * row_pairs + p) * 16 + j) * 2;
        to[0] = from[0];
        to[1] = from[1];
      }
}

static bool native_pairs() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// rlhf.decode._forward for one token per row (tokens == 1), over float32 caches.
// weights: per layer input_norm, qkv, o, post_norm, gate_up, down; then the final norm.
// adapters: per layer and product (qkv, o, gate_up, down) an Adapter's a_blocks, b_blocks, segments (empty: none).
// pairs: per layer and product the matrix in the pairs layout for pair_product (empty: none), used where
// pair_fits; or no tensors at all.
Tensor step(Tensor hidden, const std::vector<Tensor>& weights, const std::vector<Tensor>& pairs,
            const std::vector<Tensor>& adapters,
            const Tensor& cos, const Tensor& sin, const std::vector<Tensor>& keys,
            const std::vector<Tensor>& values, int64_t start, const Tensor& masked, int64_t heads,
            int64_t kv_heads, int64_t head_dim, double eps) {
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat && cos.stride(-1) == 1 &&
              sin.stride(-1) == 1 && sin.stride(0) == cos.stride(0), "decode step: unexpected layouts");
  hidden = hidden.contiguous().clone();
  const int64_t batch = hidden.size(0), width = hidden.size(-1), group = heads / kv_heads;
  const int64_t q_width = heads * head_dim, end = start + 1;
  const double scale = std::pow(static_cast<double>(head_dim), -0.5);
  Tensor x = at::empty({batch, 1, width}, hidden.options().dtype(at::kBFloat16));
  Tensor attended = at::empty({batch, 1, q_width}, x.options());
  Tensor q = at::empty({batch * kv_heads, group, head_dim}, hidden.options());
  Tensor totals = at::empty({batch * kv_heads * group}, hidden.options());
  for (size_t i = 0; i < keys.size(); ++i) {
    const Tensor* w = &weights[6 * i];
    // the layer's k-th product (k = 0..3: qkv, o, gate_up, down; weights w[1], w[2], w[4], w[5])
    auto matrix = [&](const Tensor& input, int k, const Tensor& weight) -> Tensor {
      if (!pairs.empty() && pair_fits(batch, pairs[4 * i + k]))
        return pair_product(input, pairs[4 * i + k], weight.size(0));
      return product(input, weight).contiguous();
    };
    const Tensor* lora = &adapters[12 * i];
    Tensor k_cache = keys[i], v_cache = values[i];
    TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.scalar_type() == at::kFloat,
                "decode step: caches must be contiguous float32");
    norm_rows(hidden, w[0], eps, x);
    Tensor qkv = matrix(x, 0, w[1]);
    adapt(x, qkv, lora[0], lora[1], lora[2]);
    rotate_into(qkv, cos, sin, q, k_cache, v_cache, start, heads, kv_heads, head_dim);
    // rlhf.decode._attend_one, as CPU flash attention: scores in float32 from bfloat16 values, their
    // exponentials less the row's largest rounded to bfloat16 for the float32 product with the values,
    // divided by the exponentials' float32 sum, rounded to bfloat16.
    Tensor k = k_cache.narrow(2, 0, end).view({batch * kv_heads, end, head_dim});
    Tensor v = v_cache.narrow(2, 0, end).view({batch * kv_heads, end, head_dim});
    Tensor weights = at::bmm(q, k.transpose(1, 2));
    exponentials(weights, masked, kv_heads * group, static_cast<float>(scale), totals);
    const Tensor weighted = at::bmm(weights, v);
    const float* m = weighted.data_ptr<float>();
    const float* t = totals.data_ptr<float>();
    at::BFloat16* a = attended.data_ptr<at::BFloat16>();
    for (int64_t r = 0; r < batch * kv_heads * group; ++r)
      for (int64_t j = 0; j < head_dim; ++j) a[r * head_dim + j] = at::BFloat16(m[r * head_dim + j] / t[r]);
    Tensor o = matrix(attended, 1, w[2]);
    adapt(attended, o, lora[3], lora[4], lora[5]);
    add_into(hidden, o);
    norm_rows(hidden, w[3], eps, x);
    Tensor both = matrix(x, 2, w[4]);
    adapt(x, both, lora[6], lora[7], lora[8]);
    std::vector<Tensor> gate_up = both.chunk(2, -1);
    Tensor mixed = (at::silu(gate_up[0]) * gate_up[1]).contiguous();
    Tensor down = matrix(mixed, 3, w[5]);
    adapt(mixed, down, lora[9], lora[10], lora[11]);
    add_into(hidden, down);
  }
  Tensor out = at::empty({batch, width}, hidden.options());
  norm_rows(hidden, weights.back(), eps, out);
  return out;
}

// The GIL is released during the step (as torch's own bindings release it around each operation), so
// the app's server threads answer while a background generation runs.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, py::call_guard<py::gil_scoped_release>());
  m.def("adapt", [](const Tensor& x, Tensor y, const Tensor& a, const Tensor& b, const Tensor& segments,
                    bool native) {
    adapt(x, y, a, b, segments, native);
    return y;
  });
  m.def("native_pairs", &native_pairs);
  m.def("pair_product", &pair_product, py::arg("x"), py::arg("w"), py::arg("out"), py::arg("tiles") = true);
  m.def("pair_rows", &pair_rows);
  m.def("pair_fits", &pair_fits);
  m.def("head_logits", &head_logits, py::call_guard<py::gil_scoped_release>());
  m.def("lay_out", &lay_out);
}
"""

_lock = threading.Lock()
_module = None
_failed: str | None = None


def _processor() -> str:
    """The processor's model and instruction-set flags (Linux), or the platform's description elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.processor() + platform.machine()


STALE_BUILD_DAYS = 14


def prune_builds(root: str, keep: str, days: float = STALE_BUILD_DAYS) -> list[str]:
    """Remove the extension's other build folders under ``root`` that no checkout has used for ``days``
    (each build touches its folder when loaded; a new version of the source, another environment or
    processor makes a new folder, and the old ones would pile up); returns the names removed."""
    import shutil
    import time

    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    cutoff = time.time() - days * 86400
    for entry in entries:
        if not entry.name.startswith("rlhf_decode_step_") or entry.name == keep or not entry.is_dir():
            continue
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path)
                removed.append(entry.name)
        except OSError:
            pass  # another process removed or is using it
    return removed


def _build():
    from torch.utils.cpp_extension import load_inline

    # ninja comes with the project's pinned dependencies, in the interpreter's scripts folder, which
    # is not on PATH when the venv is not activated (torch's loader looks for it there).
    scripts = sysconfig.get_path("scripts")
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    from rlhf.runtime import cache_home

    # where rlhf.runtime.apply_offline_env points torch's extensions, whether or not it ran (tests, imports)
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache_home(), "torch_extensions")
    # one folder per version of the source, per environment and per processor: two checkouts on one
    # machine never rebuild each other's (the build reads its environment's torch headers and library, so
    # one folder shared by two virtual environments was rebuilt, about 20 s, whenever the other had used
    # it last), and a cache shared between machines never hands one a build for another's instructions
    # (-march=native: the adapter loops use the widest vectors this processor has)
    identity = SOURCE + _processor() + sys.prefix + torch.__version__
    name = "rlhf_decode_step_" + hashlib.sha256(identity.encode()).hexdigest()[:12]
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    os.utime(folder)  # marks it used: prune_builds keeps what any checkout used recently
    prune_builds(root, keep=name)
    return load_inline(name=name, cpp_sources=[SOURCE],
                       extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
                       extra_ldflags=["-fopenmp"], build_directory=folder, verbose=False)


def module():
    """The compiled extension, building it on first use; None (said once) when it cannot be built."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is None and _failed is None:
            if os.environ.get("RLHF_DECODE_NATIVE", "1") == "0":
                _failed = "RLHF_DECODE_NATIVE=0"
            else:
                try:
                    _module = _build()
                except Exception as exc:  # no compiler, no headers: the Python loop does the same work
                    last_line = (str(exc).strip().splitlines() or [""])[-1]  # a compiler's output ends with the cause
                    _failed = f"{type(exc).__name__}: {last_line}"
                    log.warning("generation: the fast loop's C++ step could not be built (%s); running its "
                                "steps in Python", _failed)
    return _module


def available() -> bool:
    return module() is not None


def describe() -> str:
    """How the fast loop's one-token steps run here, for the logs."""
    native = module()
    if native is None:
        return f"its steps in Python ({_failed})"
    rows = native.pair_rows()
    if rows > 8:
        return f"its steps in C++, their products on the processor's tile registers (AMX) up to {rows} rows"
    if rows:
        return f"its steps in C++, their products with AVX512-BF16 up to {rows} rows"
    return "its steps in C++, their products by oneDNN"


def float_caches(keys, values) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """float32 copies of the bfloat16 key/value caches (the same values) for ``step``, which reads them
    without converting the whole prefix again at every token."""
    return [k.float() for k in keys], [v.float() for v in values]


def step(w, hidden: torch.Tensor, cos, sin, keys, values, start: int, masked) -> torch.Tensor:
    """``rlhf.decode._forward`` for one token per row, in C++ (check ``available()`` first): ``hidden``
    the new tokens' embeddings (batch, 1, width) float32, ``keys``/``values`` float32 caches from
    ``float_caches``, written at slot ``start``; ``masked`` (batch, 1, 1, start + 1) True where a key is
    hidden. Returns the final normed hidden state (batch, width)."""
    flat = w.__dict__.get("_native_weights")
    if flat is None:
        none = [torch.empty(0)] * 3
        flat = ([t for layer in w.layers for t in (layer.input_norm, layer.qkv, layer.o, layer.post_norm,
                                                   layer.gate_up, layer.down)] + [w.final_norm],
                [t for layer in w.layers
                 for adapter in (layer.qkv_adapter, layer.o_adapter, layer.gate_up_adapter, layer.down_adapter)
                 for t in ((adapter.a_blocks, adapter.b_blocks, adapter.segments) if adapter is not None else none)])
        w.__dict__["_native_weights"] = flat
    # the C++ product for a few rows where the processor multiplies bfloat16 pairs (rlhf.decode.PackedWeights.step_pairs)
    pairs = w.step_pairs() if hidden.shape[0] <= module().pair_rows() else []
    return module().step(hidden, flat[0], pairs, flat[1], cos, sin, keys, values, start, masked, w.heads,
                         w.kv_heads, w.head_dim, float(w.eps))
