// Attention decode inner loops, compiled once per ISA after hq_impl.h (see hq_simd.h). One query
// head against L cached rows of D values, fp32 or bf16 (hq_attn_decode in hq_api.cpp drives them).
// The scalar loops they replace summed each q.k dot in one serial chain (the compiler may not
// reorder fp32 sums): ~4 cycles per multiply-add, so a 32K-token context on the 27B's shapes
// took ~0.1 s per attention layer and thread.
#pragma once
#include "hq_simd.h"

namespace {

// W bf16 values at p as fp32 lanes.
static inline vf vload_bf16(const uint16_t* p) {
#if defined(HQ_AVX512)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
#elif defined(HQ_AVX2)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
#else
    return bf16_to_f32(*p);
#endif
}

template <bool BF16>
static inline vf vload_row(const void* base, int64_t i) {
    if (BF16) return vload_bf16((const uint16_t*)base + i);
    return vload((const float*)base + i);
}

template <bool BF16>
static inline float row_at(const void* base, int64_t i) {
    return BF16 ? bf16_to_f32(((const uint16_t*)base)[i]) : ((const float*)base)[i];
}

// The G query heads that share one KV head go together: each cached row is read once for all of
// them (reading it once per query head made the 27B's 6-head groups six passes over the cache).

// p[g * L + s] = scale * dot(q[g], K[s]) for G <= 8 heads q [G, D] and the L rows K[s] = K + s * D.
template <bool BF16, int G>
static void scores_g(const float* q, const void* K, int64_t L, int64_t D, float scale, float* p) {
    const int64_t nv = D / W * W;
    for (int64_t s = 0; s < L; s++) {
        const int64_t row = s * D;
        vf acc[G];
        for (int g = 0; g < G; g++) acc[g] = vzero();
        for (int64_t j = 0; j < nv; j += W) {
            const vf kv = vload_row<BF16>(K, row + j);
            for (int g = 0; g < G; g++) acc[g] = vfma(vload(q + g * D + j), kv, acc[g]);
        }
        for (int g = 0; g < G; g++) {
            float d = vhsum(acc[g]);
            for (int64_t j = nv; j < D; j++) d += q[g * D + j] * row_at<BF16>(K, row + j);
            p[g * L + s] = d * scale;
        }
    }
}

// o[g] [D] += sum_s w[g * L + s] * V[s] for G <= 8 heads: rows in tiles that stay in L1/L2 while
// JB output vectors of every head are accumulated in registers over the tile (JB = 2 while the
// G x 2 accumulators fit the 16 ymm registers: each row's weights are broadcast half as often).
template <bool BF16, int G>
static void values_g(const float* w, const void* V, int64_t L, int64_t D, float* o) {
    constexpr int JB = G <= 6 ? 2 : 1;
    const int64_t nv = D / (JB * W) * (JB * W), tile = 64;
    for (int64_t s0 = 0; s0 < L; s0 += tile) {
        const int64_t s1 = s0 + tile < L ? s0 + tile : L;
        for (int64_t j = 0; j < nv; j += JB * W) {
            vf acc[G][JB];
            for (int g = 0; g < G; g++)
                for (int b = 0; b < JB; b++) acc[g][b] = vload(o + g * D + j + b * W);
            for (int64_t s = s0; s < s1; s++) {
                vf vv[JB];
                for (int b = 0; b < JB; b++) vv[b] = vload_row<BF16>(V, s * D + j + b * W);
                for (int g = 0; g < G; g++) {
                    const vf ws = vset1(w[g * L + s]);
                    for (int b = 0; b < JB; b++) acc[g][b] = vfma(ws, vv[b], acc[g][b]);
                }
            }
            for (int g = 0; g < G; g++)
                for (int b = 0; b < JB; b++) vstore(o + g * D + j + b * W, acc[g][b]);
        }
        for (int64_t j = nv; j < D; j++)
            for (int g = 0; g < G; g++) {
                float a = o[g * D + j];
                for (int64_t s = s0; s < s1; s++) a += w[g * L + s] * row_at<BF16>(V, s * D + j);
                o[g * D + j] = a;
            }
    }
}

template <bool BF16>
static void scores_any(const float* q, int G, const void* K, int64_t L, int64_t D, float scale, float* p) {
    for (int g0 = 0; g0 < G; g0 += 8) {  // blocks of up to 8 heads: accumulators stay in registers
        const int n = G - g0 < 8 ? G - g0 : 8;
        const float* qg = q + g0 * D;
        float* pg = p + g0 * L;
        switch (n) {
            case 1: scores_g<BF16, 1>(qg, K, L, D, scale, pg); break;
            case 2: scores_g<BF16, 2>(qg, K, L, D, scale, pg); break;
            case 3: scores_g<BF16, 3>(qg, K, L, D, scale, pg); break;
            case 4: scores_g<BF16, 4>(qg, K, L, D, scale, pg); break;
            case 5: scores_g<BF16, 5>(qg, K, L, D, scale, pg); break;
            case 6: scores_g<BF16, 6>(qg, K, L, D, scale, pg); break;
            case 7: scores_g<BF16, 7>(qg, K, L, D, scale, pg); break;
            default: scores_g<BF16, 8>(qg, K, L, D, scale, pg); break;
        }
    }
}

template <bool BF16>
static void values_any(const float* w, int G, const void* V, int64_t L, int64_t D, float* o) {
    for (int g0 = 0; g0 < G; g0 += 8) {
        const int n = G - g0 < 8 ? G - g0 : 8;
        const float* wg = w + g0 * L;
        float* og = o + g0 * D;
        switch (n) {
            case 1: values_g<BF16, 1>(wg, V, L, D, og); break;
            case 2: values_g<BF16, 2>(wg, V, L, D, og); break;
            case 3: values_g<BF16, 3>(wg, V, L, D, og); break;
            case 4: values_g<BF16, 4>(wg, V, L, D, og); break;
            case 5: values_g<BF16, 5>(wg, V, L, D, og); break;
            case 6: values_g<BF16, 6>(wg, V, L, D, og); break;
            case 7: values_g<BF16, 7>(wg, V, L, D, og); break;
            default: values_g<BF16, 8>(wg, V, L, D, og); break;
        }
    }
}

// q [G, D] normed query heads of one KV head; p [G, L]
static void attn_scores(const float* q, int G, const void* K, int bf16, int64_t L, int64_t D, float scale, float* p) {
    if (bf16) scores_any<true>(q, G, K, L, D, scale, p);
    else scores_any<false>(q, G, K, L, D, scale, p);
}

// w [G, L] softmax weights; o [G, D] accumulated into
static void attn_values(const float* w, int G, const void* V, int bf16, int64_t L, int64_t D, float* o) {
    if (bf16) values_any<true>(w, G, V, L, D, o);
    else values_any<false>(w, G, V, L, D, o);
}

}  // namespace
