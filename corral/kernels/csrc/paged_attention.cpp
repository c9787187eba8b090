// Attention straight from the paged KV cache, one query token per row (decodes; every token in
// batch-invariant mode): keys and values read in place through the block table (no gathered copy of the
// context). Each key and value is read and converted once for all the query heads that share its KV head
// and for all the consecutive rows of one sequence (a draft check: the last token and its drafts). The
// cache is fp32, or int8 rows of head_size codes followed by their float32 scale
// (corral/kernels/kv_int8.py), dequantized as they are read: a key's scale multiplies its dot product, a
// value's scale its softmax weight. The torch reference in corral/kernels/paged_attention.py defines the
// result within float rounding; a row's own arithmetic never depends on the other rows.
//
// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at run time
// (GCC target_clones), so one build runs on both the Zen 3 and the Zen 4 hosts.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "avx512_exp.h"
#include "isa.h"

namespace {

// The query heads of one KV head for a run of consecutive query rows of one sequence (a decode is a run of
// one; a draft check, its last token and drafts). Row r attends to the first context_lens[r] tokens; the
// rows share each key and value as it is read and converted, and each row's arithmetic is the same, in the
// same order, whichever other rows share its run.
struct HeadGroups {
  const float* query;       // row r, head g at query + r * row_stride + g * head_stride
  float* out;               // same layout as query
  const int64_t* context_lens;  // [rows]
  int64_t rows, row_stride, head_stride;
  int64_t group;            // query heads per KV head
  int64_t head_size;
};

// T: float, or int8_t for int8 rows (codes, then the scale's 4 bytes)
template <typename T>
struct PagedKV {
  const T* keys;            // first slot's key for this KV head; slots slot_stride apart
  const T* values;
  int64_t slot_stride;
  const int64_t* block_table;
  int64_t block_size;
  int64_t context_len;      // tokens to walk: the longest of the rows'
};

constexpr int64_t kMaxHeadSize = 512;
constexpr int64_t kMaxRowsPerTask = 4;  // rows of a run per task (longer runs are split across tasks)

inline float row_scale(const float*, int64_t) { return 1.f; }  // an exact no-op in the products below
inline float row_scale(const int8_t* row, int64_t head_size) {
  float scale;
  std::memcpy(&scale, row + head_size, sizeof(scale));
  return scale;
}

// A cache row as floats: float rows as they are, int8 codes converted once into buffer (then shared by
// every query head and row of the task).
inline const float* as_floats(const float* row, int64_t, float*) { return row; }
inline const float* as_floats(const int8_t* row, int64_t head_size, float* buffer) {
  for (int64_t d = 0; d < head_size; ++d) buffer[d] = static_cast<float>(row[d]);
  return buffer;
}

// Calls fn(t, slot) for the first kv.context_len tokens in order, walking the blocks (no division per token).
template <typename T, typename Fn>
inline void for_each_slot(const PagedKV<T>& kv, Fn&& fn) {
  for (int64_t first = 0, b = 0; first < kv.context_len; first += kv.block_size, ++b) {
    const int64_t base = kv.block_table[b] * kv.block_size;
    const int64_t n = std::min(kv.block_size, kv.context_len - first);
    for (int64_t i = 0; i < n; ++i) fn(first + i, base + i);
  }
}

// 16 floats as one value: a zmm register in the AVX-512 clone, two ymm in the AVX2 one, four xmm otherwise
// (GCC vector extensions, so each target_clones variant gets its own code from the same source).
typedef float F32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));
typedef float F32x8 __attribute__((vector_size(32)));
typedef float F32x4 __attribute__((vector_size(16)));
constexpr int64_t kVector = 16;

