// Weights of a decoder layer whose linears are block-quantized, held by the C++ side once at load time.
#pragma once

#include <ATen/ATen.h>

struct BlockLinearWeights {
  at::Tensor values, scales;
  c10::optional<at::Tensor> mins, bias;
  int64_t bits, group_size, out_features;  // layout in block_linear.cpp
  int64_t activation_bits;                 // 8 or 16
  c10::optional<at::Tensor> dense;  // the dequantized weight (bf16), for inputs of >= dense_min_rows rows
  int64_t dense_min_rows;
};

struct DecoderLayerWeights {
  BlockLinearWeights qkv_proj, o_proj, gate_up_proj, down_proj;
  at::Tensor input_norm, post_attention_norm;
  double eps;
  int64_t num_heads, num_kv_heads, head_size;
  double attention_scale;
  int64_t block_size;  // of the paged KV cache
};
