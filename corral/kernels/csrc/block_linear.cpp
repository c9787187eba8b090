// Linear layers on block-quantized weights (see corral/quantization/blockwise.py), without a float copy:
// each weight row is split along the input into groups with a float16 scale (and, for int4, a float16 min):
//   int4: w = scale * q + min, q in 0..15 (llama.cpp's Q4_1; Q4_0 is min = -8 * scale)
//   int8: w = scale * q, q in -127..127   (llama.cpp's Q8_0)
// Activations are quantized per row in blocks of 32 (symmetric int8, one float scale per block), so
//   y = sum over blocks b of  w_scale * x_scale * dot(q_w, q_x)  +  w_min * sum(x over b)
// with the dot products in integers. The min term uses the exact float sum of x, not its quantized one.
// With 16-bit activations each block is rounded to 254 * q + r (q, r in -127..127, one scale): the plain
// int8 rounding q plus a second int8 plane r for its residual, so the same byte-wise dot products run twice
// and combine exactly in int32 as 254 * dot(q_w, q) + dot(q_w, r). That removes the activation rounding
// error (which costs an int4 model about 1% perplexity) for twice the integer work.
//
// Layout (corral/kernels/block_linear.py interleaves it at load time): weight rows come in groups of 8,
// and each 32-byte chunk holds 4 bytes of each of the 8 rows, so one byte-wise multiply-add of a chunk
// with 4 activation bytes broadcast gives 8 rows' partial dot products in 8 lanes, with no horizontal
// reduction: an activation row is read once per 8 weight rows, and a tile of weights is unpacked once for
// up to 4 activation rows.
//   int4 values: [N / 8][blocks][4 chunks][8 rows][4 bytes]; chunk c of a row holds bytes 4c..4c+3 of its
//                16-byte block, whose low nibbles are elements 4c..4c+3 and high nibbles 16+4c..16+4c+3
//   int8 values: [N / 8][blocks][8 chunks][8 rows][4 bytes]; chunk c holds elements 4c..4c+3
//   scales, mins: [N / 8][K / group_size][8 rows] float16
// Every output is accumulated block by block in the same order, whatever the other rows of the batch are
// and whichever tile computes it, so a row's result does not depend on its batch. The torch reference in
// corral/kernels/block_linear.py defines the result (equal within float summation order).
//
// At run time the widest loops the CPU has are picked: AVX-512 VNNI (vpdpbusd on 256-bit registers: Zen 4,
// Intel since Ice Lake), AVX2 (+FMA, F16C), or a portable loop. No FMA contraction outside the explicit
// intrinsics, so every instantiation rounds alike, and the two SIMD loops give bit-identical results.

#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;     // activation block: 32 int8 values, one scale
constexpr int64_t kLanes = 8;      // weight rows interleaved
constexpr int64_t kRowTile = 4;    // activation rows sharing one unpacked weight tile
constexpr int64_t kRowPanel = 64;  // activation rows kept hot in cache while a thread walks its weights

constexpr int kResidualRadix = 254;  // a 16-bit activation is kResidualRadix * q + r

struct QuantizedActivations {
  const int8_t* q;         // [rows, blocks * 32]
  const int8_t* residual;  // 16-bit activations: the second plane r, like q; else nullptr
  const float* scale;      // [rows, blocks]: the scale of one unit of q, or of r with 16 bits
  const float* sum;    // [rows, blocks]: exact float sum of each block of x
  int64_t blocks;
};

struct BlockWeights {
  const uint8_t* values;  // see the layout above
  const uint16_t* scale;  // float16 bits
  const uint16_t* min;    // float16 bits; int4 only
  int64_t blocks, groups, blocks_per_group;
  int bits;

  int64_t chunks() const { return bits == 4 ? 4 : 8; }
  const uint8_t* tile(int64_t g, int64_t b) const { return values + ((g * blocks + b) * chunks()) * kBlock; }
  int64_t group_offset(int64_t g, int64_t b) const { return (g * groups + b / blocks_per_group) * kLanes; }
};

inline float half_to_float(uint16_t bits) { return c10::detail::fp16_ieee_to_fp32_value(bits); }

// ---- activations ----------------------------------------------------------------------------------------

