// The per-row scaling around fbgemm's int8 linear (see corral/quantization/int8.py): before it, each row
// divided by its max |x| plus a pinning row [1, -1, 0, ...]; after it, each output row multiplied back
// (plus the bias). One call each instead of five torch ops: at one row per step those ops cost more than
// the product itself. Results are bit-identical to the torch reference in corral/kernels/row_scaling.py:
// the same IEEE operations, each rounded once (no FMA contraction).

#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>

std::tuple<at::Tensor, at::Tensor> unit_rows_with_pin(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 2 && input.dtype() == at::kFloat, "unit_rows_with_pin: 2-D float32 input");
  TORCH_CHECK(input.size(1) >= 1, "unit_rows_with_pin: empty rows");
  const auto x = input.contiguous();
  const int64_t rows = x.size(0), width = x.size(1);
  auto normalized = at::empty({rows + 1, width}, x.options());
  auto row_absmax = at::empty({rows, 1}, x.options());
  const float* in = x.data_ptr<float>();
  float* out = normalized.data_ptr<float>();
  float* absmax = row_absmax.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / width);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = in + r * width;
      float m = 0.f;
      for (int64_t k = 0; k < width; ++k) m = std::max(m, std::fabs(row[k]));
      m = std::max(m, 1e-30f);
      absmax[r] = m;
      float* dst = out + r * width;
      for (int64_t k = 0; k < width; ++k) dst[k] = row[k] / m;
    }
  });
  float* pin = out + rows * width;
  std::fill(pin, pin + width, 0.f);
  pin[0] = 1.f;
  pin[std::min<int64_t>(1, width - 1)] = -1.f;
  return {normalized, row_absmax};
}

// y: [rows + 1, n] (the pinning row's output last); returns y[:rows] scaled in place, plus bias.
at::Tensor rescale_rows(at::Tensor y, const at::Tensor& row_absmax, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(y.dim() == 2 && y.dtype() == at::kFloat && y.is_contiguous(), "rescale_rows: contiguous 2-D float32");
  const int64_t rows = y.size(0) - 1, n = y.size(1);
  TORCH_CHECK(row_absmax.numel() == rows && row_absmax.is_contiguous(), "rescale_rows: one scale per row");
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == n && bias->is_contiguous() && bias->dtype() == at::kFloat, "rescale_rows: bias");
    b = bias->data_ptr<float>();
  }
  float* out = y.data_ptr<float>();
  const float* scale = row_absmax.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = out + r * n;
      const float s = scale[r];
      if (b != nullptr) {
        for (int64_t j = 0; j < n; ++j) {
          const float scaled = row[j] * s;
          row[j] = scaled + b[j];
        }
      } else {
        for (int64_t j = 0; j < n; ++j) row[j] *= s;
      }
    }
  });
  return y.narrow(0, 0, rows);
}
