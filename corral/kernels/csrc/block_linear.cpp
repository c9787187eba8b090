// Linear layers on block-quantized weights (see corral/quantization/blockwise.py), without a float copy:
// each weight row is split along the input into groups with a float16 scale (and, for int4, a float16 min):
//   int4: w = scale * q + min, q in 0..15 (llama.cpp's Q4_1; Q4_0 is min = -8 * scale)
//   int8: w = scale * q, q in -127..127   (llama.cpp's Q8_0)
// Activations are quantized per row in blocks of 32 (symmetric int8, one float scale per block), so
//   y = sum over blocks b of  w_scale * x_scale * dot(q_w, q_x)  +  w_min * sum(x over b)
// with the dot products in integers. The min term uses the exact float sum of x, not its quantized one.
// Each output element is computed by the same instruction sequence whatever the other rows of the batch
// are, so a row's result does not depend on its batch. The torch reference in
// corral/kernels/block_linear.py defines the result (equal within float summation order).
//
// AVX2 (+FMA, F16C) loops are picked at run time; a portable loop serves other CPUs. No FMA contraction
// outside the explicit intrinsics, so every instantiation rounds alike.

#pragma GCC optimize("fp-contract=off")

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kBlock = 32;        // activation block: 32 int8 values, one scale
constexpr int64_t kRowTile = 4;       // activation rows sharing one unpacked weight block
constexpr int64_t kRowPanel = 64;     // activation rows kept hot in cache while a thread walks its weights

// Rows are padded with zero blocks to a multiple of 8 blocks, so the AVX2 loop reads 8 blocks at a time.
struct QuantizedActivations {
  const int8_t* q;        // [rows, stride * 32]
  const float* scale;     // [rows, stride]
  const float* sum;       // [rows, stride]: exact float sum of each block of x
  int64_t K;
  int64_t stride;         // blocks per row, padded
};

inline int64_t padded_blocks(int64_t K) { return (K / 32 + 7) / 8 * 8; }

struct BlockWeights {
  const uint8_t* values;  // int4: [N, K / 2], block b of a row in bytes 16b..16b+15, q[j] low / q[j+16] high
                          // nibble of byte j; int8: [N, K] int8
  const uint16_t* scale;  // [N, K / group_size] float16 bits
  const uint16_t* min;    // [N, K / group_size] float16 bits; int4 only
  int64_t K;
  int64_t group_size;
  int bits;
};

inline float half_to_float(uint16_t bits) { return c10::detail::fp16_ieee_to_fp32_value(bits); }

void quantize_activations(const float* x, int64_t rows, int64_t K, int8_t* q, float* scale, float* sum) {
  const int64_t blocks = K / kBlock, stride = padded_blocks(K);
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / K), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        const float* xb = x + r * K + b * kBlock;
        float absmax = 0.f, total = 0.f;
        for (int64_t i = 0; i < kBlock; ++i) {
          absmax = std::max(absmax, std::fabs(xb[i]));
          total += xb[i];
        }
        const float d = absmax / 127.f;
        const float inverse = d > 0.f ? 1.f / d : 0.f;
        int8_t* qb = q + (r * stride + b) * kBlock;
        for (int64_t i = 0; i < kBlock; ++i) qb[i] = static_cast<int8_t>(std::nearbyint(xb[i] * inverse));
        scale[r * stride + b] = d;
        sum[r * stride + b] = total;
      }
      std::fill(q + (r * stride + blocks) * kBlock, q + (r + 1) * stride * kBlock, int8_t{0});
      std::fill(scale + r * stride + blocks, scale + (r + 1) * stride, 0.f);
      std::fill(sum + r * stride + blocks, sum + (r + 1) * stride, 0.f);
    }
  });
}

// ---- portable loop ------------------------------------------------------------------------------------