// residual == nullptr: 8-bit activations (q only); else 16-bit ones (see the top of this file).
void quantize_row_portable(const float* x, int64_t blocks, int8_t* q, int8_t* residual, float* scale, float* sum) {
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kBlock;
    float absmax = 0.f, total = 0.f;
    for (int64_t i = 0; i < kBlock; ++i) {
      absmax = std::max(absmax, std::fabs(xb[i]));
      total += xb[i];
    }
    const float d = absmax / 127.f;
    const float inverse = d > 0.f ? 1.f / d : 0.f;
    for (int64_t i = 0; i < kBlock; ++i) {
      const float scaled = xb[i] * inverse;
      const float rounded = std::nearbyint(scaled);
      q[b * kBlock + i] = static_cast<int8_t>(rounded);
      if (residual != nullptr) {
        residual[b * kBlock + i] = static_cast<int8_t>(std::nearbyint((scaled - rounded) * float(kResidualRadix)));
      }
    }
    scale[b] = residual != nullptr ? d / float(kResidualRadix) : d;
    sum[b] = total;
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 rounded int32 lanes of each of 4 registers -> 32 int8 in order.
__attribute__((target("avx2,fma,f16c")))
inline void store_int8(int8_t* out, __m256i i0, __m256i i1, __m256i i2, __m256i i3) {
  const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the lane-wise packs
  const __m256i i01 = _mm256_packs_epi32(i0, i1), i23 = _mm256_packs_epi32(i2, i3);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i01, i23), in_order));
}

// The residual plane of scaled values t whose rounding is q: round((t - q) * 254).
__attribute__((target("avx2,fma,f16c")))
inline __m256i residual_of(__m256 scaled, __m256i rounded) {
  const __m256 radix = _mm256_set1_ps(float(kResidualRadix));
  return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(scaled, _mm256_cvtepi32_ps(rounded)), radix));
}

// The same rounding as the portable loop (multiply by the inverse scale, round half to even).
__attribute__((target("avx2,fma,f16c")))
void quantize_row_avx2(const float* x, int64_t blocks, int8_t* q, int8_t* residual, float* scale, float* sum) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kBlock;
    const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    const float absmax =
        horizontal_max(_mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3))));
    const float d = absmax / 127.f;
    const __m256 inverse = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
    const __m256 t0 = _mm256_mul_ps(v0, inverse), t1 = _mm256_mul_ps(v1, inverse);
    const __m256 t2 = _mm256_mul_ps(v2, inverse), t3 = _mm256_mul_ps(v3, inverse);
    const __m256i q0 = _mm256_cvtps_epi32(t0), q1 = _mm256_cvtps_epi32(t1);
    const __m256i q2 = _mm256_cvtps_epi32(t2), q3 = _mm256_cvtps_epi32(t3);
    store_int8(q + b * kBlock, q0, q1, q2, q3);
    if (residual != nullptr) {
      store_int8(residual + b * kBlock, residual_of(t0, q0), residual_of(t1, q1), residual_of(t2, q2),
                 residual_of(t3, q3));
    }
    scale[b] = residual != nullptr ? d / float(kResidualRadix) : d;
    sum[b] = horizontal_sum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
  }
}

bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

bool has_avx512_vnni() {
  static const bool supported =
      has_avx2() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return supported;
}

// The dot-product loops in use: the widest the CPU has, unless narrowed by set_block_linear_isa (tests run
// every loop the CPU can).
enum class Isa { kPortable, kAvx2, kAvx512Vnni };

Isa widest_isa() { return has_avx512_vnni() ? Isa::kAvx512Vnni : has_avx2() ? Isa::kAvx2 : Isa::kPortable; }

Isa& active_isa() {
  static Isa isa = widest_isa();
  return isa;
}

void quantize_activations(const float* x, int64_t rows, int64_t K, int8_t* q, int8_t* residual, float* scale,
                          float* sum) {
  const int64_t blocks = K / kBlock;
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / K), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int8_t* row_residual = residual != nullptr ? residual + r * K : nullptr;
      if (active_isa() != Isa::kPortable) {
        quantize_row_avx2(x + r * K, blocks, q + r * K, row_residual, scale + r * blocks, sum + r * blocks);
      } else {
        quantize_row_portable(x + r * K, blocks, q + r * K, row_residual, scale + r * blocks, sum + r * blocks);
      }
    }
  });
}

// ---- portable loop ------------------------------------------------------------------------------------

