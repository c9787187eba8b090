// Writing a step's K or V rows into the paged cache: a copy into a float32 cache, quantized into an int8 one
// (corral/kernels/kv_int8.py has the layout: head_size codes, then the row's float32 scale). Every loop rounds as
// kv_int8.quantize_rows does, operation for operation, so all of them store the same bytes.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "isa.h"

namespace {

// One row of head_size floats into head_size codes and the 4 bytes of its scale.
void quantize_row(const float* v, int8_t* out, int64_t head_size) {
  float absmax = 0.f;
  for (int64_t d = 0; d < head_size; ++d) absmax = std::max(absmax, std::fabs(v[d]));
  const float scale = absmax / 127.f;
  const float inverse = scale > 0.f ? 1.f / scale : 0.f;
  for (int64_t d = 0; d < head_size; ++d) out[d] = static_cast<int8_t>(std::nearbyint(v[d] * inverse));
  std::memcpy(out + head_size, &scale, sizeof(scale));
}

// quantize_row in AVX-512: max is exact in any order, and roundscale to nearest is nearbyint's rounding.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
void quantize_row_avx512(const float* v, int8_t* out, int64_t head_size) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  __m512 top = _mm512_setzero_ps();
  for (int64_t d = 0; d < head_size; d += 16) {
    const __mmask16 lanes = head_size - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (head_size - d)) - 1);
    top = _mm512_max_ps(top, _mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(lanes, v + d)));
  }
  const float scale = _mm512_reduce_max_ps(top) / 127.f;
  const __m512 inverse = _mm512_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
  for (int64_t d = 0; d < head_size; d += 16) {
    const __mmask16 lanes = head_size - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (head_size - d)) - 1);
    const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, v + d), inverse);
    const __m512 rounded = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_cvtepi32_storeu_epi8(out + d, lanes, _mm512_cvtps_epi32(rounded));
  }
  std::memcpy(out + head_size, &scale, sizeof(scale));
}

// Row (t, h) of x ([tokens, heads, head_size] float32, unit stride along head_size) into int8 row slots[t].
void write_int8_rows(const at::Tensor& x, const int64_t* slots, at::Tensor& cache) {
  const int64_t tokens = x.size(0), heads = x.size(1), head_size = x.size(2);
  const int64_t token_stride = x.stride(0), head_stride = x.stride(1), row = cache.size(2);
  const float* x_ptr = x.data_ptr<float>();
  int8_t* cache_ptr = cache.data_ptr<int8_t>();
  const auto quantize = use_avx512() ? quantize_row_avx512 : quantize_row;
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t h = 0; h < heads; ++h)
        quantize(x_ptr + t * token_stride + h * head_stride, cache_ptr + (slots[t] * heads + h) * row, head_size);
  });
}

}  // namespace

// K or V rows of a step ([tokens, num_kv_heads, head_size]) into their cache slots.
void write_kv(at::Tensor cache, const at::Tensor& slot_mapping, const at::Tensor& rows) {
  TORCH_CHECK(slot_mapping.dtype() == at::kLong && rows.dim() == 3 && cache.dim() == 3, "write_kv: shapes");
  if (cache.dtype() != at::kChar) {
    cache.index_copy_(0, slot_mapping, rows);
    return;
  }
  TORCH_CHECK(cache.is_contiguous() && rows.dtype() == at::kFloat && cache.size(1) == rows.size(1) &&
                  cache.size(2) == rows.size(2) + 4, "write_kv: int8 rows of head_size codes and a float32 scale");
  TORCH_CHECK(slot_mapping.numel() == rows.size(0), "write_kv: one slot per row");
  const auto slots = slot_mapping.contiguous();
  const int64_t* slot_ptr = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.numel(); ++t)  // all checked before any is written
    TORCH_CHECK(slot_ptr[t] >= 0 && slot_ptr[t] < cache.size(0), "write_kv: slot out of range");
  const auto x = rows.stride(2) == 1 ? rows : rows.contiguous();
  write_int8_rows(x, slot_ptr, cache);
}

namespace {

template <typename T>
void dequantize_rows(const int8_t* cache, const int64_t* slots, int64_t n, int64_t heads, int64_t head_size, T* out) {
  const int64_t row = head_size + 4;
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = begin; i < end; ++i) {
        const int8_t* codes = cache + (slots[i] * heads + h) * row;
        float scale;
        std::memcpy(&scale, codes + head_size, sizeof(scale));
        T* dst = out + (h * n + i) * head_size;
        for (int64_t d = 0; d < head_size; ++d) dst[d] = static_cast<T>(static_cast<float>(codes[d]) * scale);
      }
  });
}

}  // namespace

// The rows at slots of an int8 K or V cache ([num_slots, num_kv_heads, head_size + 4]), dequantized as
// kv_int8.dequantize does (code * scale in float32), then rounded to dtype (float32 or bfloat16), laid out
// [num_kv_heads, slots, head_size] as attention reads them: one pass instead of gather, dequantize, transpose
// and cast.
at::Tensor gather_kv(const at::Tensor& cache, const at::Tensor& slot_mapping, at::ScalarType dtype) {
  TORCH_CHECK(cache.dtype() == at::kChar && cache.dim() == 3 && cache.is_contiguous() && cache.size(2) > 4,
              "gather_kv: a contiguous int8 cache");
  TORCH_CHECK(slot_mapping.dtype() == at::kLong && slot_mapping.dim() == 1, "gather_kv: int64 slots");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "gather_kv: float32 or bfloat16 output");
  const auto slots = slot_mapping.contiguous();
  const int64_t n = slots.numel(), heads = cache.size(1), head_size = cache.size(2) - 4;
  const int64_t* slot_ptr = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(slot_ptr[i] >= 0 && slot_ptr[i] < cache.size(0), "gather_kv: slot out of range");
  auto out = at::empty({heads, n, head_size}, cache.options().dtype(dtype));
  const int8_t* cache_ptr = cache.data_ptr<int8_t>();
  if (dtype == at::kFloat)
    dequantize_rows(cache_ptr, slot_ptr, n, heads, head_size, out.data_ptr<float>());
  else
    dequantize_rows(cache_ptr, slot_ptr, n, heads, head_size, out.data_ptr<at::BFloat16>());
  return out;
}
