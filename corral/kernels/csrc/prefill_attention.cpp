// Causal attention for one prefill chunk of one sequence, flash-attention style, in AVX-512.
//
// Torch's CPU flash attention spends most of a 512-token prompt's attention in small GEMM calls and their
// packing (56-77 GFLOP/s of useful work on a Zen 4 core pair, docs/performance.md). Here a task is one query
// head and 32 consecutive query rows; it walks the keys it may see in tiles of 64 with an online softmax and
// keeps its scores and outputs in small buffers that stay in L1. Keys are transposed once per call
// ([kv head, dim, key]), so a tile's scores are broadcast-and-FMA over 4 vectors of 16 keys (16 accumulators
// for 4 rows), and the outputs are the same over 4 rows of the value tile. Queries sit at the end of their
// context (row i at position context_len - query_len + i) and see keys up to their own position.
//
// AVX-512 only: elsewhere corral keeps torch's SDPA (corral/layers/attention/torch_paged.py decides).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "avx512_exp.h"
#include "isa.h"

namespace {

constexpr int64_t kRows = 32;  // query rows per task
constexpr int64_t kKeys = 64;  // keys per tile: 4 vectors of 16
constexpr int64_t kScoreRows = 4;  // rows per register block of the scores (4 x 4 accumulators)

struct Chunk {
  const float* query;   // [query_len, num_heads, HEAD]
  const float* keys_t;  // [num_kv_heads, HEAD, padded_len]: keys transposed, zero past context_len
  const float* values;  // [num_kv_heads, context_len, HEAD]
  float* out;           // like query
  int64_t query_len, context_len, padded_len, num_heads, group;
  float scale;
};

// Rows first_row .. first_row + rows - 1 of query head `head`.
template <int64_t HEAD>
__attribute__((target(CORRAL_AVX512_TARGET)))
void attend_rows(const Chunk& c, int64_t head, int64_t first_row, int64_t rows) {
  constexpr int64_t kVecs = HEAD / 16;
  constexpr int64_t kValueRows = 16 / kVecs;  // rows per register block of the outputs (16 accumulators)
  alignas(64) float q[kRows * HEAD] = {};
  alignas(64) float acc[kRows * HEAD] = {};
  alignas(64) float scores[kRows * kKeys];
  float row_max[kRows], row_sum[kRows];
  const int64_t kv_head = head / c.group, row_stride = c.num_heads * HEAD;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = c.query + (first_row + r) * row_stride + head * HEAD;
    for (int64_t d = 0; d < HEAD; ++d) q[r * HEAD + d] = src[d] * c.scale;
    row_max[r] = -std::numeric_limits<float>::infinity();
    row_sum[r] = 0.f;
  }
  const int64_t offset = c.context_len - c.query_len;  // position of row 0
  const int64_t visible = offset + first_row + rows;     // keys the last row sees
  const float* keys_t = c.keys_t + kv_head * HEAD * c.padded_len;
  const float* values = c.values + kv_head * c.context_len * HEAD;
  for (int64_t tile = 0; tile < visible; tile += kKeys) {
    const int64_t tile_keys = std::min(kKeys, visible - tile);
    // scores = q . keys for 4 rows x 64 keys at a time
    for (int64_t r0 = 0; r0 < rows; r0 += kScoreRows) {
      __m512 s[kScoreRows][4];
      for (int64_t r = 0; r < kScoreRows; ++r)
        for (int64_t v = 0; v < 4; ++v) s[r][v] = _mm512_setzero_ps();
      const float* kt = keys_t + tile;
      for (int64_t d = 0; d < HEAD; ++d, kt += c.padded_len) {
        const __m512 k0 = _mm512_loadu_ps(kt), k1 = _mm512_loadu_ps(kt + 16);
        const __m512 k2 = _mm512_loadu_ps(kt + 32), k3 = _mm512_loadu_ps(kt + 48);
        for (int64_t r = 0; r < kScoreRows; ++r) {
          const __m512 qd = _mm512_set1_ps(q[(r0 + r) * HEAD + d]);
          s[r][0] = _mm512_fmadd_ps(qd, k0, s[r][0]);
          s[r][1] = _mm512_fmadd_ps(qd, k1, s[r][1]);
          s[r][2] = _mm512_fmadd_ps(qd, k2, s[r][2]);
          s[r][3] = _mm512_fmadd_ps(qd, k3, s[r][3]);
        }
      }
      for (int64_t r = 0; r < kScoreRows; ++r)
        for (int64_t v = 0; v < 4; ++v) _mm512_store_ps(scores + (r0 + r) * kKeys + 16 * v, s[r][v]);
    }
    // online softmax: the row's keys past its position (or past the tile) weigh exactly 0
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t seen = std::min(tile_keys, offset + first_row + r + 1 - tile);
      float* row = scores + r * kKeys;
      if (seen <= 0) {
        std::fill(row, row + kKeys, 0.f);
        continue;
      }
      __mmask16 keep[4];
      __m512 maxima = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t v = 0; v < 4; ++v) {
        const int64_t left = seen - 16 * v;
        keep[v] = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
        maxima = _mm512_mask_max_ps(maxima, keep[v], maxima, _mm512_load_ps(row + 16 * v));
      }
      const float new_max = std::max(row_max[r], _mm512_reduce_max_ps(maxima));
      const float correction = std::exp(row_max[r] - new_max);  // 0 on the first tile (max was -inf)
      row_max[r] = new_max;
      __m512 total = _mm512_setzero_ps();
      for (int64_t v = 0; v < 4; ++v) {
        const __m512 p = _mm512_maskz_mov_ps(
            keep[v], exp_non_positive_avx512(_mm512_sub_ps(_mm512_load_ps(row + 16 * v), _mm512_set1_ps(new_max))));
        _mm512_store_ps(row + 16 * v, p);
        total = _mm512_add_ps(total, p);
      }
      row_sum[r] = row_sum[r] * correction + _mm512_reduce_add_ps(total);
      if (correction != 1.f) {
        const __m512 scale = _mm512_set1_ps(correction);
        for (int64_t v = 0; v < kVecs; ++v)
          _mm512_store_ps(acc + r * HEAD + 16 * v, _mm512_mul_ps(_mm512_load_ps(acc + r * HEAD + 16 * v), scale));
      }
    }
    // acc += p . values, kValueRows rows at a time
    for (int64_t r0 = 0; r0 < rows; r0 += kValueRows) {
      __m512 o[kValueRows][kVecs];
      for (int64_t r = 0; r < kValueRows; ++r)
        for (int64_t v = 0; v < kVecs; ++v) o[r][v] = _mm512_load_ps(acc + (r0 + r) * HEAD + 16 * v);
      const float* value = values + tile * HEAD;
      for (int64_t j = 0; j < tile_keys; ++j, value += HEAD) {
        __m512 vj[kVecs];
        for (int64_t v = 0; v < kVecs; ++v) vj[v] = _mm512_loadu_ps(value + 16 * v);
        for (int64_t r = 0; r < kValueRows; ++r) {
          const __m512 p = _mm512_set1_ps(scores[(r0 + r) * kKeys + j]);
          for (int64_t v = 0; v < kVecs; ++v) o[r][v] = _mm512_fmadd_ps(p, vj[v], o[r][v]);
        }
      }
      for (int64_t r = 0; r < kValueRows; ++r)
        for (int64_t v = 0; v < kVecs; ++v) _mm512_store_ps(acc + (r0 + r) * HEAD + 16 * v, o[r][v]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = c.out + (first_row + r) * row_stride + head * HEAD;
    const float inv = 1.f / row_sum[r];
    for (int64_t d = 0; d < HEAD; ++d) dst[d] = acc[r * HEAD + d] * inv;
  }
}

