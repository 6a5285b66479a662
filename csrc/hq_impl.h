// Kernel bodies, compiled once per ISA (see hq_simd.h). Every entry point works on a row range
// [r0, r1) so the thread pool in hq_api.cpp can split the output rows dynamically.
#pragma once
#include "hq_simd.h"
#include "hq_api.h"

namespace {

// ------------------------------------------------------------------------------- prefetch
// Lines [p, p + n) into the cache (n rounded up to whole lines), never at or past lim.
static inline void pf_lines(const char* p, int64_t n, const char* lim) {
    for (int64_t o = 0; o < n; o += 64)
        if (p + o < lim) __builtin_prefetch(p + o, 0, HQ_PF_LOCALITY);
}
// Per kernel step: the lines starting in [off, off + n) of the prefetch stream at pf.
static inline void pf_step(const char* pf, int64_t off, int64_t n, const char* lim) {
    if (n >= 64) pf_lines(pf + off, n, lim);
    else if ((off & 63) < n) pf_lines(pf + (off & ~(int64_t)63), 64, lim);
}
// Long rows (g.pf_row > 0): each of the R rows of a block is its own stream, prefetched
// g.pf_row bytes ahead of offset kb; past the row's end the stream continues in the same row
// slot of the next block (base + R * rb), which is the row this slot reads next.
template <int R>
static inline void pf_rows(const char* w, int64_t r, int64_t rb, int64_t kb, int64_t n, const Gemv& g) {
    const int64_t t = kb + g.pf_row;
    for (int i = 0; i < R; i++) {
        const char* base = w + (r + i) * rb + (t < rb ? 0 : (R - 1) * rb);
        pf_step(base, t, n, g.pf_end);
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
        else pf_step(pf, R * 2 * k, R * 64, g.pf_end);
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
        else pf_step(pf, R * 4 * k, R * 4 * W, g.pf_end);
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
    const int64_t in = g.in, ng = g.groups, full = in / HQ_G;
    const int8_t* w = (const int8_t*)g.w;
    const float* scale = (const float*)g.meta;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[R][NB];
    float corr[NB];
    for (int b = 0; b < NB; b++) {
        float c = 0.f;
        for (int64_t q = 0; q < full; q++) c += g.xsum[b * ng + q];
        corr[b] = 128.f * c;
        for (int i = 0; i < R; i++) acc[i][b] = _mm512_setzero_ps();
    }
    for (int64_t q = 0; q < full; q++) {
        const int64_t k = q * HQ_G;
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, in, k, HQ_G, g);
        else pf_step(pf, R * k, R * HQ_G, g.pf_end);
        __m512i wu[R];
        for (int i = 0; i < R; i++)
            wu[i] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(w + (r + i) * in + k)), flip);
        for (int b = 0; b < NB; b++) {
            const __m512i xv = _mm512_loadu_si512((const void*)(g.xq + (b * ng + q) * HQ_G));
            const __m512 xs = _mm512_set1_ps(g.xs[b * ng + q]);
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
        else pf_step(pf, R * k, R * W, g.pf_end);
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
#if defined(HQ_AVX2) || defined(HQ_AVX512)
static inline __m256i u4s8_dot(__m256i lo, __m256i hi, const int8_t* xq) {
    __m256i x0 = _mm256_loadu_si256((const __m256i*)xq);
    __m256i x1 = _mm256_loadu_si256((const __m256i*)(xq + 32));
#if defined(HQ_AVX512)  // AVX512-VNNI (+VL): u8 x s8 -> s32 in one instruction
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, x0), hi, x1);
#else  // maddubs: |products| <= 15*127*2 per pair, sum of both halves <= 7620: no saturation
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
}
static inline float hsum256(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

template <int R, int NB>
static inline void int4_block(const Gemv& g, int64_t r, float* y, int64_t ldy, const char* pf) {
    const int64_t in = g.in, ng = g.groups, full = in / HQ_G, rowb = ng * (HQ_G / 2);
    const uint8_t* w = (const uint8_t*)g.w;
    const uint16_t* meta = (const uint16_t*)g.meta;
    float off[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) off[i][b] = 0.f;
#if defined(HQ_AVX2) || defined(HQ_AVX512)
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    __m256 acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = _mm256_setzero_ps();
    for (int64_t q = 0; q < full; q++) {
        __m256i lo[R], hi[R];
        float sc[R], mo[R];
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, rowb, q * (HQ_G / 2), HQ_G / 2, g);
        else pf_step(pf, R * q * (HQ_G / 2), R * (HQ_G / 2), g.pf_end);
        for (int i = 0; i < R; i++) {
            const uint8_t* p = w + (r + i) * rowb + q * (HQ_G / 2);
            __m256i v = _mm256_loadu_si256((const __m256i*)p);
            lo[i] = _mm256_and_si256(v, m0f);
            hi[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
            const uint16_t* m = meta + ((r + i) * ng + q) * 2;
            sc[i] = f16_to_f32(m[0]); mo[i] = f16_to_f32(m[1]);
        }
        for (int b = 0; b < NB; b++) {
            const int8_t* xq = g.xq + b * ng * HQ_G + q * HQ_G;
            const float xs = g.xs[b * ng + q], xsum = g.xsum[b * ng + q];
            for (int i = 0; i < R; i++) {
                __m256 d = _mm256_cvtepi32_ps(u4s8_dot(lo[i], hi[i], xq));
                acc[i][b] = _mm256_fmadd_ps(d, _mm256_set1_ps(sc[i] * xs), acc[i][b]);
                off[i][b] += mo[i] * xsum;
            }
        }
    }
#else
    float acc[R][NB];
    for (int i = 0; i < R; i++) for (int b = 0; b < NB; b++) acc[i][b] = 0.f;
    for (int64_t q = 0; q < full; q++) {
        if (g.pf_row) pf_rows<R>((const char*)g.w, r, rowb, q * (HQ_G / 2), HQ_G / 2, g);
        else pf_step(pf, R * q * (HQ_G / 2), R * (HQ_G / 2), g.pf_end);
        for (int i = 0; i < R; i++) {
            const uint8_t* p = w + (r + i) * rowb + q * (HQ_G / 2);
            const uint16_t* m = meta + ((r + i) * ng + q) * 2;
            float sc = f16_to_f32(m[0]), mo = f16_to_f32(m[1]);
            for (int b = 0; b < NB; b++) {
                const int8_t* xq = g.xq + b * ng * HQ_G + q * HQ_G;
                int32_t d = 0;
                for (int j = 0; j < HQ_G / 2; j++)
                    d += (int32_t)(p[j] & 15) * xq[j] + (int32_t)(p[j] >> 4) * xq[j + HQ_G / 2];
                acc[i][b] += (float)d * (sc * g.xs[b * ng + q]);
                off[i][b] += mo * g.xsum[b * ng + q];
            }
        }
    }
#endif
    // last, partial group (in % HQ_G inputs): fp32 activations, plain dequantized weights
    const int64_t rem = in - full * HQ_G, hg = HQ_G / 2;
    for (int i = 0; i < R; i++) {
        for (int b = 0; b < NB; b++) {
#if defined(HQ_AVX2) || defined(HQ_AVX512)
            float s = hsum256(acc[i][b]) + off[i][b];
#else
            float s = acc[i][b] + off[i][b];
#endif
            if (rem) {
                const uint8_t* p = w + (r + i) * rowb + full * hg;
                const uint16_t* m = meta + ((r + i) * ng + full) * 2;
                float sc = f16_to_f32(m[0]), mo = f16_to_f32(m[1]);
                const float* x = g.x + b * in + full * HQ_G;
                for (int64_t j = 0; j < rem; j++) {
                    int qv = j < hg ? (p[j] & 15) : (p[j - hg] >> 4);
                    s += ((float)qv * sc + mo) * x[j];
                }
            }
            y[b * ldy + r + i] = s;
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
        if (gr.pf_row) M = 1;
        const char* w = (const char*)g.w;
        if (M) {  // warm-up: the blocks the loop below will not prefetch
            int64_t n = M * blk < g.pf_dist ? M * blk : g.pf_dist;
            pf_lines(w + r0 * rb, n, g.pf_end);
        }
        const char* none = (const char*)g.pf_end;  // a stream at the limit prefetches nothing
        int64_t r = r0;
        for (; r + R <= r1; r += R) K<R, NB>::call(gr, r, y, ldy, M ? w + (r + M * R) * rb : none);
        gr.pf_row = 0;
        for (; r < r1; r++) K<1, NB>::call(gr, r, y, ldy, none);
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
            if (g.xq) { c.xq = g.xq + b0 * g.groups * HQ_G; c.xs = g.xs + b0 * g.groups; c.xsum = g.xsum + b0 * g.groups; }
            float* yc = y + b0 * ldy;
            switch (nb) {
                case 1:  // rows per block: the format's default, or a tuned count (hq_tune 4)
                    switch (g.rows1 ? g.rows1 : K<1, 1>::R1) {
                        case 1: run_nb<1, 1>(c, r0, r1, yc, ldy); break;
                        case 2: run_nb<1, 2>(c, r0, r1, yc, ldy); break;
                        case 8: run_nb<1, 8>(c, r0, r1, yc, ldy); break;
                        default: run_nb<1, 4>(c, r0, r1, yc, ldy); break;
                    }
                    break;
                case 2: run_nb<2, 2>(c, r0, r1, yc, ldy); break;
                case 3: run_nb<3, 2>(c, r0, r1, yc, ldy); break;
                case 4: run_nb<4, 2>(c, r0, r1, yc, ldy); break;
                case 5: run_nb<5, 1>(c, r0, r1, yc, ldy); break;
                case 6: run_nb<6, 1>(c, r0, r1, yc, ldy); break;
                case 7: run_nb<7, 1>(c, r0, r1, yc, ldy); break;
                default: run_nb<8, 1>(c, r0, r1, yc, ldy); break;
            }
        }
    }
};
// R1: rows per block at batch 1. 8 on AVX-512 for bf16/int8 halves the fp32 activation reads
// per weight byte (the down projection's 70 KB activation vector does not fit in L1); int4
// keeps 4 (its per-group scalar work spills with 8).
template <int R, int NB> struct Bf16K { static constexpr int R1 = W >= 16 ? 8 : 4; static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { bf16_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int8K { static constexpr int R1 = W >= 16 ? 8 : 4; static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int8_block<R, NB>(g, r, y, l, pf); } };
template <int R, int NB> struct Int4K { static constexpr int R1 = 4; static void call(const Gemv& g, int64_t r, float* y, int64_t l, const char* pf) { int4_block<R, NB>(g, r, y, l, pf); } };

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
