// Opt-in (hq_force_isa(3)) avx512 copy of the kernels with AVX512-BF16 dot products for bf16 weights (vdpbf16ps on
// activations rounded to bf16); compiled with its own ISA flags by setup.py.
#define HQ_AVX512 1
#define HQ_AVX512BF16 1
#include "hq_impl.h"
#include "hq_attn.h"

extern const HqIsa hq_isa_avx512bf16 = {"avx512bf16", rows_any, deltanet_head, int4_prep, attn_scores, attn_values, 1, 1};
