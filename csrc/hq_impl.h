// Kernel bodies, compiled once per ISA (see hq_simd.h). Every entry point works on a row range
// [r0, r1) so the thread pool in hq_api.cpp can split the output rows dynamically.
#pragma once
#include "hq_simd.h"
#include "hq_api.h"

namespace {

// ------------------------------------------------------------------------------- prefetch
// The line at p into the cache; into L2 only (prefetcht2) when g.pf_l2.
static inline void pf_line(const void* p, const Gemv& g) {
    if (g.pf_l2) __builtin_prefetch(p, 0, 1);
    else __builtin_prefetch(p, 0, HQ_PF_LOCALITY);
}
// Weight lines [p, p + n) (n rounded up to whole lines), never at or past g.pf_end.
static inline void pf_lines(const char* p, int64_t n, const Gemv& g) {
    for (int64_t o = 0; o < n; o += 64)
        if (p + o < g.pf_end) pf_line(p + o, g);
}
// Per kernel step: the lines starting in [off, off + n) of the prefetch stream at pf.
static inline void pf_step(const char* pf, int64_t off, int64_t n, const Gemv& g) {
    if (n >= 64) pf_lines(pf + off, n, g);
    else if ((off & 63) < n) pf_lines(pf + (off & ~(int64_t)63), 64, g);
}
// Long rows (g.pf_row > 0): each of the R rows of a block is its own stream, prefetched
// g.pf_row bytes ahead of offset kb; past the row's end the stream continues in the same row
// slot of the next block (base + R * rb), which is the row this slot reads next.
template <int R>
static inline void pf_rows(const char* w, int64_t r, int64_t rb, int64_t kb, int64_t n, const Gemv& g) {
    const int64_t t = kb + g.pf_row;
    for (int i = 0; i < R; i++) {
        const char* base = w + (r + i) * rb + (t < rb ? 0 : (R - 1) * rb);
        pf_step(base, t, n, g);
    }
}
static inline int64_t row_bytes(const Gemv& g) {
    return g.fmt == HQ_BF16 ? 2 * g.in : g.fmt == HQ_INT8 ? g.in : g.groups * (HQ_G / 2);
}

// ----------------------------------------------------------------------------------- bf16
// Weight word i of a row holds inputs 2i (low half) and 2i+1 (high half); the caller passes x
// split into xe = x[0::2] and xo = x[1::2], so a 16-bit shift / mask gives fp32 weights that
// line up with xe / xo without any shuffle.
#if defined(HQ_AVX512BF16)
// AVX512-BF16: the caller passes x rounded to bf16 (g.xb, natural order); one vdpbf16ps per 32
// inputs per row (w[2i] x[2i] + w[2i+1] x[2i+1] into fp32 lane i): one instruction per weight
// vector instead of shift + mask + 2 FMAs. Differs from the fp32-activation path only by the
// rounding of x to bf16 (relative 2^-9 per input; tests bound it).
template <int R, int NB>
static inline void bf16_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, nvec = in / 32 * 32;
    const uint16_t* w = (const uint16_t*)g.w;
    __m512 acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nvec; k += 32) {
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, 2 * in, 2 * k, 64, g);
        else pf_step(pf, R * 2 * k, R * 64, g);
        __m512bh wv[R];
        for (int i = 0; i < R; i++) wv[i] = (__m512bh)_mm512_loadu_si512((const void*)(w + (r + i) * in + k));
        for (int b = 0; b < NB; b++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void*)(g.xb + b * in + k));
            for (int i = 0; i < R; i++) acc[i][b] = _mm512_dpbf16_ps(acc[i][b], wv[i], xv);
        }
    }
    for (int i = 0; i < R; i++) {
        const uint16_t* wr = w + (r + i) * in;
        for (int b = 0; b < NB; b++) {
            float s = _mm512_reduce_add_ps(acc[i][b]);
            const uint16_t* x = g.xb + b * in;
            for (int64_t j = nvec; j < in; j++) s += bf16_to_f32(wr[j]) * bf16_to_f32(x[j]);
            y[b * ldy + r + i] = s;
        }
    }
}
#else
template <int R, int NB>
static inline void bf16_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, half = in / 2, nvec = half / W * W;
    const uint16_t* w = (const uint16_t*)g.w;
    vf acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = vzero();
    for (int64_t k = 0; k < nvec; k += W) {
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, 2 * in, 4 * k, 4 * W, g);  // 4W bytes per row per step
        else pf_step(pf, R * 4 * k, R * 4 * W, g);
        vf lo[R], hi[R];
        for (int i = 0; i < R; i++) vload_bf16x2(w + (r + i) * in + 2 * k, lo[i], hi[i]);
        for (int b = 0; b < NB; b++) {
            vf xe = vload(g.xe + b * half + k), xo = vload(g.xo + b * half + k);
            for (int i = 0; i < R; i++) acc[i][b] = vfma(hi[i], xo, vfma(lo[i], xe, acc[i][b]));
        }
    }
    for (int i = 0; i < R; i++) {
        const uint16_t* wr = w + (r + i) * in;
        for (int b = 0; b < NB; b++) {
            float s = vhsum(acc[i][b]);
            const float* x = g.x + b * in;
            for (int64_t j = 2 * nvec; j < in; j++) s += bf16_to_f32(wr[j]) * x[j];
            y[b * ldy + r + i] = s;
        }
    }
}
#endif

