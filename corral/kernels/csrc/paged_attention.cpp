// Attention straight from the paged KV cache, one query token per row (decodes; every token in
// batch-invariant mode): keys and values read in place through the block table (no gathered copy of the
// context), grouped-query heads sharing each KV head's reads. The cache is fp32, or int8 rows of head_size
// codes followed by their float32 scale (corral/kernels/kv_int8.py), dequantized as they are read: a key's
// scale multiplies its dot product, a value's scale its softmax weight. The torch reference in
// corral/kernels/paged_attention.py defines the result.
//
// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at run time
// (GCC target_clones), so one build runs on both the Zen 3 and the Zen 4 hosts.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

struct HeadGroup {
  const float* query;       // [group, head_size], rows query_stride apart
  float* out;               // [group, head_size], rows query_stride apart
  int64_t query_stride;
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
  int64_t context_len;
};

constexpr int64_t kMaxHeadSize = 512;

inline float row_scale(const float*, int64_t) { return 1.f; }  // an exact no-op in the products below
inline float row_scale(const int8_t* row, int64_t head_size) {
  float scale;
  std::memcpy(&scale, row + head_size, sizeof(scale));
  return scale;
}

// A cache row as floats: float rows as they are, int8 codes converted once into buffer (then shared by
// every query head of the group).
inline const float* as_floats(const float* row, int64_t, float*) { return row; }
inline const float* as_floats(const int8_t* row, int64_t head_size, float* buffer) {
  for (int64_t d = 0; d < head_size; ++d) buffer[d] = static_cast<float>(row[d]);
  return buffer;
}

// Calls fn(t, slot) for the sequence's tokens in order, walking its blocks (no division per token).
template <typename T, typename Fn>
inline void for_each_slot(const PagedKV<T>& kv, Fn&& fn) {
  for (int64_t first = 0, b = 0; first < kv.context_len; first += kv.block_size, ++b) {
    const int64_t base = kv.block_table[b] * kv.block_size;
    const int64_t n = std::min(kv.block_size, kv.context_len - first);
    for (int64_t i = 0; i < n; ++i) fn(first + i, base + i);
  }
}

// HEAD_SIZE > 0 fixes the head size at compile time so the inner loops unroll; 0 reads it at run time.
template <int64_t HEAD_SIZE, typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend(const HeadGroup& heads, const PagedKV<T>& kv, float scale, float* scores /* [group, context_len] */) {
  const int64_t group = heads.group, context_len = kv.context_len;
  const int64_t head_size = HEAD_SIZE > 0 ? HEAD_SIZE : heads.head_size;
  alignas(64) float buffer[kMaxHeadSize];
  for_each_slot(kv, [&](int64_t t, int64_t slot) {
    const T* row = kv.keys + slot * kv.slot_stride;
    const float key_scale = row_scale(row, head_size);
    const float* key = as_floats(row, head_size, buffer);
    for (int64_t g = 0; g < group; ++g) {
      const float* q = heads.query + g * heads.query_stride;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < head_size; ++d) dot += q[d] * key[d];
      scores[g * context_len + t] = dot * key_scale * scale;
    }
  });
  for (int64_t g = 0; g < group; ++g) {
    float* row = scores + g * context_len;
    const float max_score = *std::max_element(row, row + context_len);
    float total = 0.f;
    for (int64_t t = 0; t < context_len; ++t) {
      row[t] = std::exp(row[t] - max_score);
      total += row[t];
    }
    const float inv_total = 1.f / total;
    for (int64_t t = 0; t < context_len; ++t) row[t] *= inv_total;
    std::fill(heads.out + g * heads.query_stride, heads.out + g * heads.query_stride + head_size, 0.f);
  }
  for_each_slot(kv, [&](int64_t t, int64_t slot) {
    const T* row = kv.values + slot * kv.slot_stride;
    const float value_scale = row_scale(row, head_size);
    const float* value = as_floats(row, head_size, buffer);
    for (int64_t g = 0; g < group; ++g) {
      const float p = scores[g * context_len + t] * value_scale;
      float* out = heads.out + g * heads.query_stride;
#pragma omp simd
      for (int64_t d = 0; d < head_size; ++d) out[d] += p * value[d];
    }
  });
}

template <typename T>
void attend_any(const HeadGroup& heads, const PagedKV<T>& kv, float scale, float* scores) {
  switch (heads.head_size) {
    case 64: return attend<64, T>(heads, kv, scale, scores);
    case 128: return attend<128, T>(heads, kv, scale, scores);
    default: return attend<0, T>(heads, kv, scale, scores);
  }
}

