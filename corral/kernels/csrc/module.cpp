// The extension module: one Python binding per kernel (each defined in its own source file).

#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "decoder_layer.h"

void write_kv(torch::Tensor cache, const torch::Tensor& slot_mapping, const torch::Tensor& rows);
torch::Tensor gather_kv(const torch::Tensor& cache, const torch::Tensor& slot_mapping, at::ScalarType dtype);
torch::Tensor paged_attention(const torch::Tensor& query, const torch::Tensor& key_cache,
                              const torch::Tensor& value_cache, const torch::Tensor& block_tables,
                              const torch::Tensor& seq_of_query, const torch::Tensor& context_lens,
                              int64_t block_size, double scale);
bool prefill_attention_supported(int64_t head_size);
torch::Tensor prefill_attention(const torch::Tensor& query, const torch::Tensor& keys, const torch::Tensor& values,
                                double scale);
std::tuple<torch::Tensor, torch::Tensor> unit_rows_with_pin(const torch::Tensor& input);
torch::Tensor rescale_rows(torch::Tensor y, const torch::Tensor& row_absmax, const c10::optional<torch::Tensor>& bias);
torch::Tensor rms_norm(const torch::Tensor& input, const torch::Tensor& weight, double eps);
torch::Tensor block_linear(const torch::Tensor& input, const torch::Tensor& values, const torch::Tensor& scales,
                           const c10::optional<torch::Tensor>& mins, const c10::optional<torch::Tensor>& bias,
                           int64_t bits, int64_t group_size, int64_t out_features, int64_t activation_bits);
std::string block_linear_isa();
std::vector<std::string> supported_block_linear_isas();
void set_block_linear_isa(const std::string& name);
std::string paged_attention_isa();
std::vector<std::string> supported_paged_attention_isas();
void set_paged_attention_isa(const std::string& name);
torch::Tensor apply_rotary(const torch::Tensor& input, const torch::Tensor& cos, const torch::Tensor& sin);
torch::Tensor decoder_layer(const DecoderLayerWeights& layer, const torch::Tensor& hidden, const torch::Tensor& cos,
                            const torch::Tensor& sin, const torch::Tensor& kv_cache, const torch::Tensor& slot_mapping,
                            const torch::Tensor& block_tables, const torch::Tensor& seq_of_token,
                            const torch::Tensor& context_lens);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "one-token-per-row attention over a paged fp32 or int8 KV cache",
        py::call_guard<py::gil_scoped_release>());
  m.def("paged_attention_isa", &paged_attention_isa, "the loops paged_attention uses for head sizes 64 and 128");
  m.def("supported_paged_attention_isas", &supported_paged_attention_isas, "the attention loops this CPU can run");
  m.def("set_paged_attention_isa", &set_paged_attention_isa, "use the given attention loops (for tests)");
  m.def("prefill_attention", &prefill_attention, "causal attention of a prefill chunk over its gathered context",
        py::call_guard<py::gil_scoped_release>());
  m.def("prefill_attention_supported", &prefill_attention_supported,
        "whether prefill_attention runs here for this head size (AVX-512 loops on, head size 64 or 128)");
  m.def("write_kv", &write_kv, "K or V rows into their cache slots (quantized into an int8 cache)",
        py::call_guard<py::gil_scoped_release>());
  m.def("gather_kv", &gather_kv, "int8 cache rows at slots, dequantized, as [num_kv_heads, slots, head_size]",
        py::call_guard<py::gil_scoped_release>());
  m.def("unit_rows_with_pin", &unit_rows_with_pin, "rows / max|row|, plus the pinning row; and the maxima");
  m.def("rescale_rows", &rescale_rows, "y[:rows] * row_absmax (+ bias), in place");
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows",
        py::call_guard<py::gil_scoped_release>());
  m.def("block_linear", &block_linear, "x @ W.T (+ bias) for int4/int8 group-quantized W, 8- or 16-bit activations",
        py::call_guard<py::gil_scoped_release>());
  m.def("block_linear_isa", &block_linear_isa, "the instruction set block_linear's loops use");
  m.def("supported_block_linear_isas", &supported_block_linear_isas, "the loops this CPU can run");
  m.def("set_block_linear_isa", &set_block_linear_isa, "use the given loops (a narrower set, for tests)");
  py::class_<BlockLinearWeights>(m, "BlockLinearWeights")
      .def(py::init<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, int64_t,
                    int64_t, int64_t, int64_t, c10::optional<torch::Tensor>, int64_t>());
  py::class_<DecoderLayerWeights>(m, "DecoderLayerWeights")
      .def(py::init<BlockLinearWeights, BlockLinearWeights, BlockLinearWeights, BlockLinearWeights, torch::Tensor,
                    torch::Tensor, double, int64_t, int64_t, int64_t, double, int64_t>());
  m.def("decoder_layer", &decoder_layer, "one decoder layer for all-decode steps over block-quantized linears",
        py::call_guard<py::gil_scoped_release>());
  m.def("apply_rotary", &apply_rotary, "rotate-half rotary embedding of float32 [tokens, heads, head_size]",
        py::call_guard<py::gil_scoped_release>());
}