// ----------------------------------------------------------------------------------- int8
#if defined(HQ_AVX512)
// AVX512-VNNI: int8 activations per 64-input group (xq, scale xs; the caller prepares them as
// for int4), one vpdpbusd per 64 weights per row. dpbusd multiplies unsigned by signed bytes, so
// the weights go in as w ^ 0x80 = w + 128 (u8): dot(w + 128, xq) = dot(w, xq) + 128 * sum(xq),
// and sum_g xs_g * 128 * sum(xq_g) = 128 * sum_g xsum_g is one constant per token. Per row:
//   y = scale * (sum_g xs_g * dot(w_g + 128, xq_g) - 128 * sum_g xsum_g)  (+ fp32 tail)
// Five vector ops per 64 weight bytes instead of twelve for widening to fp32: one core keeps up
// with its memory (the fp32 path is compute-bound on one thread).
template <int R, int NB>
static inline void int8_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, full = in / HQ_G, lq = hq_xq_ld(in), ls = hq_xs_ld(in);
    const int8_t* w = (const int8_t*)g.w;
    const float* scale = (const float*)g.meta;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[R][NB];
    float corr[NB];
    for (int b = 0; b < NB; b++) {
        float c = 0.f;
        for (int64_t q = 0; q < full; q++) c += g.xsum[b * ls + q];
        corr[b] = 128.f * c;
        for (int i = 0; i < R; i++) acc[i][b] = _mm512_setzero_ps();
    }
    for (int64_t q = 0; q < full; q++) {
        const int64_t k = q * HQ_G;
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, in, k, HQ_G, g);
        else pf_step(pf, R * k, R * HQ_G, g);
        __m512i wu[R];
        for (int i = 0; i < R; i++)
            wu[i] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(w + (r + i) * in + k)), flip);
        for (int b = 0; b < NB; b++) {  // xq is pair-interleaved (hq_api.h): x[0:32) and x[32:64)
            const int8_t* xg = g.xq + b * lq + hq_xq_off(q);                    // are 64 bytes apart
            const __m512i xv = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)xg)),
                _mm256_loadu_si256((const __m256i*)(xg + HQ_G)), 1);
            const __m512 xs = _mm512_set1_ps(g.xs[b * ls + q]);
            for (int i = 0; i < R; i++) {
                __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu[i], xv);
                acc[i][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), xs, acc[i][b]);
            }
        }
    }
    for (int i = 0; i < R; i++) {
        const int8_t* wr = w + (r + i) * in;
        for (int b = 0; b < NB; b++) {
            float s = _mm512_reduce_add_ps(acc[i][b]) - corr[b];
            const float* x = g.x + b * in;
            for (int64_t j = full * HQ_G; j < in; j++) s += (float)wr[j] * x[j];  // partial group: fp32
            y[b * ldy + r + i] = s * scale[r + i];
        }
    }
}
#else
// fp32 activations, int8 weights widened to fp32 and FMA'd; one fp32 scale per row at the end.
template <int R, int NB>
static inline void int8_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, nvec = in / W * W;
    const int8_t* w = (const int8_t*)g.w;
    const float* scale = (const float*)g.meta;
    vf acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = vzero();
    for (int64_t k = 0; k < nvec; k += W) {
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, in, k, W, g);
        else pf_step(pf, R * k, R * W, g);
        vf wv[R];
        for (int i = 0; i < R; i++) wv[i] = vload_i8(w + (r + i) * in + k);
        for (int b = 0; b < NB; b++) {
            vf xv = vload(g.x + b * in + k);
            for (int i = 0; i < R; i++) acc[i][b] = vfma(wv[i], xv, acc[i][b]);
        }
    }
    for (int i = 0; i < R; i++) {
        const int8_t* wr = w + (r + i) * in;
        for (int b = 0; b < NB; b++) {
            float s = vhsum(acc[i][b]);
            const float* x = g.x + b * in;
            for (int64_t j = nvec; j < in; j++) s += (float)wr[j] * x[j];
            y[b * ldy + r + i] = s * scale[r + i];
        }
    }
}
#endif

