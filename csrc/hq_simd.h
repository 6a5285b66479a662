// Per-ISA vector abstraction used by hq_impl.h. Exactly one of HQ_AVX512 / HQ_AVX2 / neither
// (portable scalar) is defined by the translation unit that includes this file; each TU is
// compiled with its own -m flags and keeps everything in an anonymous namespace, so the three
// copies never collide and the scalar copy never contains an AVX instruction.
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>
#if defined(HQ_AVX2) || defined(HQ_AVX512)
#include <immintrin.h>
#endif

namespace {

#if defined(HQ_AVX512)
constexpr int W = 16;
typedef __m512 vf;
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float a) { return _mm512_set1_ps(a); }
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline float vhsum(vf a) { return _mm512_reduce_add_ps(a); }
// 2W bf16 values -> even-indexed ones in lo, odd-indexed ones in hi (a 16-bit shift / mask).
static inline void vload_bf16x2(const uint16_t* p, vf& lo, vf& hi) {
    __m512i r = _mm512_loadu_si512((const void*)p);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xFFFF0000u)));
}
static inline vf vload_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
#elif defined(HQ_AVX2)
constexpr int W = 8;
typedef __m256 vf;
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vset1(float a) { return _mm256_set1_ps(a); }
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf a) { _mm256_storeu_ps(p, a); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline float vhsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline void vload_bf16x2(const uint16_t* p, vf& lo, vf& hi) {
    __m256i r = _mm256_loadu_si256((const __m256i*)p);
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xFFFF0000u)));
}
static inline vf vload_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
#else
constexpr int W = 1;
typedef float vf;
static inline vf vzero() { return 0.f; }
static inline vf vset1(float a) { return a; }
static inline vf vload(const float* p) { return *p; }
static inline void vstore(float* p, vf a) { *p = a; }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline float vhsum(vf a) { return a; }
static inline void vload_bf16x2(const uint16_t* p, vf& lo, vf& hi) {
    uint32_t r; std::memcpy(&r, p, 4);
    uint32_t a = r << 16, b = r & 0xFFFF0000u;
    std::memcpy(&lo, &a, 4); std::memcpy(&hi, &b, 4);
}
static inline vf vload_i8(const int8_t* p) { return (float)*p; }
#endif

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f;
}

static inline float f16_to_f32(uint16_t h) {
#if defined(HQ_AVX2) || defined(HQ_AVX512)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else {  // subnormal: renormalise
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) u = sign | 0x7F800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; std::memcpy(&f, &u, 4); return f;
#endif
}

}  // namespace
