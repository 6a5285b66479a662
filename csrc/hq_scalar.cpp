// scalar copy of the kernels (compiled with its own ISA flags by setup.py).

#include "hq_impl.h"

extern const HqIsa hq_isa_scalar = {"scalar", rows_any, deltanet_head, int4_prep, 0, 0};