// ----------------------------------------------------------------------------------- int4
// Integer dot per 64-input group: unsigned nibbles (0..15) x int8-quantized activations
// (one fp32 activation scale per group and token, prepared by the caller), then
//   y = sum_g scale_g * xs_g * dot(q_g, xq_g) + offset_g * xsum_g
// where xsum_g = xs_g * sum(xq_g) is the sum of the dequantized activations, so the result is
// exactly dot(dequantized w, dequantized x) (an exact xsum would pair the int8 rounding error
// with |w - offset| instead of |w|: ~4x larger error on Gaussian rows).
// xq is pair-interleaved (hq_api.h): group q's x[0:32) at hq_xq_off(q), x[32:64) 64 bytes on.
#if defined(HQ_AVX512)
// AVX512-VNNI. One 64-byte load holds the groups 2p, 2p+1 of a row; two vpdpbusd against the
// pair's activations give 16 int32 partial dots (lanes 0-7: group 2p, 8-15: group 2p+1), which
// are scaled per lane and accumulated in fp32; lanes are summed once at the end of the row.
// Scales and offsets are converted 16 groups at a time (vcvtph2ps): per row and token, the
// lane factors scale * xs come from one vpermps of a 16-group vector, and the offset term is
// one FMA per 16 groups. Chunk of groups [c, c + n), n <= 16 (FULL: n == 16, fully unrolled).
template <int R, int NB, bool FULL>
static inline __attribute__((always_inline)) void int4_chunk(const Gemv& g, int64_t r, int64_t c, int n,
                                                             __m512 (&acc)[R][NB], const char* pf) {
    const int64_t ng = g.groups, rowb = ng * (HQ_G / 2), lq = hq_xq_ld(g.in), ls = hq_xs_ld(g.in);
    const uint8_t* w = (const uint8_t*)g.w;
    const uint16_t* meta = (const uint16_t*)g.meta;
    // per row: fp16 (scale, offset) x 16 groups -> fp32 scales (times xs per token) and offsets
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __mmask32 mm = FULL ? (__mmask32)~0u : (__mmask32)((1ull << (2 * n)) - 1);
    __m512 sx[R][NB];
    for (int i = 0; i < R; i++) {
        // the same chunk of the next block's rows (one line each; the weight prefetch skips meta)
        if ((const char*)g.w + (r + R + i + 1) * rowb <= g.pf_end) pf_line(meta + ((r + R + i) * ng + c) * 2, g);
        const __m512i mv = _mm512_maskz_loadu_epi16(mm, meta + ((r + i) * ng + c) * 2);
        const __m512 m0 = _mm512_cvtph_ps(_mm512_castsi512_si256(mv));
        const __m512 m1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(mv, 1));
        const __m512 sc = _mm512_permutex2var_ps(m0, even, m1), of = _mm512_permutex2var_ps(m0, odd, m1);
        for (int b = 0; b < NB; b++) {
            sx[i][b] = _mm512_mul_ps(sc, _mm512_loadu_ps(g.xs + b * ls + c));
            acc[i][b] = _mm512_fmadd_ps(of, _mm512_loadu_ps(g.xsum + b * ls + c), acc[i][b]);
        }
    }
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    const __m512i half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const int np = FULL ? 8 : (n + 1) / 2;
    for (int p = 0; p < np; p++) {
        const int64_t q = c + 2 * p, kb = q * (HQ_G / 2);  // first group of the pair, its byte offset
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, rowb, kb, HQ_G, g);
        else pf_step(pf, R * kb, R * HQ_G, g);
        __m512i lo[R], hi[R];
        for (int i = 0; i < R; i++) {
            const uint8_t* src = w + (r + i) * rowb + kb;
            // a lone last group: upper half zero (its activations are zero-padded too)
            const __m512i v = FULL || 2 * p + 1 < n ? _mm512_loadu_si512((const void*)src)
                                                    : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)src));
            lo[i] = _mm512_and_si512(v, m0f);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
        }
        const __m512i idx = _mm512_add_epi32(half, _mm512_set1_epi32(2 * p));  // lane -> its group in sx
        for (int b = 0; b < NB; b++) {
            const int8_t* xq = g.xq + b * lq + hq_xq_off(q);
            const __m512i x0 = _mm512_loadu_si512((const void*)xq), x1 = _mm512_loadu_si512((const void*)(xq + HQ_G));
            for (int i = 0; i < R; i++) {
                const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], x0), hi[i], x1);
                acc[i][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(idx, sx[i][b]), acc[i][b]);
            }
        }
    }
}