inline F32x16 load16(const float* p) {
  F32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// q . k for head_size a multiple of 16: 16 lane sums, then halved in a fixed order (so the result does not
// depend on the batch), where one running sum would be a chain of dependent scalar adds.
inline float dot16(const float* q, const float* k, int64_t head_size) {
  F32x16 acc = load16(q) * load16(k);
  for (int64_t d = kVector; d < head_size; d += kVector) acc += load16(q + d) * load16(k + d);
  const F32x8 half = __builtin_shufflevector(acc, acc, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(acc, acc, 8, 9, 10, 11, 12, 13, 14, 15);
  const F32x4 quarter = __builtin_shufflevector(half, half, 0, 1, 2, 3) + __builtin_shufflevector(half, half, 4, 5, 6, 7);
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

inline float dot(const float* q, const float* k, int64_t head_size) {
  if (head_size % kVector == 0) return dot16(q, k, head_size);
  float total = 0.f;
  for (int64_t d = 0; d < head_size; ++d) total += q[d] * k[d];
  return total;
}

// exp(v) for 16 values v <= 0 (softmax arguments after subtracting the max), within 2 ulp: Cody-Waite
// reduction to r in [-ln2/2, ln2/2] and a degree-7 Taylor polynomial, branch-free (std::exp does not
// vectorize). Below -87.3 the result is about 2^-126, as good as 0 beside the max's weight 1.
inline F32x16 exp_non_positive16(F32x16 v) {
  const F32x16 floor_arg = F32x16{} - 87.3f;
  v = v < floor_arg ? floor_arg : v;
  const I32x16 k = __builtin_convertvector(v * 1.44269504f - 0.5f, I32x16);  // round to nearest (v <= 0)
  const F32x16 kf = __builtin_convertvector(k, F32x16);
  const F32x16 r = (v - kf * 0.693359375f) + kf * 2.12194440e-4f;
  F32x16 p = F32x16{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const I32x16 bits = (k + 127) << 23;
  F32x16 two_to_k;
  std::memcpy(&two_to_k, &bits, sizeof(two_to_k));
  return p * two_to_k;
}

// x[i] = exp(x[i]) for x[i] <= 0; the last partial vector goes through a padded copy, so every element
// takes the same instructions.
inline void exp_non_positive(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kVector <= n; i += kVector) {
    const F32x16 y = exp_non_positive16(load16(x + i));
    std::memcpy(x + i, &y, sizeof(y));
  }
  if (i < n) {
    alignas(64) float tail[kVector] = {};
    std::copy(x + i, x + n, tail);
    const F32x16 y = exp_non_positive16(load16(tail));
    std::memcpy(tail, &y, sizeof(y));
    std::copy(tail, tail + (n - i), x + i);
  }
}

// HEAD_SIZE > 0 fixes the head size at compile time so the inner loops unroll; 0 reads it at run time.
template <int64_t HEAD_SIZE, typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend(const HeadGroups& heads, const PagedKV<T>& kv, float scale, float* scores /* [rows, group, context_len] */) {
  const int64_t group = heads.group, context_len = kv.context_len, rows = heads.rows;
  const int64_t head_size = HEAD_SIZE > 0 ? HEAD_SIZE : heads.head_size;
  const int64_t* lens = heads.context_lens;
  alignas(64) float buffer[kMaxHeadSize];
  for_each_slot(kv, [&](int64_t t, int64_t slot) {
    const T* row = kv.keys + slot * kv.slot_stride;
    const float key_scale = row_scale(row, head_size);
    const float* key = as_floats(row, head_size, buffer);
    for (int64_t r = 0; r < rows; ++r) {
      if (t >= lens[r]) continue;
      for (int64_t g = 0; g < group; ++g) {
        const float* q = heads.query + r * heads.row_stride + g * heads.head_stride;
        scores[(r * group + g) * context_len + t] = dot(q, key, head_size) * key_scale * scale;
      }
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < group; ++g) {
      float* row = scores + (r * group + g) * context_len;
      const float max_score = *std::max_element(row, row + lens[r]);
      for (int64_t t = 0; t < lens[r]; ++t) row[t] -= max_score;
      exp_non_positive(row, lens[r]);
      float total = 0.f;
      for (int64_t t = 0; t < lens[r]; ++t) total += row[t];
      const float inv_total = 1.f / total;
      for (int64_t t = 0; t < lens[r]; ++t) row[t] *= inv_total;
      float* out = heads.out + r * heads.row_stride + g * heads.head_stride;
      std::fill(out, out + head_size, 0.f);
    }
  }
  for_each_slot(kv, [&](int64_t t, int64_t slot) {
    const T* row = kv.values + slot * kv.slot_stride;
    const float value_scale = row_scale(row, head_size);
    const float* value = as_floats(row, head_size, buffer);
    for (int64_t r = 0; r < rows; ++r) {
      if (t >= lens[r]) continue;
      for (int64_t g = 0; g < group; ++g) {
        const float p = scores[(r * group + g) * context_len + t] * value_scale;
        float* out = heads.out + r * heads.row_stride + g * heads.head_stride;
#pragma omp simd
        for (int64_t d = 0; d < head_size; ++d) out[d] += p * value[d];
      }
    }
  });
}

// ---- AVX-512 loops for head sizes 64 and 128 --------------------------------------------------------
// The same three passes over 16 keys at a time: each chunk of keys (or values) is converted to floats once
// into a tile shared by every query head and row of the task; a query's 16 dot products are 16 vectors of
// lane-wise products reduced together (a transposing tree, about 3 instructions a key where a reduction per
// key costs 8), and its output stays in registers while it walks the chunk's values. Each row's arithmetic
// is the same whatever other rows share the task, as in attend().

constexpr int64_t kChunk = 16;  // keys per tile

// Lane k of the result = the sum of the 16 lanes of d[k].
__attribute__((target(CORRAL_AVX512_TARGET), always_inline))
inline __m512 sum_each(const __m512 (&d)[kChunk]) {
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: pairs of d[2i], d[2i + 1]
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(d[2 * i], d[2 * i + 1]), _mm512_unpackhi_ps(d[2 * i], d[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: the lane's sums of d[4i] .. d[4i + 3]
    const __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88), _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}

// The first min(n, 16) lanes.
inline __mmask16 tail_mask(int64_t n) { return n >= kChunk ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }

// Cache rows t0 .. t0 + n - 1 (n <= 16) of one KV head as floats in tile[16][D], their scales in scales[16].
template <int64_t D, typename T>
__attribute__((target(CORRAL_AVX512_TARGET), always_inline))
inline void load_tile(const T* base, const PagedKV<T>& kv, int64_t t0, int64_t n, float* tile, float* scales) {
  int64_t block = t0 / kv.block_size, offset = t0 % kv.block_size;  // walked, not divided, per key
  for (int64_t k = 0; k < n; ++k, ++offset) {
    if (offset == kv.block_size) offset = 0, ++block;
    const T* row = base + (kv.block_table[block] * kv.block_size + offset) * kv.slot_stride;
    scales[k] = row_scale(row, D);
    for (int64_t d = 0; d < D; d += 16) {
      __m512 v;
      if constexpr (std::is_same_v<T, int8_t>) {
        v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d))));
      } else {
        v = _mm512_loadu_ps(row + d);
      }
      _mm512_store_ps(tile + k * D + d, v);
    }
  }
  for (int64_t k = n; k < kChunk; ++k) {  // a short last chunk: zero rows, whose scores are not stored
    scales[k] = 0.f;
    for (int64_t d = 0; d < D; d += 16) _mm512_store_ps(tile + k * D + d, _mm512_setzero_ps());
  }
}

template <int64_t D, typename T>
__attribute__((target(CORRAL_AVX512_TARGET)))
void attend_avx512(const HeadGroups& heads, const PagedKV<T>& kv, float scale, float* scores) {
  constexpr int64_t V = D / 16;
  const int64_t group = heads.group, context_len = kv.context_len, queries = heads.rows * group;
  const int64_t* lens = heads.context_lens;
  alignas(64) float tile[kChunk * D];
  alignas(64) float scales[kChunk];
  const auto query_of = [&](int64_t i) { return heads.query + (i / group) * heads.row_stride + (i % group) * heads.head_stride; };
  const auto out_of = [&](int64_t i) { return heads.out + (i / group) * heads.row_stride + (i % group) * heads.head_stride; };

  for (int64_t t0 = 0; t0 < context_len; t0 += kChunk) {
    const int64_t n = std::min(kChunk, context_len - t0);
    load_tile<D, T>(kv.keys, kv, t0, n, tile, scales);
    const __m512 key_scales = _mm512_mul_ps(_mm512_load_ps(scales), _mm512_set1_ps(scale));
    for (int64_t i = 0; i < queries; ++i) {
      const float* q = query_of(i);
      __m512 qv[V], dots[kChunk];
      for (int64_t v = 0; v < V; ++v) qv[v] = _mm512_loadu_ps(q + 16 * v);
      for (int64_t k = 0; k < kChunk; ++k) {
        __m512 acc = _mm512_mul_ps(qv[0], _mm512_load_ps(tile + k * D));
        for (int64_t v = 1; v < V; ++v) acc = _mm512_fmadd_ps(qv[v], _mm512_load_ps(tile + k * D + 16 * v), acc);
        dots[k] = acc;
      }
      _mm512_mask_storeu_ps(scores + i * context_len + t0, tail_mask(n), _mm512_mul_ps(sum_each(dots), key_scales));
    }
  }
  // softmax: exp(score - max) in place, 16 at a time; 1 / sum goes into the value weights below
  std::vector<float> inv_totals(queries);
  for (int64_t i = 0; i < queries; ++i) {
    float* row = scores + i * context_len;
    const int64_t len = lens[i / group];
    __m512 max16 = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < len; t += kChunk) {
      max16 = _mm512_max_ps(max16, _mm512_mask_loadu_ps(max16, tail_mask(len - t), row + t));
    }
    const __m512 max_score = _mm512_set1_ps(_mm512_reduce_max_ps(max16));
    __m512 total16 = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; t += kChunk) {
      const __mmask16 mask = tail_mask(len - t);
      const __m512 e = exp_non_positive_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + t), max_score));
      _mm512_mask_storeu_ps(row + t, mask, e);
      total16 = _mm512_add_ps(total16, _mm512_maskz_mov_ps(mask, e));
    }
    inv_totals[i] = 1.f / _mm512_reduce_add_ps(total16);
    std::fill(out_of(i), out_of(i) + D, 0.f);
  }
  for (int64_t t0 = 0; t0 < context_len; t0 += kChunk) {
    const int64_t n = std::min(kChunk, context_len - t0);
    load_tile<D, T>(kv.values, kv, t0, n, tile, scales);
    for (int64_t i = 0; i < queries; ++i) {
      const int64_t len = std::min(n, lens[i / group] - t0);  // this row's keys in the chunk
      if (len <= 0) continue;
      float* out = out_of(i);
      alignas(64) float weights[kChunk];
      _mm512_store_ps(weights, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n), scores + i * context_len + t0),
                                             _mm512_mul_ps(_mm512_load_ps(scales), _mm512_set1_ps(inv_totals[i]))));
      __m512 acc[V];
      for (int64_t v = 0; v < V; ++v) acc[v] = _mm512_loadu_ps(out + 16 * v);
      for (int64_t k = 0; k < len; ++k) {
        const __m512 p = _mm512_set1_ps(weights[k]);
        for (int64_t v = 0; v < V; ++v) acc[v] = _mm512_fmadd_ps(p, _mm512_load_ps(tile + k * D + 16 * v), acc[v]);
      }
      for (int64_t v = 0; v < V; ++v) _mm512_storeu_ps(out + 16 * v, acc[v]);
    }
  }
}