template <int64_t HEAD>
void attend_chunk(const Chunk& c) {
  const int64_t blocks = (c.query_len + kRows - 1) / kRows, tasks = blocks * c.num_heads;
  // Later row blocks see more keys: order the tasks first block, last block, second, second to last, ...
  // so that the equal contiguous ranges at::parallel_for hands each thread carry about equal work.
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / c.num_heads, head = task % c.num_heads;
      const int64_t block = pair % 2 == 0 ? pair / 2 : blocks - 1 - pair / 2;
      const int64_t first_row = block * kRows;
      attend_rows<HEAD>(c, head, first_row, std::min(kRows, c.query_len - first_row));
    }
  });
}

}  // namespace

bool prefill_attention_supported(int64_t head_size) {
  return use_avx512() && (head_size == 64 || head_size == 128);
}

at::Tensor prefill_attention(const at::Tensor& query,   // [query_len, num_heads, head_size] float32
                             const at::Tensor& keys,    // [num_kv_heads, context_len, head_size] float32
                             const at::Tensor& values,  // like keys
                             double scale) {
  TORCH_CHECK(query.dtype() == at::kFloat && keys.dtype() == at::kFloat && values.dtype() == at::kFloat,
              "prefill_attention: float32 queries, keys and values");
  TORCH_CHECK(query.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes(), "prefill_attention: bad shapes");
  const int64_t query_len = query.size(0), num_heads = query.size(1), head_size = query.size(2);
  const int64_t num_kv_heads = keys.size(0), context_len = keys.size(1);
  TORCH_CHECK(num_kv_heads >= 1 && keys.size(2) == head_size && num_heads % num_kv_heads == 0,
              "prefill_attention: shape mismatch");
  TORCH_CHECK(query_len >= 1 && query_len <= context_len, "prefill_attention: the queries must end the context");
  TORCH_CHECK(prefill_attention_supported(head_size), "prefill_attention: needs AVX-512 and head size 64 or 128");
  const auto q = query.contiguous();
  const auto v = values.contiguous();
  const int64_t padded_len = (context_len + kKeys - 1) / kKeys * kKeys;
  auto keys_t = at::zeros({num_kv_heads, head_size, padded_len}, keys.options());
  keys_t.narrow(2, 0, context_len).copy_(keys.transpose(1, 2));
  auto out = at::empty_like(q);
  const Chunk chunk{q.data_ptr<float>(), keys_t.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(),
                    query_len, context_len, padded_len, num_heads, num_heads / num_kv_heads,
                    static_cast<float>(scale)};
  if (head_size == 64) {
    attend_chunk<64>(chunk);
  } else {
    attend_chunk<128>(chunk);
  }
  return out;
}