template <int R, int NB>
static inline void int4_dots(const Gemv& g, int64_t r, float (&s)[R][NB], const char* pf) {
    const int64_t full = g.in / HQ_G;
    __m512 acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= full; c += 16) int4_chunk<R, NB, true>(g, r, c, 16, acc, pf);
    if (c < full) int4_chunk<R, NB, false>(g, r, c, (int)(full - c), acc, pf);
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) s[i][b] = _mm512_reduce_add_ps(acc[i][b]);
}
#elif defined(HQ_AVX2)
// Rows one at a time, in chunks of 8 groups (the chunk's fp16 scales and offsets are converted
// together). Per group and token: p = maddubs(lo, x[0:32)) + maddubs(hi, x[32:64)) (16 int16;
// |maddubs lane| <= 2*15*127, |p| <= 7620: no saturation), widened to 8 int32 by pmaddwd,
// converted to fp32 and FMA'd with scale_g * xs_g (broadcast by vpermps from the chunk's vector;
// a broadcast load after the store was ~8% slower on Zen 3) into the token's accumulator for even
// or odd groups (two FMA chains): 7 vector ops per group and token and no horizontal sums (the
// per-group reduction to one lane, hsum8x8 or vphaddd, cost more per token: ~15% at batch 2-5).
// Offsets: one FMA per chunk and token (offset_g * xsum_g into the odd accumulator). A group's
// nibbles are unpacked once (and, shift, and) and applied to all NB tokens. The float order
// depends only on the row, never on NB: every token's result equals its batch-1 result bit for
// bit (a verify forward of k + 1 tokens computes each row exactly as a decode token does).
template <int NB, bool FULL>
static inline __attribute__((always_inline)) void int4_chunk8(const Gemv& g, const uint8_t* wr, const uint16_t* mr,
                                                              int64_t c, int n, __m256 (&acc)[NB][2]) {
    const int64_t lq = hq_xq_ld(g.in), ls = hq_xs_ld(g.in);
    const __m256i m0f = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 sc, of;  // groups c..c+7: fp32 scales and offsets (zero past n)
    if (FULL) {
        const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // (s, o) pairs -> s x4, o x4
        const __m256 m0 = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mr + 2 * c))), ev);
        const __m256 m1 = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mr + 2 * c + 8))), ev);
        sc = _mm256_permute2f128_ps(m0, m1, 0x20);
        of = _mm256_permute2f128_ps(m0, m1, 0x31);
    } else {
        alignas(32) float s8[8] = {0}, o8[8] = {0};
        for (int q = 0; q < n; q++) { s8[q] = f16_to_f32(mr[2 * (c + q)]); o8[q] = f16_to_f32(mr[2 * (c + q) + 1]); }
        sc = _mm256_load_ps(s8);
        of = _mm256_load_ps(o8);
    }
    __m256 sx[NB];  // scale_g * xs_g per token
    for (int b = 0; b < NB; b++) {
        sx[b] = _mm256_mul_ps(sc, _mm256_loadu_ps(g.xs + b * ls + c));
        acc[b][1] = _mm256_fmadd_ps(of, _mm256_loadu_ps(g.xsum + b * ls + c), acc[b][1]);
    }
    const uint8_t* wc = wr + c * (HQ_G / 2);
    const int8_t* xc = g.xq + c * HQ_G;  // group c's activations (c is even: hq_xq_off(c) = c * G)