inline void unpack_block(const BlockWeights& w, int64_t K, int64_t n, int64_t b, int8_t* qw) {
  if (w.bits == 4) {
    const uint8_t* packed = w.values + n * (K / 2) + b * (kBlock / 2);
    for (int64_t j = 0; j < kBlock / 2; ++j) {
      qw[j] = static_cast<int8_t>(packed[j] & 0x0F);
      qw[j + kBlock / 2] = static_cast<int8_t>(packed[j] >> 4);
    }
  } else {
    std::copy_n(reinterpret_cast<const int8_t*>(w.values) + n * K + b * kBlock, kBlock, qw);
  }
}

inline int32_t block_dot(const int8_t* qw, const int8_t* qx) {
  int32_t dot = 0;
  for (int64_t j = 0; j < kBlock; ++j) dot += int32_t(qw[j]) * int32_t(qx[j]);
  return dot;
}

template <int R>
void rows_portable(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t n, float* out[R]) {
  const int64_t blocks = a.K / kBlock, groups = a.K / w.group_size, per_group = w.group_size / kBlock;
  float acc[R] = {}, acc_min[R] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t g = n * groups + b / per_group;
    const float w_scale = half_to_float(w.scale[g]);
    int8_t qw[kBlock];
    unpack_block(w, a.K, n, b, qw);
    for (int r = 0; r < R; ++r) {
      const int64_t i = (m + r) * a.stride + b;
      const int32_t dot = block_dot(qw, a.q + i * kBlock);
      acc[r] += w_scale * a.scale[i] * static_cast<float>(dot);
      if (w.bits == 4) acc_min[r] += half_to_float(w.min[g]) * a.sum[i];
    }
  }
  for (int r = 0; r < R; ++r) *out[r] = acc[r] + acc_min[r];
}

// ---- AVX2 loop ------------------------------------------------------------------------------------------

__attribute__((target("avx2,fma,f16c"))) inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The float16 group values covering blocks b0 .. b0 + count - 1 of a row, one float per block (0 past count).
__attribute__((target("avx2,fma,f16c")))
inline __m256 per_block(const uint16_t* row_groups, int64_t b0, int64_t count, int64_t per_group) {
  alignas(16) uint16_t bits[8] = {};
  std::memcpy(bits, row_groups + b0 / per_group, sizeof(uint16_t) * ((count + per_group - 1) / per_group));
  const __m256 groups = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(bits)));
  if (per_group == 1) return groups;
  const __m256i index = per_group == 2 ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                        : per_group == 4 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
                                         : _mm256_setzero_si256();
  const __m256 expanded = _mm256_permutevar8x32_ps(groups, index);
  if (count == 8) return expanded;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, expanded);
  std::fill(lanes + count, lanes + 8, 0.f);
  return _mm256_load_ps(lanes);
}

