// avx512 copy of the kernels (compiled with its own ISA flags by setup.py).
#define HQ_AVX512 1
#include "hq_impl.h"
#include "hq_attn.h"

extern const HqIsa hq_isa_avx512 = {"avx512", rows_any, deltanet_head, int4_prep, attn_scores, attn_values, 0, 1};