#pragma GCC unroll 8
    for (int q = 0; q < (FULL ? 8 : n); q++) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(wc + q * (HQ_G / 2)));
        const __m256i lo = _mm256_and_si256(v, m0f), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
#pragma GCC unroll 8
        for (int b = 0; b < NB; b++) {
            const int8_t* xg = xc + b * lq + hq_xq_off(q);
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i*)xg)),
                                               _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i*)(xg + HQ_G))));
            const __m256 d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            acc[b][q & 1] = _mm256_fmadd_ps(d, _mm256_permutevar8x32_ps(sx[b], _mm256_set1_epi32(q)), acc[b][q & 1]);
        }
    }
}

template <int R, int NB>
static inline void int4_dots(const Gemv& g, int64_t r, float (&s)[R][NB], const char*) {
    const int64_t ng = g.groups, full = g.in / HQ_G, rowb = ng * (HQ_G / 2);
    for (int i = 0; i < R; i++) {
        const uint8_t* wr = (const uint8_t*)g.w + (r + i) * rowb;
        const uint16_t* mr = (const uint16_t*)g.meta + (r + i) * ng * 2;
        __m256 acc[NB][2];
        for (int b = 0; b < NB; b++) acc[b][0] = acc[b][1] = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= full; c += 8) {  // rows one after another: one linear prefetch stream
            if (g.pf_dist > 0) pf_lines((const char*)(wr + c * (HQ_G / 2)) + g.pf_dist, 8 * (HQ_G / 2), g);
            int4_chunk8<NB, true>(g, wr, mr, c, 8, acc);
        }
        if (c < full) {
            if (g.pf_dist > 0) pf_lines((const char*)(wr + c * (HQ_G / 2)) + g.pf_dist, (full - c) * (HQ_G / 2), g);
            int4_chunk8<NB, false>(g, wr, mr, c, (int)(full - c), acc);
        }
        for (int b = 0; b < NB; b++) s[i][b] = vhsum(_mm256_add_ps(acc[b][0], acc[b][1]));
    }
}
#else
template <int R, int NB>
static inline void int4_dots(const Gemv& g, int64_t r, float (&s)[R][NB], const char* pf) {
    const int64_t ng = g.groups, full = g.in / HQ_G, rowb = ng * (HQ_G / 2), lq = hq_xq_ld(g.in), ls = hq_xs_ld(g.in);
    const uint8_t* w = (const uint8_t*)g.w;
    const uint16_t* meta = (const uint16_t*)g.meta;
    float acc[R][NB], off[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = off[i][b] = 0.f;
    for (int64_t q = 0; q < full; q++) {
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, rowb, q * (HQ_G / 2), HQ_G / 2, g);
        else pf_step(pf, R * q * (HQ_G / 2), R * (HQ_G / 2), g);
        for (int i = 0; i < R; i++) {
            const uint8_t* p = w + (r + i) * rowb + q * (HQ_G / 2);
            const uint16_t* m = meta + ((r + i) * ng + q) * 2;
            float sc = f16_to_f32(m[0]), mo = f16_to_f32(m[1]);
            for (int b = 0; b < NB; b++) {
                const int8_t* xq = g.xq + b * lq + hq_xq_off(q);
                int32_t d = 0;
                for (int j = 0; j < HQ_G / 2; j++)
                    d += (int32_t)(p[j] & 15) * xq[j] + (int32_t)(p[j] >> 4) * xq[j + HQ_G];
                acc[i][b] += (float)d * (sc * g.xs[b * ls + q]);
                off[i][b] += mo * g.xsum[b * ls + q];
            }
        }
    }
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) s[i][b] = acc[i][b] + off[i][b];
}
#endif