// The 8 integer dot products of one activation block x with weight tile `tile`, added to dot.
void block_dots_portable(const uint8_t* tile, const int8_t* x, const BlockWeights& w, int32_t (&dot)[kLanes]) {
  for (int64_t c = 0; c < w.chunks(); ++c) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      for (int64_t k = 0; k < 4; ++k) {
        const uint8_t byte = tile[(c * kLanes + lane) * 4 + k];
        if (w.bits == 4) {
          dot[lane] += int32_t(byte & 0x0F) * x[4 * c + k] + int32_t(byte >> 4) * x[16 + 4 * c + k];
        } else {
          dot[lane] += int32_t(static_cast<int8_t>(byte)) * x[4 * c + k];
        }
      }
    }
  }
}

// Activation row m against the 8 weight rows of group g, into y[m, 8g .. 8g + 7].
void tile_portable(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y) {
  float acc[kLanes] = {};
  for (int64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* tile = w.tile(g, b);
    const int64_t start = (m * a.blocks + b) * kBlock;
    int32_t dot[kLanes] = {};
    block_dots_portable(tile, a.q + start, w, dot);
    if (a.residual != nullptr) {
      int32_t residual_dot[kLanes] = {};
      block_dots_portable(tile, a.residual + start, w, residual_dot);
      for (int64_t lane = 0; lane < kLanes; ++lane) dot[lane] = dot[lane] * kResidualRadix + residual_dot[lane];
    }
    const int64_t i = m * a.blocks + b, offset = w.group_offset(g, b);
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      acc[lane] += static_cast<float>(dot[lane]) * (half_to_float(w.scale[offset + lane]) * a.scale[i]);
      if (w.bits == 4) acc[lane] += half_to_float(w.min[offset + lane]) * a.sum[i];
    }
  }
  std::copy_n(acc, kLanes, y + g * kLanes);
}

// ---- AVX2 loops -----------------------------------------------------------------------------------------

inline int32_t four_bytes(const int8_t* x) {
  int32_t bytes;
  std::memcpy(&bytes, x, sizeof(bytes));
  return bytes;
}

// Block b's integer dot products (8 weight rows in int32 lanes, one register per activation row) into the
// float sums: acc += (w_scale * x_scale) * dot (+ w_min * x_sum for int4). Shared by the AVX2 and VNNI loops,
// so both round alike.
template <int R>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void add_block(__m256 (&acc)[R], const __m256i (&dots)[R], const QuantizedActivations& a, int64_t m,
                      const BlockWeights& w, int64_t g, int64_t b) {
  const int64_t offset = w.group_offset(g, b);
  const __m256 w_scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scale + offset)));
  for (int r = 0; r < R; ++r) {
    const int64_t i = (m + r) * a.blocks + b;
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[r]), _mm256_mul_ps(w_scale, _mm256_set1_ps(a.scale[i])), acc[r]);
  }
  if (w.bits == 4) {
    const __m256 w_min = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.min + offset)));
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(w_min, _mm256_set1_ps(a.sum[(m + r) * a.blocks + b]), acc[r]);
  }
}

template <int R>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void store_rows(const __m256 (&acc)[R], int64_t m, int64_t g, float* y, int64_t ldy) {
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + (m + r) * ldy + g * kLanes, acc[r]);
}

// The 8-bit dots of each plane (one register per activation row) -> one int32 dot per row:
// 254 * dot(q) + dot(r) for 16-bit activations. Exact: |dot(q)| <= 32 * 127 * 127, so no overflow.
template <int R, int Planes>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void combine_planes(const __m256i (&plane_dots)[Planes][R], __m256i (&dots)[R]) {
  for (int r = 0; r < R; ++r) {
    dots[r] = plane_dots[0][r];
    if constexpr (Planes == 2) {
      dots[r] = _mm256_add_epi32(_mm256_mullo_epi32(dots[r], _mm256_set1_epi32(kResidualRadix)), plane_dots[1][r]);
    }
  }
}

inline const int8_t* plane(const QuantizedActivations& a, int p, int64_t m, int64_t b) {
  return (p == 0 ? a.q : a.residual) + (m * a.blocks + b) * kBlock;
}

