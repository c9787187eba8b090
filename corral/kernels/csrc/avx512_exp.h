// AVX-512 pieces shared by the attention kernels (paged_attention.cpp, prefill_attention.cpp).
#pragma once

#include <immintrin.h>

#define CORRAL_AVX512_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"

// exp(v) for 16 values v <= 0 (softmax arguments after subtracting the max), within 2 ulp: the steps of
// paged_attention.cpp's exp_non_positive16 (Cody-Waite reduction, degree-7 Taylor polynomial), so the same
// results. Below -87.3 the result is about 2^-126.
__attribute__((target(CORRAL_AVX512_TARGET), always_inline))
inline __m512 exp_non_positive_avx512(__m512 v) {
  v = _mm512_max_ps(v, _mm512_set1_ps(-87.3f));
  const __m512i k = _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504f)), _mm512_set1_ps(0.5f)));
  const __m512 kf = _mm512_cvtepi32_ps(k);
  const __m512 r = _mm512_add_ps(_mm512_sub_ps(v, _mm512_mul_ps(kf, _mm512_set1_ps(0.693359375f))),
                                 _mm512_mul_ps(kf, _mm512_set1_ps(2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  for (const float c : {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) {
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
  }
  return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23)));
}