// Eight blocks' int32 dot products (8 lanes each) -> one lane per block, in block order.
__attribute__((target("avx2,fma,f16c")))
inline __m256i block_totals(const __m256i d[8]) {
  const __m256i h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
  const __m256i h4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[4], d[5]), _mm256_hadd_epi32(d[6], d[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                          _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// Blocks b0 .. b0 + count - 1 (count <= 8; FULL: exactly 8, so every loop unrolls) of activation rows
// m .. m + R - 1 against weight rows n .. n + C - 1, added into acc and acc_min.
template <int BITS, int R, int C, bool FULL>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void chunk_avx2(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t n, int64_t b0,
                       int64_t count_if_partial, __m256 (&acc)[C][R], __m256 (&acc_min)[C][R]) {
  const int64_t count = FULL ? 8 : count_if_partial;
  const int64_t groups = a.K / w.group_size, per_group = w.group_size / kBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i low_nibbles = _mm_set1_epi8(0x0F);
  for (int c = 0; c < C; ++c) {
    const int64_t row = n + c;
    __m256i qw[8], qw_abs[8];
    for (int j = 0; j < count; ++j) {
      const int64_t b = b0 + j;
      if (BITS == 4) {
        const __m128i packed =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.values + row * (a.K / 2) + b * (kBlock / 2)));
        qw[j] = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles),
                                 _mm_and_si128(packed, low_nibbles));  // unsigned 0..15
      } else {
        qw[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + row * a.K + b * kBlock));
        qw_abs[j] = _mm256_sign_epi8(qw[j], qw[j]);
      }
    }
    const __m256 w_scale = per_block(w.scale + row * groups, b0, count, per_group);
    const __m256 w_min = BITS == 4 ? per_block(w.min + row * groups, b0, count, per_group) : _mm256_setzero_ps();
    if (!FULL) {  // the padding blocks' activations are zero; keep their weights zero too
      for (int j = count; j < 8; ++j) qw[j] = qw_abs[j] = _mm256_setzero_si256();
    }
    for (int r = 0; r < R; ++r) {
      const int64_t first = (m + r) * a.stride + b0;
      const int8_t* qx = a.q + first * kBlock;
      __m256i dots[8];
      for (int j = 0; j < 8; ++j) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + j * kBlock));
        // pairs of u8 x s8 products in int16: at most 2 * 15 * 127 (int4) or 2 * 127 * 127, no saturation
        const __m256i pairs = BITS == 4 ? _mm256_maddubs_epi16(qw[j], x)
                                        : _mm256_maddubs_epi16(qw_abs[j], _mm256_sign_epi8(x, qw[j]));
        dots[j] = _mm256_madd_epi16(pairs, ones);
      }
      const __m256 scale = _mm256_mul_ps(w_scale, _mm256_loadu_ps(a.scale + first));
      acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_totals(dots)), scale, acc[c][r]);
      if (BITS == 4) acc_min[c][r] = _mm256_fmadd_ps(w_min, _mm256_loadu_ps(a.sum + first), acc_min[c][r]);
    }
  }
}

// Outputs of activation rows m .. m + R - 1 against weight rows n .. n + C - 1. The C weight rows are
// independent chains the CPU overlaps (one activation row would otherwise wait on each multiply-add).
template <int BITS, int R, int C>
__attribute__((target("avx2,fma,f16c")))
void tile_avx2(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t n, float* y, int64_t N) {
  const int64_t blocks = a.K / kBlock;
  __m256 acc[C][R], acc_min[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = acc_min[c][r] = _mm256_setzero_ps();
  int64_t b0 = 0;
  for (; b0 + 8 <= blocks; b0 += 8) chunk_avx2<BITS, R, C, true>(a, m, w, n, b0, 8, acc, acc_min);
  if (b0 < blocks) chunk_avx2<BITS, R, C, false>(a, m, w, n, b0, blocks - b0, acc, acc_min);
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) y[(m + r) * N + n + c] = horizontal_sum(_mm256_add_ps(acc[c][r], acc_min[c][r]));
}

bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

template <int R, int C>
inline void tile(const QuantizedActivations& a, int64_t m, const BlockWeights& w, int64_t n, float* y, int64_t N) {
  if (has_avx2()) {
    return w.bits == 4 ? tile_avx2<4, R, C>(a, m, w, n, y, N) : tile_avx2<8, R, C>(a, m, w, n, y, N);
  }
  for (int c = 0; c < C; ++c) {
    float* out[R];
    for (int r = 0; r < R; ++r) out[r] = y + (m + r) * N + n + c;
    rows_portable<R>(a, m, w, n + c, out);
  }
}

