"""How much a weight format changes a model, stated: top-1 agreement and KL divergence against
bf16 weights, and the relative RMS error of the weights themselves.

`format_quality(model, ids, fmt, group)` takes a torch module returning `.logits` for ids [1, T]
(transformers' Qwen3_5ForCausalLM, the test oracle) and swaps every quantizable linear weight for
its value in GPU format `fmt` (kernels.gpu_linear), keeping what the published int4 checkpoints
keep in 16 bits: embedding, head, norms, DeltaNet in_proj_a / in_proj_b, conv, A_log. The
baseline is the same model with every weight rounded to bf16; both run in fp32.
`weight_error_table` is the same measure INT4_GROUP was chosen by, for the GPU int4 groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .kernels.gpu_linear import GPU_INT4_GROUP, INT4_GPU_GROUPS, gpu_bits_per_weight, gpu_linear_from_float

KEEP_16BIT = ("in_proj_a", "in_proj_b", "embed_tokens", "lm_head", "visual", "mtp")


def quantizable(name: str, t: torch.Tensor) -> bool:
    module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
    return t.dim() == 2 and "proj" in module and not any(k in name for k in KEEP_16BIT)


def _dequantized(w: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    """w as GPU format `fmt` stores it (int4 keeps its plain nibbles here: a cheap dequantize)."""
    kw = {"prefill_plain": True} if fmt == "int4" else {}
    return gpu_linear_from_float(w, fmt, group, **kw).reference_weight()


@dataclass
class QualityRow:
    fmt: str
    group: int | None
    bits_per_weight: float
    top1_agreement: float   # share of positions whose argmax equals the bf16 model's
    kl_mean: float          # mean over positions of KL(p_bf16 || p_fmt), nats
    weight_rel_rms: float   # ||w_fmt - w_bf16|| / ||w_bf16|| over the quantized weights

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].double()


@torch.no_grad()
def format_quality(model, ids: list[int], fmt: str, group: int | None = None) -> QualityRow:
    """Quality of GPU format `fmt` (int4 | int8 | fp8 | bf16) on `model` over the positions of `ids`.
    The model's weights are restored before returning."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        base = _logits(model, ids)
        num = den = 0.0
        for n, p in model.named_parameters():
            if fmt != "bf16" and quantizable(n, p):
                w = _dequantized(p.float(), fmt, group or GPU_INT4_GROUP)
                num += float((w - p.float()).pow(2).sum())
                den += float(p.float().pow(2).sum())
                p.copy_(w)
        quant = _logits(model, ids)
    finally:
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    lp, lq = torch.log_softmax(base, -1), torch.log_softmax(quant, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    top1 = (base.argmax(-1) == quant.argmax(-1)).double().mean()
    bits = 16.0 if fmt == "bf16" else gpu_bits_per_weight(fmt, group or GPU_INT4_GROUP)
    return QualityRow(fmt, group if fmt == "int4" else None, bits, float(top1), float(kl),
                      (num / den) ** 0.5 if den else 0.0)


def quality_table(model, ids: list[int], groups=(32, 64, 128)) -> list[QualityRow]:
    rows = [format_quality(model, ids, "int4", g) for g in groups]
    return rows + [format_quality(model, ids, f) for f in ("int8", "fp8")]


def weight_error_table(rows: int = 256, cols: int = 5120, seed: int = 0) -> list[dict]:
    """Relative RMS weight error and bits/weight of GPU int4 per group, on Gaussian and
    Student-t3 (heavy-tailed) rows: the measure INT4_GROUP was chosen by."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ws = {"gauss": torch.randn(rows, cols, generator=g),
          "student-t3": torch.distributions.StudentT(3.0).sample((rows, cols))}
    out = []
    for G in INT4_GPU_GROUPS:
        for name, w in ws.items():
            deq = _dequantized(w, "int4", G)
            err = float((deq - w).norm() / w.norm())
            out.append(dict(group=G, weights=name, bits_per_weight=gpu_bits_per_weight("int4", G),
                            rel_rms_error=round(err, 4)))
    return out