template <typename T>
void attend_any(const HeadGroups& heads, const PagedKV<T>& kv, float scale, float* scores) {
  if (use_avx512() && heads.head_size == 64) return attend_avx512<64, T>(heads, kv, scale, scores);
  if (use_avx512() && heads.head_size == 128) return attend_avx512<128, T>(heads, kv, scale, scores);
  switch (heads.head_size) {
    case 64: return attend<64, T>(heads, kv, scale, scores);
    case 128: return attend<128, T>(heads, kv, scale, scores);
    default: return attend<0, T>(heads, kv, scale, scores);
  }
}

template <typename T>
void attend_all(const at::Tensor& q, at::Tensor& out, const at::Tensor& key_cache,
                const at::Tensor& value_cache, const int64_t* table_ptr, int64_t max_blocks,
                const int64_t* seq_ptr, const int64_t* lens_ptr, int64_t block_size, float scale) {
  const int64_t num_queries = q.size(0), num_heads = q.size(1), head_size = q.size(2);
  const int64_t num_kv_heads = key_cache.size(1), row = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads, slot_stride = num_kv_heads * row;
  const float* q_ptr = q.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const T* k_ptr = static_cast<const T*>(key_cache.data_ptr());
  const T* v_ptr = static_cast<const T*>(value_cache.data_ptr());
  // runs: consecutive rows of one sequence, at most max_rows each; run j is rows run_starts[j] ..
  std::vector<int64_t> run_starts;
  const auto split_runs = [&](int64_t max_rows) {
    run_starts.clear();
    for (int64_t i = 0; i < num_queries; ++i) {
      if (run_starts.empty() || seq_ptr[i] != seq_ptr[run_starts.back()] || i - run_starts.back() == max_rows) {
        run_starts.push_back(i);
      }
    }
  };
  split_runs(kMaxRowsPerTask);
  if (static_cast<int64_t>(run_starts.size()) * num_kv_heads < 2 * at::get_num_threads()) {
    split_runs(kMaxRowsPerTask / 2);  // too few tasks to keep every thread busy: share less, split more
  }
  const int64_t num_runs = static_cast<int64_t>(run_starts.size());
  run_starts.push_back(num_queries);
  at::parallel_for(0, num_runs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t run = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t first = run_starts[run], rows = run_starts[run + 1] - first;
      const HeadGroups heads{q_ptr + (first * num_heads + h * group) * head_size,
                             out_ptr + (first * num_heads + h * group) * head_size,
                             lens_ptr + first, rows, num_heads * head_size, head_size, group, head_size};
      const int64_t longest = *std::max_element(lens_ptr + first, lens_ptr + first + rows);
      const PagedKV<T> kv{k_ptr + h * row, v_ptr + h * row, slot_stride, table_ptr + seq_ptr[first] * max_blocks,
                          block_size, longest};
      scores.resize(rows * group * longest);
      attend_any(heads, kv, scale, scores.data());
    }
  });
}

}  // namespace