// One token's int4 activations (the in / G full groups of x [in]) into xq (pair-interleaved,
// hq_api.h), xs, xsum; exactly quant.quantize_activations_int4: xs = max|x| / 127,
// xq = round-half-even(x / xs) (the default rounding mode), xsum = xs * sum(xq).
static void int4_prep(const float* x, int64_t in, int8_t* xq, float* xs, float* xsum) {
    for (int64_t q = 0; q < in / HQ_G; q++) {
        const float* xg = x + q * HQ_G;
        int8_t* dst = xq + hq_xq_off(q);  // x[j] at dst[j], x[32 + j] at dst[64 + j]
#if defined(HQ_AVX512)
        __m512 v[4], amax = _mm512_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm512_loadu_ps(xg + 16 * k);
            amax = _mm512_max_ps(_mm512_abs_ps(v[k]), amax);
        }
        const float scale = _mm512_reduce_max_ps(amax) / 127.f;
        const __m512 vs = _mm512_set1_ps(scale);
        __m512i sum = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            const __m512i qi = scale > 0.f ? _mm512_cvtps_epi32(_mm512_div_ps(v[k], vs)) : _mm512_setzero_si512();
            sum = _mm512_add_epi32(sum, qi);
            _mm_storeu_si128((__m128i*)(dst + 16 * k + (k < 2 ? 0 : HQ_G / 2)), _mm512_cvtepi32_epi8(qi));
        }
        const int32_t isum = _mm512_reduce_add_epi32(sum);
#else
        float amax = 0.f;
        for (int64_t j = 0; j < HQ_G; j++) amax = std::fmax(amax, std::fabs(xg[j]));
        const float scale = amax / 127.f;
        int32_t isum = 0;
        for (int64_t j = 0; j < HQ_G; j++) {
            const int8_t v = scale > 0.f ? (int8_t)std::nearbyint(xg[j] / scale) : 0;
            dst[j < HQ_G / 2 ? j : j + HQ_G / 2] = v;
            isum += v;
        }
#endif
        xs[q] = scale;
        xsum[q] = (float)isum * scale;  // sum of the dequantized activations
    }
}

template <int R, int NB>
static inline void int4_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, ng = g.groups, full = in / HQ_G, rowb = ng * (HQ_G / 2);
    float s[R][NB];
    int4_dots<R, NB>(g, r, s, pf);
    // last, partial group (in % HQ_G inputs): fp32 activations, plain dequantized weights
    const int64_t rem = in - full * HQ_G, hg = HQ_G / 2;
    for (int i = 0; i < R; i++) {
        for (int b = 0; b < NB; b++) {
            if (rem) {
                const uint8_t* p = (const uint8_t*)g.w + (r + i) * rowb + full * hg;
                const uint16_t* m = (const uint16_t*)g.meta + ((r + i) * ng + full) * 2;
                float sc = f16_to_f32(m[0]), mo = f16_to_f32(m[1]);
                const float* x = g.x + b * in + full * HQ_G;
                for (int64_t j = 0; j < rem; j++) {
                    int qv = j < hg ? (p[j] & 15) : (p[j - hg] >> 4);
                    s[i][b] += ((float)qv * sc + mo) * x[j];
                }
            }
            y[b * ldy + r + i] = s[i][b];
        }
    }
}

