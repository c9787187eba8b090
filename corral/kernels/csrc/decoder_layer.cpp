// One Llama decoder layer in one call, for steps whose tokens are all decodes, over block-quantized
// linears (block_linear.cpp; or their bf16 copies for big batches). It runs the same kernels and ATen ops, in the same order, as the module path
// (models/llama.py with the CPU paged backend), so its output is bit-identical; what it removes is the
// Python between them: ~25 module and wrapper calls per layer, which cost more than the arithmetic for a
// 135M model at one token per step.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "decoder_layer.h"

at::Tensor block_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales,
                        const c10::optional<at::Tensor>& mins, const c10::optional<at::Tensor>& bias,
                        int64_t bits, int64_t group_size, int64_t out_features, int64_t activation_bits);
at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps);
at::Tensor apply_rotary(const at::Tensor& input, const at::Tensor& cos, const at::Tensor& sin);
void write_kv(at::Tensor cache, const at::Tensor& slot_mapping, const at::Tensor& rows);
at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_tables,
                           const at::Tensor& seq_of_query, const at::Tensor& context_lens,
                           int64_t block_size, double scale);

namespace {

// quantization/blockwise.py's dense_linear: oneDNN's product on a weight it prepacked (an opaque tensor), through
// the dispatcher as torch.ops.mkldnn._linear_pointwise, else a plain linear.
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight) {
  if (!weight.is_mkldnn()) return at::linear(x, weight);
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, weight, c10::IValue(), std::string("none"), c10::List<std::optional<c10::Scalar>>(),
                          std::string("")};
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

// The ops of BlockLinear.apply (quantization/blockwise.py), so both paths round alike.
at::Tensor linear(const BlockLinearWeights& w, const at::Tensor& x) {
  if (w.dense.has_value() && x.size(0) >= w.dense_min_rows) {
    auto y = dense_linear(x.to(w.dense->scalar_type()), *w.dense).to(at::kFloat);
    return w.bias.has_value() ? y.add_(*w.bias) : y;
  }
  return block_linear(x, w.values, w.scales, w.mins, w.bias, w.bits, w.group_size, w.out_features, w.activation_bits);
}

}  // namespace

at::Tensor decoder_layer(const DecoderLayerWeights& layer, const at::Tensor& hidden,  // [tokens, hidden]
                         const at::Tensor& cos, const at::Tensor& sin,              // [tokens, 1, head_size]
                         const at::Tensor& kv_cache,  // [2, num_slots, num_kv_heads, head_size (+ 4 if int8)]
                         const at::Tensor& slot_mapping,   // [tokens]
                         const at::Tensor& block_tables, const at::Tensor& seq_of_token,
                         const at::Tensor& context_lens) {
  const int64_t tokens = hidden.size(0), head_size = layer.head_size;
  const int64_t q_size = layer.num_heads * head_size, kv_size = layer.num_kv_heads * head_size;

  const auto qkv = linear(layer.qkv_proj, rms_norm(hidden, layer.input_norm, layer.eps));
  const auto qk = apply_rotary(qkv.narrow(1, 0, q_size + kv_size).view({tokens, -1, head_size}), cos, sin);
  const auto q = qk.narrow(1, 0, layer.num_heads);
  const auto k = qk.narrow(1, layer.num_heads, layer.num_kv_heads);
  const auto v = qkv.narrow(1, q_size + kv_size, kv_size).view({tokens, layer.num_kv_heads, head_size});
  const auto key_cache = kv_cache.select(0, 0), value_cache = kv_cache.select(0, 1);
  write_kv(key_cache, slot_mapping, k);
  write_kv(value_cache, slot_mapping, v);
  const auto attended = paged_attention(q, key_cache, value_cache, block_tables, seq_of_token, context_lens,
                                        layer.block_size, layer.attention_scale);
  const auto after_attention = hidden + linear(layer.o_proj, attended.view({tokens, q_size}));

  const auto gate_up = linear(layer.gate_up_proj, rms_norm(after_attention, layer.post_attention_norm, layer.eps));
  const int64_t intermediate = gate_up.size(1) / 2;
  const auto activated = at::silu(gate_up.narrow(1, 0, intermediate)) * gate_up.narrow(1, intermediate, intermediate);
  return after_attention + linear(layer.down_proj, activated);
}
