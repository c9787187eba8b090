// Rotary embedding, rotate-half convention: out = x * cos + rotate_half(x) * sin, for x [tokens, heads,
// head_size] and cos/sin [tokens, 1, head_size]. One pass instead of torch's six ops; bit-identical to the
// reference in corral/kernels/rotary.py (each product and the sum rounded once, no FMA contraction).

#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

at::Tensor apply_rotary(const at::Tensor& input, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(input.dim() == 3 && input.dtype() == at::kFloat, "apply_rotary: [tokens, heads, head_size] float32");
  const int64_t tokens = input.size(0), heads = input.size(1), head_size = input.size(2);
  TORCH_CHECK(head_size % 2 == 0, "apply_rotary: even head size");
  TORCH_CHECK(cos.dtype() == at::kFloat && sin.dtype() == at::kFloat && cos.numel() == tokens * head_size &&
                  sin.numel() == tokens * head_size, "apply_rotary: cos/sin must be float32 [tokens, 1, head_size]");
  const auto c = cos.contiguous();
  const auto s = sin.contiguous();
  auto out = at::empty({tokens, heads, head_size}, input.options());
  // Rows of the input may be strided (q and k are a view into the fused qkv projection).
  const int64_t token_stride = input.stride(0), head_stride = input.stride(1);
  TORCH_CHECK(input.stride(2) == 1, "apply_rotary: head_size must be the contiguous dimension");
  const float* in = input.data_ptr<float>();
  const float* cp = c.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t half = head_size / 2;
  at::parallel_for(0, tokens, std::max<int64_t>(1, 4096 / (heads * head_size)), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* ct = cp + t * head_size;
      const float* st = sp + t * head_size;
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = in + t * token_stride + h * head_stride;
        float* o = dst + (t * heads + h) * head_size;
        for (int64_t d = 0; d < half; ++d) {
          const float a = x[d] * ct[d];
          const float b = (-x[d + half]) * st[d];
          o[d] = a + b;
        }
        for (int64_t d = half; d < head_size; ++d) {
          const float a = x[d] * ct[d];
          const float b = x[d - half] * st[d];
          o[d] = a + b;
        }
      }
    }
  });
  return out;
}
