"""The MTP draft step on the CPU straight through the C++ kernels (executor/cpu_decode.py's pieces).

The generic MTP forward (model/mtp.MtpLayer over the executor's ops) wraps each kernel call in small
torch ops, like the generic model forward: on the small trained model (bench/mtp_small.py) a draft
cost about as much as a decode token. For T <= MAX_TOKENS pairs this runs the same math with the
residual in fp32 and one C++ call per step:

  fc(concat(norm_e(embed(x_{p+1})), norm_h(h_p)))  [T, 2H] -> [T, H]
  + attention (per position: q/k norms, RoPE, the MTP's KV cache write, softmax, gate), + FFN
  norm -> the next hidden [T, H]; head(last row) -> logits [V]

Drafts only propose tokens (the verify forward decides what is emitted), so this path's rounding
never changes output; tests/test_mtp.py checks it against the reference MTP layer.
"""

from __future__ import annotations

import torch

from ..config import FULL
from ..kernels.ops import CpuLinear
from ..model.rope import Rope
from .cpu_decode import MAX_TOKENS, CpuDecodePath, _build_layer, _kernel, _Linear, _Norm, _PerT, _RopeAt
from .runner import LayerSlots


class CpuMtpPath:
    def __init__(self, cfg, fc: CpuLinear, vectors: dict, layer: tuple, head: CpuLinear):
        eps, H = cfg.rms_norm_eps, cfg.hidden_size
        self.H = H
        self.norm_e = _Norm(vectors["pre_fc_norm_embedding.weight"], eps)
        self.norm_h = _Norm(vectors["pre_fc_norm_hidden.weight"], eps)
        self.fc = _Linear(fc)
        _, self.attn, self.ffn = layer
        self.norm = _Norm(vectors["norm.weight"], eps)
        self.full_head = head
        self.head = _Linear(head, fresh_output=True)
        self.cat = _PerT(lambda T: torch.empty(T, 2 * H))

    @staticmethod
    def build(cfg, fc_op, attn_slot, ffn_slot, vectors: dict, head_op) -> "CpuMtpPath | None":
        """The fast path for an MTP layer whose fc, attention, FFN and head all run on the CPU with
        the C++ kernels; else None (the generic MTP forward runs it)."""
        fc, head = _kernel(fc_op, CpuLinear), _kernel(head_op, CpuLinear)
        if fc is None or head is None or not CpuDecodePath.enabled():
            return None
        layer = _build_layer(cfg, LayerSlots(FULL, attn_slot, ffn_slot), _RopeAt(Rope(cfg, "cpu")))
        return None if layer is None else CpuMtpPath(cfg, fc, vectors, layer, head)

    def __call__(self, emb: torch.Tensor, hidden: torch.Tensor, start: int, cache, logits: bool):
        """emb [T, H] (embeddings of x_{p+1}), hidden [T, H] (h_p) for p = start.. -> (the MTP's
        hidden [T, H] fp32, fp32 logits [V] of the last pair or None)."""
        T, H = emb.shape
        cat = self.cat(T)
        cat[:, :H] = self.norm_e(emb.float().contiguous())
        cat[:, H:] = self.norm_h(hidden.float().contiguous())
        x = self.fc(cat)  # the residual, in fc's buffer (nothing else reads it)
        self.attn(x, cache, start)
        self.ffn(x)
        out = self.norm(x)
        return out.clone(), (self.head(out[-1:])[0] if logits else None)

    def set_head(self, head: CpuLinear) -> None:
        """The head drafts run (the whole one, or its first rows for a trimmed draft vocabulary)."""
        self.head = _Linear(head, fresh_output=True)

    @staticmethod
    def takes(T: int) -> bool:
        return T <= MAX_TOKENS and CpuDecodePath.enabled()