std::string paged_attention_isa() { return use_avx512() ? "avx512" : "vector"; }

std::vector<std::string> supported_paged_attention_isas() {
  std::vector<std::string> names{"vector"};
  if (has_avx512()) names.push_back("avx512");
  return names;
}

void set_paged_attention_isa(const std::string& name) {
  TORCH_CHECK(name == "avx512" || name == "vector", "paged_attention: unknown loops ", name);
  TORCH_CHECK(name == "vector" || has_avx512(), "paged_attention: this CPU cannot run the avx512 loops");
  use_avx512() = name == "avx512";
}

// One query token per row; row i belongs to sequence seq_of_query[i] (its block table) and attends to the
// first context_lens[i] tokens of it. Decodes use one row per sequence; a prefill chunk in batch-invariant
// mode one row per token, so every token is computed by the same loop whatever step, chunk or batch it is in.
at::Tensor paged_attention(
    const at::Tensor& query,         // [num_queries, num_heads, head_size]
    const at::Tensor& key_cache,     // [num_slots, num_kv_heads, head_size] float32, or int8 [.., head_size + 4]
    const at::Tensor& value_cache,   // like key_cache
    const at::Tensor& block_tables,  // [num_seqs, max_blocks] int64
    const at::Tensor& seq_of_query,  // [num_queries] int64, < num_seqs
    const at::Tensor& context_lens,  // [num_queries] int64, >= 1
    int64_t block_size, double scale) {
  const bool int8_cache = key_cache.dtype() == at::kChar;
  TORCH_CHECK(query.dtype() == at::kFloat && value_cache.dtype() == key_cache.dtype() &&
                  (int8_cache || key_cache.dtype() == at::kFloat),
              "paged_attention: float32 queries, and a float32 or int8 cache");
  TORCH_CHECK(block_tables.dtype() == at::kLong && context_lens.dtype() == at::kLong &&
                  seq_of_query.dtype() == at::kLong,
              "paged_attention: int64 block tables, sequence indices and context lengths");
  TORCH_CHECK(query.dim() == 3 && key_cache.dim() == 3 && value_cache.dim() == 3, "bad ranks");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches must be contiguous");
  const auto q = query.contiguous();
  const auto tables = block_tables.contiguous();
  const auto lens = context_lens.contiguous();
  const auto seqs = seq_of_query.contiguous();
  const int64_t num_queries = q.size(0), num_heads = q.size(1), head_size = q.size(2);
  const int64_t num_kv_heads = key_cache.size(1), num_seqs = tables.size(0);
  TORCH_CHECK(key_cache.size(2) == head_size + (int8_cache ? 4 : 0) && num_heads % num_kv_heads == 0,
              "shape mismatch");
  TORCH_CHECK(head_size <= kMaxHeadSize, "paged_attention: head size above ", kMaxHeadSize);
  TORCH_CHECK(lens.size(0) == num_queries && seqs.size(0) == num_queries, "one sequence and length per query");
  const int64_t max_blocks = tables.size(1);
  const int64_t* lens_ptr = lens.data_ptr<int64_t>();
  const int64_t* seq_ptr = seqs.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_queries; ++i) {
    TORCH_CHECK(seq_ptr[i] >= 0 && seq_ptr[i] < num_seqs, "sequence index out of range");
    TORCH_CHECK(lens_ptr[i] >= 1 && lens_ptr[i] <= max_blocks * block_size, "context length out of range");
  }

  auto out = at::empty_like(q);
  const int64_t* table_ptr = tables.data_ptr<int64_t>();
  if (int8_cache) {
    attend_all<int8_t>(q, out, key_cache, value_cache, table_ptr, max_blocks, seq_ptr, lens_ptr, block_size,
                       static_cast<float>(scale));
  } else {
    attend_all<float>(q, out, key_cache, value_cache, table_ptr, max_blocks, seq_ptr, lens_ptr, block_size,
                      static_cast<float>(scale));
  }
  return out;
}