// Weight rows n_begin .. n_end - 1 against every activation row, a panel of rows at a time.
void columns(const QuantizedActivations& a, int64_t M, const BlockWeights& w, int64_t n_begin, int64_t n_end,
             float* y, int64_t N) {
  constexpr int64_t kColumnTile = 4;
  for (int64_t panel = 0; panel < M; panel += kRowPanel) {
    const int64_t panel_end = std::min(M, panel + kRowPanel);
    if (panel_end - panel < kRowTile) {  // a few rows (decode): tile the weight rows instead
      int64_t n = n_begin;
      for (; n + kColumnTile <= n_end; n += kColumnTile)
        for (int64_t m = panel; m < panel_end; ++m) tile<1, kColumnTile>(a, m, w, n, y, N);
      for (; n < n_end; ++n)
        for (int64_t m = panel; m < panel_end; ++m) tile<1, 1>(a, m, w, n, y, N);
      continue;
    }
    for (int64_t n = n_begin; n < n_end; ++n) {
      int64_t m = panel;
      for (; m + kRowTile <= panel_end; m += kRowTile) tile<kRowTile, 1>(a, m, w, n, y, N);
      for (; m < panel_end; ++m) tile<1, 1>(a, m, w, n, y, N);
    }
  }
}

}  // namespace

torch::Tensor block_linear(const torch::Tensor& input,   // [M, K] float32
                           const torch::Tensor& values,  // int4: [N, K / 2] uint8; int8: [N, K] int8
                           const torch::Tensor& scales,  // [N, K / group_size] float16
                           const c10::optional<torch::Tensor>& mins,  // int4: like scales
                           const c10::optional<torch::Tensor>& bias,  // [N] float32
                           int64_t bits, int64_t group_size) {
  TORCH_CHECK(input.dim() == 2 && input.dtype() == torch::kFloat32, "block_linear: 2-D float32 input");
  TORCH_CHECK(bits == 4 || bits == 8, "block_linear: 4 or 8 bits");
  TORCH_CHECK(group_size % kBlock == 0 && group_size > 0, "block_linear: group size a multiple of 32");
  const auto x = input.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(K % group_size == 0, "block_linear: input width not a multiple of the group size");
  TORCH_CHECK(values.is_contiguous() && values.size(1) == (bits == 4 ? K / 2 : K), "block_linear: values shape");
  TORCH_CHECK(values.dtype() == (bits == 4 ? torch::kUInt8 : torch::kInt8), "block_linear: values dtype");
  TORCH_CHECK(scales.is_contiguous() && scales.dtype() == torch::kFloat16 && scales.size(0) == N &&
                  scales.size(1) == K / group_size, "block_linear: scales [N, K / group_size] float16");
  if (bits == 4) {
    TORCH_CHECK(mins.has_value() && mins->is_contiguous() && mins->dtype() == torch::kFloat16 &&
                    mins->sizes() == scales.sizes(), "block_linear: int4 needs mins like scales");
  }
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == N && bias->is_contiguous() && bias->dtype() == torch::kFloat32, "block_linear: bias");
    b = bias->data_ptr<float>();
  }

  const int64_t stride = padded_blocks(K);
  auto q = torch::empty({M, stride * kBlock}, x.options().dtype(torch::kInt8));
  auto x_scale = torch::empty({M, stride}, x.options());
  auto x_sum = torch::empty({M, stride}, x.options());
  quantize_activations(x.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), x_scale.data_ptr<float>(),
                       x_sum.data_ptr<float>());
  const QuantizedActivations a{q.data_ptr<int8_t>(), x_scale.data_ptr<float>(), x_sum.data_ptr<float>(), K, stride};
  const BlockWeights w{reinterpret_cast<const uint8_t*>(values.data_ptr()),
                       reinterpret_cast<const uint16_t*>(scales.data_ptr()),
                       bits == 4 ? reinterpret_cast<const uint16_t*>(mins->data_ptr()) : nullptr,
                       K, group_size, static_cast<int>(bits)};

  auto y = torch::empty({M, N}, x.options());
  float* y_ptr = y.data_ptr<float>();
  // Threads split the output columns (weight rows): each reads its share of the weights once per panel.
  at::parallel_for(0, N, 16, [&](int64_t n_begin, int64_t n_end) { columns(a, M, w, n_begin, n_end, y_ptr, N); });
  if (b != nullptr) y.add_(bias.value());
  return y;
}