// Activation rows m .. m + R - 1 against the 8 weight rows of group g. Per block, each row's 8 partial sums
// are one register per activation plane: int4 codes (0..15) are the unsigned operand of maddubs, so 16
// products of at most 15 * 127 add up in int16 without saturation before one widening multiply-add.
template <int R, int Planes>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void tile_int4(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y,
                      int64_t ldy) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* tile = w.tile(g, b);
    __m256i pairs[Planes][R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) pairs[p][r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + c * kBlock));
      const __m256i low = _mm256_and_si256(packed, nibble);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
      for (int p = 0; p < Planes; ++p) {
        for (int r = 0; r < R; ++r) {
          const int8_t* x = plane(a, p, m + r, b);
          const __m256i products =
              _mm256_add_epi16(_mm256_maddubs_epi16(low, _mm256_set1_epi32(four_bytes(x + 4 * c))),
                               _mm256_maddubs_epi16(high, _mm256_set1_epi32(four_bytes(x + 16 + 4 * c))));
          pairs[p][r] = _mm256_add_epi16(pairs[p][r], products);
        }
      }
    }
    __m256i plane_dots[Planes][R], dots[R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) plane_dots[p][r] = _mm256_madd_epi16(pairs[p][r], ones);
    combine_planes<R, Planes>(plane_dots, dots);
    add_block<R>(acc, dots, a, m, w, g, b);
  }
  store_rows<R>(acc, m, g, y, ldy);
}

// int8 codes are signed: maddubs takes |q_w| and q_x with q_w's sign; a pair of products reaches
// 2 * 127 * 127, so each chunk widens to int32 at once.
template <int R, int Planes>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void tile_int8(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y,
                      int64_t ldy) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* tile = w.tile(g, b);
    __m256i plane_dots[Planes][R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) plane_dots[p][r] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + c * kBlock));
      const __m256i q_abs = _mm256_sign_epi8(q, q);
      for (int p = 0; p < Planes; ++p) {
        for (int r = 0; r < R; ++r) {
          const int8_t* x = plane(a, p, m + r, b);
          const __m256i pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(_mm256_set1_epi32(four_bytes(x + 4 * c)), q));
          plane_dots[p][r] = _mm256_add_epi32(plane_dots[p][r], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    __m256i dots[R];
    combine_planes<R, Planes>(plane_dots, dots);
    add_block<R>(acc, dots, a, m, w, g, b);
  }
  store_rows<R>(acc, m, g, y, ldy);
}

struct Avx2Loops {
  template <int R, int Planes>
  __attribute__((target("avx2,fma,f16c")))
  static void tile(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y, int64_t ldy) {
    if (w.bits == 4) {
      tile_int4<R, Planes>(a, m, w, g, y, ldy);
    } else {
      tile_int8<R, Planes>(a, m, w, g, y, ldy);
    }
  }
};

// ---- AVX-512 VNNI loops (on 256-bit registers) --------------------------------------------------------
// vpdpbusd multiplies 4 unsigned by 4 signed bytes and adds the 4 products to an int32 lane: one instruction
// per chunk in place of maddubs + add, and no int16 stage. The integer sums, and so the results, equal the
// AVX2 loops' exactly.

#define CORRAL_VNNI_TARGET "avx512vnni,avx512vl,avx2,fma,f16c"

template <int R, int Planes>
__attribute__((target(CORRAL_VNNI_TARGET), always_inline))
inline void tile_int4_vnni(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y,
                           int64_t ldy) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* tile = w.tile(g, b);
    // two sums per row and plane (low and high nibbles), so that each chain of dependent vpdpbusd is half
    // as long
    __m256i low_dots[Planes][R], high_dots[Planes][R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) low_dots[p][r] = high_dots[p][r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + c * kBlock));
      const __m256i low = _mm256_and_si256(packed, nibble);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
      for (int p = 0; p < Planes; ++p) {
        for (int r = 0; r < R; ++r) {
          const int8_t* x = plane(a, p, m + r, b);
          low_dots[p][r] = _mm256_dpbusd_epi32(low_dots[p][r], low, _mm256_set1_epi32(four_bytes(x + 4 * c)));
          high_dots[p][r] = _mm256_dpbusd_epi32(high_dots[p][r], high, _mm256_set1_epi32(four_bytes(x + 16 + 4 * c)));
        }
      }
    }
    __m256i plane_dots[Planes][R], dots[R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) plane_dots[p][r] = _mm256_add_epi32(low_dots[p][r], high_dots[p][r]);
    combine_planes<R, Planes>(plane_dots, dots);
    add_block<R>(acc, dots, a, m, w, g, b);
  }
  store_rows<R>(acc, m, g, y, ldy);
}

