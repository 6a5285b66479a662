"""The reference a GPU weight format is checked against: a copy of the transformers model whose
GPU-resident matrices hold exactly what their planned format stores (kernels.gpu_linear's
`reference_weight`), so the comparison isolates our execution from the quantization itself.
Shared by tests/test_gpu_formats_executor.py and bench/gpu_check.py."""

import copy

import torch

from hetero_qwen.checkpoint import tensor_name
from hetero_qwen.kernels.gpu_linear import gpu_linear_from_float
from hetero_qwen.planner.group_formats import GPU_QUANT, gpu_matrix_format


def dequantized_reference(hf, eng):
    ref = copy.deepcopy(hf).float()
    params = dict(ref.named_parameters())
    groups = {g.name: g for g in eng.cfg.weight_groups()}
    n = 0
    for p in eng.plan.groups:
        if p.home != "gpu" or p.name not in groups:
            continue
        g = groups[p.name]
        for local, _ in g.matrices:
            fmt = gpu_matrix_format(g.kind, local, p.dtype, "fp32")
            if fmt not in GPU_QUANT:
                continue
            name = tensor_name(g.name, g.kind, local, eng.cfg)
            if name not in params:  # a tied head: the embedding's weight, quantized for the head only
                assert g.kind == "head"
                ref.lm_head.weight = torch.nn.Parameter(params["model.embed_tokens.weight"].detach().clone())
                params[name] = ref.lm_head.weight
            w = params[name]
            with torch.no_grad():
                w.copy_(gpu_linear_from_float(w.detach().cpu(), fmt).reference_weight().to(w.device))
            n += 1
    assert n > 0, "no GPU-resident quantized matrix"
    return ref