// ---------------------------------------------------------------------- row-range drivers
// Rows per block by batch: enough accumulators to reuse each x load, few enough to stay in
// registers (16 ymm on AVX2).
template <template <int, int> class K>
struct RowsDriver {
    // Software prefetch: while block [r, r+R) is processed, the block M blocks ahead is
    // prefetched linearly at the same pace (a block is R contiguous rows), M chosen so that
    // about g.pf_dist bytes are in flight; limited to g.pf_end (end of this thread's range).
    template <int NB, int R>
    static void run_nb(const Gemv& g, int64_t r0, int64_t r1, float* y, int64_t ldy) {
        const int64_t rb = row_bytes(g), blk = R * rb;
        int64_t M = g.pf_dist <= 0 ? 0 : (g.pf_dist + blk - 1) / blk;
        Gemv gr = g;  // long rows: per-row streams (see pf_rows)
        gr.pf_row = R > 1 && g.pf_dist > 0 && g.pf_dist / R < rb && blk > g.pf_long ? g.pf_dist / R : 0;
        // rows longer than pf_l2_row: prefetch into L2 only. Several long-row streams defeat the
        // L2 hardware prefetcher, and prefetcht0 then holds an L1 miss buffer for a whole DRAM
        // latency: one Zen 4 thread got ~16 GB/s on 5120x17408 int4 with prefetcht0, ~29 with t2.
        gr.pf_l2 = rb > g.pf_l2_row;
        if (gr.pf_row) M = 1;
        const char* w = (const char*)g.w;
        if (M) {  // warm-up: the blocks the loop below will not prefetch
            int64_t n = M * blk < g.pf_dist ? M * blk : g.pf_dist;
            pf_lines(w + r0 * rb, n, g);
        }
        const char* none = (const char*)g.pf_end;  // a stream at the limit prefetches nothing
        int64_t r = r0;
        for (; r + R <= r1; r += R) K<R, NB>::call(gr, r, y, ldy, M ? w + (r + M * R) * rb : none);
        gr.pf_row = 0;
        for (; r < r1; r++) K<1, NB>::call(gr, r, y, ldy, none);
    }
    // NB >= 2 tokens: rows per block from the format's RN(NB) (or the tuned g.rowsn); each row
    // block's weights are loaded once into registers and applied to all NB tokens.
    template <int NB>
    static void run_r(const Gemv& g, int64_t r0, int64_t r1, float* y, int64_t ldy) {
        switch (g.rowsn ? g.rowsn : K<1, 1>::RN(NB)) {
            case 1: run_nb<NB, 1>(g, r0, r1, y, ldy); break;
            case 3: run_nb<NB, 3>(g, r0, r1, y, ldy); break;
            case 4: run_nb<NB, 4>(g, r0, r1, y, ldy); break;
            default: run_nb<NB, 2>(g, r0, r1, y, ldy); break;
        }
    }
    static void run(const Gemv& g, int64_t r0, int64_t r1, float* y, int64_t ldy) {
        // tokens in chunks of <= 8; each chunk reads the weights once
        for (int b0 = 0; b0 < g.B; b0 += 8) {
            Gemv c = g;
            int nb = g.B - b0 < 8 ? g.B - b0 : 8;
            c.B = nb;
            c.x = g.x + b0 * g.in;
            if (g.xe) { c.xe = g.xe + b0 * (g.in / 2); c.xo = g.xo + b0 * (g.in / 2); }
            if (g.xb) c.xb = g.xb + b0 * g.in;
            if (g.xq) {
                const int64_t lq = hq_xq_ld(g.in), ls = hq_xs_ld(g.in);
                c.xq = g.xq + b0 * lq; c.xs = g.xs + b0 * ls; c.xsum = g.xsum + b0 * ls;
            }
            float* yc = y + b0 * ldy;
            switch (nb) {
                case 1:  // rows per block: the format's default, or a tuned count (hq_tune 5)
                    switch (g.rows1 ? g.rows1 : K<1, 1>::R1(row_bytes(g))) {
                        case 1: run_nb<1, 1>(c, r0, r1, yc, ldy); break;
                        case 2: run_nb<1, 2>(c, r0, r1, yc, ldy); break;
                        case 8: run_nb<1, 8>(c, r0, r1, yc, ldy); break;
                        default: run_nb<1, 4>(c, r0, r1, yc, ldy); break;
                    }
                    break;
                case 2: run_r<2>(c, r0, r1, yc, ldy); break;
                case 3: run_r<3>(c, r0, r1, yc, ldy); break;
                case 4: run_r<4>(c, r0, r1, yc, ldy); break;
                case 5: run_r<5>(c, r0, r1, yc, ldy); break;
                case 6: run_r<6>(c, r0, r1, yc, ldy); break;
                case 7: run_r<7>(c, r0, r1, yc, ldy); break;
                default: run_r<8>(c, r0, r1, yc, ldy); break;
            }
        }
    }
};
// R1(row bytes): rows per block at batch 1. Fewer rows = fewer concurrent memory streams; more =
// fewer activation reads per weight byte. AVX-512, from two cold 1-thread sweeps
// (bench/kernels.py --rows; 2 threads reach the bandwidth with any choice): bf16 2; VNNI int8 8
// on rows >= 8 KB (the 27B down projection), else 1; int4 1 on rows >= 2 KB, else 2. Others: 4.
// RN(batch): rows per block at batch 2..8. The fp32-FMA kernels (AVX2 bf16 and int8) need about 8
// independent accumulators (R x NB) to hide the FMA latency, within 16 ymm registers: one cold
// 1-thread sweep of the 27B FFN on Zen 3 (hq_tune 6): int8 4 rows at batch 2, 3 at 3-4, 2 at 5;
// bf16 3 up to batch 5. The AVX2 int4 kernel works row by row (any R). AVX-512: 2 up to batch 4, then 1.
#if defined(HQ_AVX512)
template <int R, int NB> struct Bf16K { static int R1(int64_t) { return 2; } static int RN(int nb) { return nb <= 4 ? 2 : 1; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { bf16_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int8K { static int R1(int64_t rb) { return rb >= 8192 ? 8 : 1; } static int RN(int nb) { return nb <= 4 ? 2 : 1; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int8_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int4K { static int R1(int64_t rb) { return rb >= 2048 ? 1 : 2; } static int RN(int nb) { return nb <= 4 ? 2 : 1; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int4_block<R, NB>(g, r, y, l, pf); } };
#else
template <int R, int NB> struct Bf16K { static int R1(int64_t) { return 4; } static int RN(int nb) { return nb <= 5 ? 3 : 2; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { bf16_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int8K { static int R1(int64_t) { return 4; } static int RN(int nb) { return nb == 2 ? 4 : nb <= 4 ? 3 : 2; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int8_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int4K { static int R1(int64_t) { return 4; } static int RN(int nb) { return nb <= 4 ? 2 : 1; } static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int4_block<R, NB>(g, r, y, l, pf); } };
#endif

static void rows_any(const Gemv& g, int64_t r0, int64_t r1, float* y, int64_t ldy) {
    if (g.fmt == HQ_BF16) RowsDriver<Bf16K>::run(g, r0, r1, y, ldy);
    else if (g.fmt == HQ_INT8) RowsDriver<Int8K>::run(g, r0, r1, y, ldy);
    else RowsDriver<Int4K>::run(g, r0, r1, y, ldy);
}

// ------------------------------------------------------------------------------ DeltaNet
// One value head of one sequence. Column tiles of the state are independent (delta[j] depends
// on column j only), so per tile: read the tile's rows once accumulating S^T k and S^T q, form
// delta and o, then rewrite the tile (still in L1/L2):
//   kv = e^g S^T k; delta = beta (v - kv); o = e^g S^T q + (k.q) delta; S = e^g S + k delta^T
static void deltanet_head(float* S, const float* k, const float* q, const float* v, float eg,
                          float beta, float kq, int64_t Dk, int64_t Dv, float* o) {
    constexpr int T = 4;  // vectors per column tile
    int64_t j0 = 0;
    const vf veg = vset1(eg), vbeta = vset1(beta), vkq = vset1(kq);
    for (; j0 + T * W <= Dv; j0 += T * W) {
        vf a[T], c[T];
        for (int t = 0; t < T; t++) { a[t] = vzero(); c[t] = vzero(); }
        for (int64_t i = 0; i < Dk; i++) {
            const float* row = S + i * Dv + j0;
            vf ki = vset1(k[i]), qi = vset1(q[i]);
            for (int t = 0; t < T; t++) {
                vf s = vload(row + t * W);
                a[t] = vfma(s, ki, a[t]);
                c[t] = vfma(s, qi, c[t]);
            }
        }
        vf d[T];
        for (int t = 0; t < T; t++) {
            d[t] = vmul(vbeta, vsub(vload(v + j0 + t * W), vmul(veg, a[t])));
            vstore(o + j0 + t * W, vfma(vkq, d[t], vmul(veg, c[t])));
        }
        for (int64_t i = 0; i < Dk; i++) {
            float* row = S + i * Dv + j0;
            vf ki = vset1(k[i]);
            for (int t = 0; t < T; t++) vstore(row + t * W, vfma(ki, d[t], vmul(veg, vload(row + t * W))));
        }
    }
    if (j0 < Dv) {  // ragged columns: scalar
        const int64_t n = Dv - j0;
        float a[4 * 16], c[4 * 16];
        for (int64_t t = 0; t < n; t++) { a[t] = 0.f; c[t] = 0.f; }
        for (int64_t i = 0; i < Dk; i++)
            for (int64_t t = 0; t < n; t++) { float s = S[i * Dv + j0 + t]; a[t] += s * k[i]; c[t] += s * q[i]; }
        for (int64_t t = 0; t < n; t++) {
            float d = beta * (v[j0 + t] - eg * a[t]);
            o[j0 + t] = eg * c[t] + kq * d;
            a[t] = d;
        }
        for (int64_t i = 0; i < Dk; i++)
            for (int64_t t = 0; t < n; t++) S[i * Dv + j0 + t] = eg * S[i * Dv + j0 + t] + k[i] * a[t];
    }
}

}  // namespace