template <int R, int Planes>
__attribute__((target(CORRAL_VNNI_TARGET), always_inline))
inline void tile_int8_vnni(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y,
                           int64_t ldy) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* tile = w.tile(g, b);
    __m256i halves[Planes][R][2];  // even and odd chunks: shorter chains of dependent vpdpbusd
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) halves[p][r][0] = halves[p][r][1] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + c * kBlock));
      const __m256i q_abs = _mm256_sign_epi8(q, q);
      for (int p = 0; p < Planes; ++p) {
        for (int r = 0; r < R; ++r) {
          const int8_t* x = plane(a, p, m + r, b);
          halves[p][r][c & 1] = _mm256_dpbusd_epi32(halves[p][r][c & 1], q_abs,
                                                    _mm256_sign_epi8(_mm256_set1_epi32(four_bytes(x + 4 * c)), q));
        }
      }
    }
    __m256i plane_dots[Planes][R], dots[R];
    for (int p = 0; p < Planes; ++p)
      for (int r = 0; r < R; ++r) plane_dots[p][r] = _mm256_add_epi32(halves[p][r][0], halves[p][r][1]);
    combine_planes<R, Planes>(plane_dots, dots);
    add_block<R>(acc, dots, a, m, w, g, b);
  }
  store_rows<R>(acc, m, g, y, ldy);
}

struct VnniLoops {
  template <int R, int Planes>
  __attribute__((target(CORRAL_VNNI_TARGET)))
  static void tile(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t g, float* y, int64_t ldy) {
    if (w.bits == 4) {
      tile_int4_vnni<R, Planes>(a, m, w, g, y, ldy);
    } else {
      tile_int8_vnni<R, Planes>(a, m, w, g, y, ldy);
    }
  }
};

// Rows m_begin .. m_end - 1 against weight group g, kRowTile rows per tile, by Loops::tile<R, Planes>.
template <typename Loops, int Planes>
void row_tiles_of_planes(const QuantizedActivations& a, int64_t m_begin, int64_t m_end, const BlockWeights& w, int64_t g,
               float* y, int64_t ldy) {
  static_assert(kRowTile == 4, "one tile instantiation per remainder");
  int64_t m = m_begin;
  for (; m + kRowTile <= m_end; m += kRowTile) Loops::template tile<kRowTile, Planes>(a, m, w, g, y, ldy);
  switch (m_end - m) {
    case 3: Loops::template tile<3, Planes>(a, m, w, g, y, ldy); break;
    case 2: Loops::template tile<2, Planes>(a, m, w, g, y, ldy); break;
    case 1: Loops::template tile<1, Planes>(a, m, w, g, y, ldy); break;
    default: break;
  }
}

template <typename Loops>
void row_tiles(const QuantizedActivations& a, int64_t m_begin, int64_t m_end, const BlockWeights& w, int64_t g,
               float* y, int64_t ldy) {
  if (a.residual != nullptr) {
    row_tiles_of_planes<Loops, 2>(a, m_begin, m_end, w, g, y, ldy);
  } else {
    row_tiles_of_planes<Loops, 1>(a, m_begin, m_end, w, g, y, ldy);
  }
}

// Weight groups g_begin .. g_end - 1 against every activation row, a panel of rows at a time.
void groups(const QuantizedActivations& a, int64_t M, const BlockWeights& w, int64_t g_begin, int64_t g_end,
            float* y, int64_t ldy) {
  const Isa isa = active_isa();
  for (int64_t panel = 0; panel < M; panel += kRowPanel) {
    const int64_t panel_end = std::min(M, panel + kRowPanel);
    for (int64_t g = g_begin; g < g_end; ++g) {
      switch (isa) {
        case Isa::kAvx512Vnni:
          row_tiles<VnniLoops>(a, panel, panel_end, w, g, y, ldy);
          break;
        case Isa::kAvx2:
          row_tiles<Avx2Loops>(a, panel, panel_end, w, g, y, ldy);
          break;
        case Isa::kPortable:
          for (int64_t m = panel; m < panel_end; ++m) tile_portable(a, m, w, g, y + m * ldy);
          break;
      }
    }
  }
}

}  // namespace

std::string block_linear_isa() {
  switch (active_isa()) {
    case Isa::kAvx512Vnni: return "avx512_vnni";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: return "portable";
  }
  return "portable";
}

std::vector<std::string> supported_block_linear_isas() {
  std::vector<std::string> names{"portable"};
  if (has_avx2()) names.push_back("avx2");
  if (has_avx512_vnni()) names.push_back("avx512_vnni");
  return names;
}

