// avx2 copy of the kernels (compiled with its own ISA flags by setup.py).
#define HQ_AVX2 1
#include "hq_impl.h"
#include "hq_attn.h"

extern const HqIsa hq_isa_avx2 = {"avx2", rows_any, deltanet_head, int4_prep, attn_scores, attn_values, 0, 0};