template <typename T>
void attend_all(const torch::Tensor& q, torch::Tensor& out, const torch::Tensor& key_cache,
                const torch::Tensor& value_cache, const int64_t* table_ptr, int64_t max_blocks,
                const int64_t* seq_ptr, const int64_t* lens_ptr, int64_t block_size, float scale) {
  const int64_t num_queries = q.size(0), num_heads = q.size(1), head_size = q.size(2);
  const int64_t num_kv_heads = key_cache.size(1), row = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads, slot_stride = num_kv_heads * row;
  const float* q_ptr = q.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const T* k_ptr = static_cast<const T*>(key_cache.data_ptr());
  const T* v_ptr = static_cast<const T*>(value_cache.data_ptr());
  at::parallel_for(0, num_queries * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t first_head = i * num_heads + h * group;
      const HeadGroup heads{q_ptr + first_head * head_size, out_ptr + first_head * head_size, head_size,
                            group, head_size};
      const PagedKV<T> kv{k_ptr + h * row, v_ptr + h * row, slot_stride, table_ptr + seq_ptr[i] * max_blocks,
                          block_size, lens_ptr[i]};
      scores.resize(group * kv.context_len);
      attend_any(heads, kv, scale, scores.data());
    }
  });
}

// Row i of x ([tokens, heads, head_size] float32) into int8 row slots[i] of cache: the rounding of
// kv_int8.quantize_rows, operation for operation.
void write_int8_rows(const torch::Tensor& x, const torch::Tensor& slots, torch::Tensor& cache) {
  const auto rows = x.contiguous();
  const int64_t tokens = rows.size(0), heads = rows.size(1), head_size = rows.size(2);
  const int64_t row = cache.size(2), num_slots = cache.size(0);
  const float* x_ptr = rows.data_ptr<float>();
  const int64_t* slot_ptr = slots.data_ptr<int64_t>();
  int8_t* cache_ptr = cache.data_ptr<int8_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slot_ptr[t] >= 0 && slot_ptr[t] < num_slots, "write_kv: slot out of range");
    for (int64_t h = 0; h < heads; ++h) {
      const float* v = x_ptr + (t * heads + h) * head_size;
      int8_t* out = cache_ptr + (slot_ptr[t] * heads + h) * row;
      float absmax = 0.f;
      for (int64_t d = 0; d < head_size; ++d) absmax = std::max(absmax, std::fabs(v[d]));
      const float scale = absmax / 127.f;
      const float inverse = scale > 0.f ? 1.f / scale : 0.f;
      for (int64_t d = 0; d < head_size; ++d) out[d] = static_cast<int8_t>(std::nearbyint(v[d] * inverse));
      std::memcpy(out + head_size, &scale, sizeof(scale));
    }
  }
}

}  // namespace

// One query token per row; row i belongs to sequence seq_of_query[i] (its block table) and attends to the
// first context_lens[i] tokens of it. Decodes use one row per sequence; a prefill chunk in batch-invariant
// mode one row per token, so every token is computed by the same loop whatever step, chunk or batch it is in.
torch::Tensor paged_attention(
    const torch::Tensor& query,         // [num_queries, num_heads, head_size]
    const torch::Tensor& key_cache,     // [num_slots, num_kv_heads, head_size] float32, or int8 [.., head_size + 4]
    const torch::Tensor& value_cache,   // like key_cache
    const torch::Tensor& block_tables,  // [num_seqs, max_blocks] int64
    const torch::Tensor& seq_of_query,  // [num_queries] int64, < num_seqs
    const torch::Tensor& context_lens,  // [num_queries] int64, >= 1
    int64_t block_size, double scale) {
  const bool int8_cache = key_cache.dtype() == torch::kInt8;
  TORCH_CHECK(query.dtype() == torch::kFloat32 && value_cache.dtype() == key_cache.dtype() &&
                  (int8_cache || key_cache.dtype() == torch::kFloat32),
              "paged_attention: float32 queries, and a float32 or int8 cache");
  TORCH_CHECK(block_tables.dtype() == torch::kInt64 && context_lens.dtype() == torch::kInt64 &&
                  seq_of_query.dtype() == torch::kInt64,
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

  auto out = torch::empty_like(q);
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

// K or V rows of a step ([tokens, num_kv_heads, head_size]) into their cache slots: a copy into a float32
// cache, quantized into an int8 one.
void write_kv(torch::Tensor cache, const torch::Tensor& slot_mapping, const torch::Tensor& rows) {
  TORCH_CHECK(slot_mapping.dtype() == torch::kInt64 && rows.dim() == 3 && cache.dim() == 3, "write_kv: shapes");
  if (cache.dtype() != torch::kInt8) {
    cache.index_copy_(0, slot_mapping, rows);
    return;
  }
  TORCH_CHECK(cache.is_contiguous() && rows.dtype() == torch::kFloat32 && cache.size(1) == rows.size(1) &&
                  cache.size(2) == rows.size(2) + 4, "write_kv: int8 rows of head_size codes and a float32 scale");
  TORCH_CHECK(slot_mapping.numel() == rows.size(0), "write_kv: one slot per row");
  write_int8_rows(rows, slot_mapping.contiguous(), cache);
}