void set_block_linear_isa(const std::string& name) {
  const Isa isa = name == "avx512_vnni" ? Isa::kAvx512Vnni : name == "avx2" ? Isa::kAvx2 : Isa::kPortable;
  TORCH_CHECK(name == "avx512_vnni" || name == "avx2" || name == "portable", "block_linear: unknown loops ", name);
  TORCH_CHECK(isa == Isa::kPortable || (isa == Isa::kAvx2 ? has_avx2() : has_avx512_vnni()),
              "block_linear: this CPU cannot run the ", name, " loops");
  active_isa() = isa;
}

at::Tensor block_linear(const at::Tensor& input,   // [M, K] float32
                        const at::Tensor& values,  // [ceil(N / 8), K / 32 * bytes of 8 row-blocks]
                        const at::Tensor& scales,  // [ceil(N / 8), K / group_size, 8] float16
                        const c10::optional<at::Tensor>& mins,  // int4: like scales
                        const c10::optional<at::Tensor>& bias,  // [N] float32
                        int64_t bits, int64_t group_size, int64_t out_features, int64_t activation_bits) {
  TORCH_CHECK(input.dim() == 2 && input.dtype() == at::kFloat, "block_linear: 2-D float32 input");
  TORCH_CHECK(bits == 4 || bits == 8, "block_linear: 4 or 8 bits");
  TORCH_CHECK(activation_bits == 8 || activation_bits == 16, "block_linear: 8- or 16-bit activations");
  TORCH_CHECK(group_size % kBlock == 0 && group_size > 0, "block_linear: group size a multiple of 32");
  const auto x = input.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = values.size(0), N = out_features;
  TORCH_CHECK(K % group_size == 0, "block_linear: input width not a multiple of the group size");
  TORCH_CHECK(G == (N + kLanes - 1) / kLanes, "block_linear: ", G, " groups of 8 rows for ", N, " outputs");
  TORCH_CHECK(values.is_contiguous() && values.dim() == 2 && values.size(1) == K * kLanes / (bits == 4 ? 2 : 1),
              "block_linear: values shape");
  TORCH_CHECK(values.dtype() == (bits == 4 ? at::kByte : at::kChar), "block_linear: values dtype");
  TORCH_CHECK(scales.is_contiguous() && scales.dtype() == at::kHalf &&
                  scales.sizes() == at::IntArrayRef({G, K / group_size, kLanes}),
              "block_linear: scales [N / 8, K / group_size, 8] float16");
  if (bits == 4) {
    TORCH_CHECK(mins.has_value() && mins->is_contiguous() && mins->dtype() == at::kHalf &&
                    mins->sizes() == scales.sizes(), "block_linear: int4 needs mins like scales");
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == N && bias->dtype() == at::kFloat, "block_linear: bias");
  }

  const int64_t blocks = K / kBlock;
  const int64_t planes = activation_bits / 8;
  auto q = at::empty({planes, M, K}, x.options().dtype(at::kChar));
  auto x_scale = at::empty({M, blocks}, x.options());
  auto x_sum = at::empty({M, blocks}, x.options());
  int8_t* residual = planes == 2 ? q.data_ptr<int8_t>() + M * K : nullptr;
  quantize_activations(x.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), residual, x_scale.data_ptr<float>(),
                       x_sum.data_ptr<float>());
  const QuantizedActivations a{q.data_ptr<int8_t>(), residual, x_scale.data_ptr<float>(), x_sum.data_ptr<float>(),
                               blocks};
  const BlockWeights w{reinterpret_cast<const uint8_t*>(values.data_ptr()),
                       reinterpret_cast<const uint16_t*>(scales.data_ptr()),
                       bits == 4 ? reinterpret_cast<const uint16_t*>(mins->data_ptr()) : nullptr,
                       blocks, K / group_size, group_size / kBlock, static_cast<int>(bits)};

  auto y = at::empty({M, G * kLanes}, x.options());
  float* y_ptr = y.data_ptr<float>();
  // Threads split the weight groups: each reads its share of the weights once per panel of rows.
  at::parallel_for(0, G, 1, [&](int64_t g_begin, int64_t g_end) {
    groups(a, M, w, g_begin, g_end, y_ptr, G * kLanes);
  });
  if (G * kLanes != N) y = y.narrow(1, 0, N).contiguous();  // the padding rows of the last group
  if (bias.has_value()) y.add_(bias.value());
  return y;
}
