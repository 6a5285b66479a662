// Shared declarations between the ISA-specific kernel TUs and the C ABI in hq_api.cpp.
#pragma once
#include <cstdint>

#define HQ_G 64  // must equal hetero_qwen.formats.INT4_GROUP

enum { HQ_BF16 = 0, HQ_INT8 = 1, HQ_INT4 = 2 };

// int4 activations of one token cover the in / G full groups (the partial group uses fp32 x).
// xq is stored by pairs of groups (2p, 2p+1), 128 bytes each: x[0:32) of both groups, then
// x[32:64) of both, so one 64-byte weight load (two groups: low nibbles = x[0:32), high =
// x[32:64)) lines up with two 64-byte activation loads. A missing odd group is zeros.
// xs / xsum are padded with zeros to whole 16-group vectors.
inline int64_t hq_xq_ld(int64_t in) { return (in / HQ_G + 1) / 2 * 2 * HQ_G; }
inline int64_t hq_xs_ld(int64_t in) { return (in / HQ_G + 15) / 16 * 16; }
// Offset of the x[0:32) half of group q in a token's xq (its x[32:64) half is 64 bytes later).
inline int64_t hq_xq_off(int64_t q) { return (q >> 1) * 2 * HQ_G + (q & 1) * (HQ_G / 2); }

// One GEMV/small-GEMM problem with its activations already prepared for the format.
struct Gemv {
    int fmt;
    const void* w;      // bf16 [out,in] | int8 [out,in] | int4 packed [out, groups*G/2]
    const void* meta;   // -              | fp32 [out]    | fp16 [out, groups, 2]
    int64_t in;
    int B;
    const float* x;     // [B, in] fp32 (all formats; int8 body, tails)
    const float* xe;    // bf16: [B, in/2] even inputs
    const float* xo;    // bf16: [B, in/2] odd inputs
    const uint16_t* xb; // bf16 on a bf16-dot ISA (avx512bf16): [B, in] x rounded to bf16 (RNE)
    const int8_t* xq;   // int4 (int8 on an int8dot ISA): [B, hq_xq_ld(in)] int8 activations of the full groups, pair-interleaved
    const float* xs;    // int4: [B, hq_xs_ld(in)] activation scales of the full groups (0-padded)
    const float* xsum;  // int4: [B, hq_xs_ld(in)] xs * sum(xq): group sums of dequantized x
    int64_t groups;
    const char* pf_end;  // software prefetch never reaches this address (end of the row range)
    int64_t pf_dist;     // bytes to prefetch ahead of the row block being read (0: off)
    int64_t pf_row;      // set by the row driver: per-row prefetch distance (0: linear mode)
    int64_t pf_long;     // row blocks above this many bytes use per-row prefetch streams
    int64_t pf_l2_row;   // rows above this many bytes are prefetched into L2 only (prefetcht2)
    int pf_l2;           // set by the row driver: row_bytes > pf_l2_row
    int64_t rows1;       // rows per block at batch 1 (1, 2, 4 or 8); 0: the format's default
    int64_t rowsn;       // rows per block at batch 2..8 (1, 2, 3 or 4); 0: the format's default
};

#ifndef HQ_PF_LOCALITY
#define HQ_PF_LOCALITY 3  // __builtin_prefetch locality: 3 = prefetcht0
#endif

struct HqIsa {
    const char* name;
    void (*rows)(const Gemv& g, int64_t r0, int64_t r1, float* y, int64_t ldy);
    void (*deltanet_head)(float* S, const float* k, const float* q, const float* v, float eg,
                          float beta, float kq, int64_t Dk, int64_t Dv, float* o);
    // int4 activations of one token: x [in] -> xq [hq_xq_ld(in)], xs / xsum [in / G] (hq_impl.h)
    void (*int4_prep)(const float* x, int64_t in, int8_t* xq, float* xs, float* xsum);
    // attention decode (hq_attn.h), G query heads sharing one KV head over its L cached rows:
    // p [G, L] = scale * q [G, D] . K[s]; o [G, D] += sum_s w [G, L] V[s]
    void (*attn_scores)(const float* q, int G, const void* K, int bf16, int64_t L, int64_t D, float scale, float* p);
    void (*attn_values)(const float* w, int G, const void* V, int bf16, int64_t L, int64_t D, float* o);
    int bf16dot;  // bf16 weights take g.xb (bf16 activations) instead of g.xe / g.xo
    int int8dot;  // int8 weights take int8 activations per 64-group (g.xq/xs/xsum), as int4 does
};

extern const HqIsa hq_isa_scalar;
#ifdef HQ_HAVE_AVX2
extern const HqIsa hq_isa_avx2;
#endif
#ifdef HQ_HAVE_AVX512
extern const HqIsa hq_isa_avx512;
#endif
#ifdef HQ_HAVE_AVX512BF16
extern const HqIsa hq_isa_avx512bf16;
#endif
