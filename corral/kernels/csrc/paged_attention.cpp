// Attention straight from the paged KV cache, one query token per row (decodes; every token in
// batch-invariant mode): keys and values read in place through the block table (no gathered copy of the
// context), grouped-query heads sharing each KV head's reads. fp32 only; the torch reference in
// corral/kernels/paged_attention.py defines the result.
//
// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at run time
// (GCC target_clones), so one build runs on both the Zen 3 and the Zen 4 hosts.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct HeadGroup {
  const float* query;       // [group, head_size], rows query_stride apart
  float* out;               // [group, head_size], rows query_stride apart
  int64_t query_stride;
  int64_t group;            // query heads per KV head
  int64_t head_size;
};

struct PagedKV {
  const float* keys;        // first slot's key for this KV head; slots slot_stride apart
  const float* values;
  int64_t slot_stride;
  const int64_t* block_table;
  int64_t block_size;
  int64_t context_len;
};

// Calls fn(t, slot) for the sequence's tokens in order, walking its blocks (no division per token).
template <typename Fn>
inline void for_each_slot(const PagedKV& kv, Fn&& fn) {
  for (int64_t first = 0, b = 0; first < kv.context_len; first += kv.block_size, ++b) {
    const int64_t base = kv.block_table[b] * kv.block_size;
    const int64_t n = std::min(kv.block_size, kv.context_len - first);
    for (int64_t i = 0; i < n; ++i) fn(first + i, base + i);
  }
}

// HEAD_SIZE > 0 fixes the head size at compile time so the inner loops unroll; 0 reads it at run time.
template <int64_t HEAD_SIZE>
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend(const HeadGroup& heads, const PagedKV& kv, float scale, float* scores /* [group, context_len] */) {
  const int64_t group = heads.group, context_len = kv.context_len;
  const int64_t head_size = HEAD_SIZE > 0 ? HEAD_SIZE : heads.head_size;
  for_each_slot(kv, [&](int64_t t, int64_t slot) {
    const float* key = kv.keys + slot * kv.slot_stride;
    for (int64_t g = 0; g < group; ++g) {
      const float* q = heads.query + g * heads.query_stride;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < head_size; ++d) dot += q[d] * key[d];
      scores[g * context_len + t] = dot * scale;
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
    const float* value = kv.values + slot * kv.slot_stride;
    for (int64_t g = 0; g < group; ++g) {
      const float p = scores[g * context_len + t];
      float* out = heads.out + g * heads.query_stride;
#pragma omp simd
      for (int64_t d = 0; d < head_size; ++d) out[d] += p * value[d];
    }
  });
}

void attend_any(const HeadGroup& heads, const PagedKV& kv, float scale, float* scores) {
  switch (heads.head_size) {
    case 64: return attend<64>(heads, kv, scale, scores);
    case 128: return attend<128>(heads, kv, scale, scores);
    default: return attend<0>(heads, kv, scale, scores);
  }
}

}  // namespace

// One query token per row; row i belongs to sequence seq_of_query[i] (its block table) and attends to the
// first context_lens[i] tokens of it. Decodes use one row per sequence; a prefill chunk in batch-invariant
// mode one row per token, so every token is computed by the same loop whatever step, chunk or batch it is in.
torch::Tensor paged_attention(
    const torch::Tensor& query,         // [num_queries, num_heads, head_size]
    const torch::Tensor& key_cache,     // [num_slots, num_kv_heads, head_size]
    const torch::Tensor& value_cache,   // [num_slots, num_kv_heads, head_size]
    const torch::Tensor& block_tables,  // [num_seqs, max_blocks] int64
    const torch::Tensor& seq_of_query,  // [num_queries] int64, < num_seqs
    const torch::Tensor& context_lens,  // [num_queries] int64, >= 1
    int64_t block_size, double scale) {
  TORCH_CHECK(query.dtype() == torch::kFloat32 && key_cache.dtype() == torch::kFloat32 &&
                  value_cache.dtype() == torch::kFloat32, "paged_attention: fp32 only");
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
  TORCH_CHECK(key_cache.size(2) == head_size && num_heads % num_kv_heads == 0, "shape mismatch");
  TORCH_CHECK(lens.size(0) == num_queries && seqs.size(0) == num_queries, "one sequence and length per query");
  const int64_t group = num_heads / num_kv_heads, max_blocks = tables.size(1);
  const int64_t* lens_ptr = lens.data_ptr<int64_t>();
  const int64_t* seq_ptr = seqs.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_queries; ++i) {
    TORCH_CHECK(seq_ptr[i] >= 0 && seq_ptr[i] < num_seqs, "sequence index out of range");
    TORCH_CHECK(lens_ptr[i] >= 1 && lens_ptr[i] <= max_blocks * block_size, "context length out of range");
  }

  auto out = torch::empty_like(q);
  const float* q_ptr = q.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const float* k_ptr = key_cache.data_ptr<float>();
  const float* v_ptr = value_cache.data_ptr<float>();
  const int64_t* table_ptr = tables.data_ptr<int64_t>();
  const int64_t slot_stride = num_kv_heads * head_size;

  at::parallel_for(0, num_queries * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t first_head = i * num_heads + h * group;
      const HeadGroup heads{q_ptr + first_head * head_size, out_ptr + first_head * head_size, head_size,
                            group, head_size};
      const PagedKV kv{k_ptr + h * head_size, v_ptr + h * head_size, slot_stride,
                       table_ptr + seq_ptr[i] * max_blocks, block_size, lens_ptr[i]};
      scores.resize(group * kv.context_len);
      attend_any(heads, kv, static_cast<float>(scale), scores.data());
    }
  });
  return out;
}
