// Which hand-written AVX-512 loops run: those of paged attention and of the int8 KV writer. Chosen at run time
// from what the CPU offers; tests narrow it (set_paged_attention_isa) to run the portable loops as well.
#pragma once

inline bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return supported;
}

// true: the AVX-512 loops where they exist; false: the portable ones, on every CPU.
inline bool& use_avx512() {
  static bool enabled = has_avx512();
  return enabled;
}
