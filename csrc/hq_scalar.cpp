// scalar copy of the kernels (compiled with its own ISA flags by setup.py).

#include "hq_impl.h"
#include "hq_attn.h"

extern const HqIsa hq_isa_scalar = {"scalar", rows_any, deltanet_head, int4_prep, attn_scores, attn_values, 0, 0};
