"""The Qwen3.5/3.6 vision tower (transformers' `Qwen3_5VisionModel`) as plain functions of its weights.

pixels [N, C*tps*p*p] (N patches of all images, in the processor's merge-block order)
  -> patch embed (a stride = kernel Conv3d, i.e. one matmul per patch) + learned position table
     bilinearly resampled to each image's grid
  -> `depth` pre-norm blocks: LayerNorm, attention within each image (2-D rotary on (row, col)),
     LayerNorm, GELU-tanh MLP
  -> merger: LayerNorm, concat each 2x2 patch block, fc1, GELU, fc2 -> [N / merge^2, out_hidden].
Weights are passed in (`VisionWeights`), on whatever device and dtype the caller chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..vision_config import GELU_KINDS, LAYER_NORM_EPS, VisionConfig

PREFIXES = ("model.visual.", "visual.")  # Qwen3_5ForConditionalGeneration layout, older layout


@dataclass
class VisionWeights:
    """Every tower tensor by its local name (`blocks.3.attn.qkv.weight`, ...)."""

    cfg: VisionConfig
    t: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.t[name]

    @property
    def dtype(self) -> torch.dtype:
        return self.t["patch_embed.proj.weight"].dtype

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.t.values())


def load_vision_weights(ckpt, cfg: VisionConfig, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> VisionWeights:
    """Read the tower from a `hetero_qwen.checkpoint.Checkpoint`, shapes checked against `cfg`."""
    prefix = next((p for p in PREFIXES if f"{p}patch_embed.proj.weight" in ckpt), PREFIXES[0])
    t = {local: ckpt.get(prefix + local, shape).to(device=device, dtype=dtype, copy=True)
         for local, shape in cfg.tensor_shapes().items()}
    return VisionWeights(cfg, t)


# ---- positions -------------------------------------------------------------------------------
def merge_block_order(x: torch.Tensor, merge: int) -> torch.Tensor:
    """[h, w, ...] raster -> [h*w, ...] in the processor's order: 2x2 blocks row-major, and
    row-major inside each block (so each merged token's patches are consecutive)."""
    h, w = x.shape[:2]
    x = x.reshape(h // merge, merge, w // merge, merge, *x.shape[2:]).transpose(1, 2)
    return x.reshape(h * w, *x.shape[4:])


def interpolated_pos_embed(table: torch.Tensor, side: int, h: int, w: int, merge: int) -> torch.Tensor:
    """The square [side*side, H] table resampled to an h x w grid (bilinear, corners aligned),
    weights in fp32 -> [h*w, H] fp32 in merge-block order."""
    def taps(n: int):
        src = torch.arange(n, dtype=torch.float32) * (side - 1) / max(n - 1, 1)
        lo = src.floor()
        frac = src - lo
        lo = lo.long()
        return lo, (lo + 1).clamp(max=side - 1), 1 - frac, frac

    r0, r1, wr0, wr1 = (t.to(table.device) for t in taps(h))
    c0, c1, wc0, wc1 = (t.to(table.device) for t in taps(w))
    grid = table.view(side, side, -1)
    out = torch.zeros(h, w, table.shape[-1], dtype=torch.float32, device=table.device)
    for r, wr in ((r0, wr0), (r1, wr1)):
        for c, wc in ((c0, wc0), (c1, wc1)):
            weight = wr[:, None] * wc[None, :]                              # [h, w]
            out += grid[r][:, c] * weight[..., None]
    return merge_block_order(out, merge)


def patch_rows_cols(h: int, w: int, merge: int) -> torch.Tensor:
    """(row, col) of every patch of an h x w grid, in merge-block order: [h*w, 2]."""
    rc = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)
    return merge_block_order(rc, merge)


def rotary_cos_sin(cfg: VisionConfig, rows_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D rotary over the whole head: a quarter of the dims turn with the row, a quarter with the
    column, then the same again (rotate-half layout). rows_cols [N, 2] -> cos, sin [N, head_dim] fp32."""
    dim = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = rows_cols.float()[..., None] * inv_freq.to(rows_cols.device)    # [N, 2, head_dim/4]
    emb = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    emb = torch.cat([emb, emb], dim=-1)
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D] rotated in fp32 (rotate-half), back in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


# ---- the tower -------------------------------------------------------------------------------
def attention(w: VisionWeights, b: int, x: torch.Tensor, cos, sin, seqlens: list[int]) -> torch.Tensor:
    """Bidirectional attention inside each segment (one image frame); x [N, H] -> [N, H]."""
    cfg, p = w.cfg, f"blocks.{b}.attn."
    N = x.shape[0]
    q, k, v = F.linear(x, w[p + "qkv.weight"], w[p + "qkv.bias"]).view(N, 3, cfg.num_heads, -1).unbind(1)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    outs = []
    for qs, ks, vs in zip(q.split(seqlens), k.split(seqlens), v.split(seqlens)):
        o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                           vs.transpose(0, 1)[None], scale=cfg.head_dim ** -0.5)
        outs.append(o[0].transpose(0, 1))                                   # [n, heads, D]
    return F.linear(torch.cat(outs).reshape(N, -1), w[p + "proj.weight"], w[p + "proj.bias"])


def mlp(w: VisionWeights, b: int, x: torch.Tensor) -> torch.Tensor:
    p = f"blocks.{b}.mlp."
    h = F.gelu(F.linear(x, w[p + "linear_fc1.weight"], w[p + "linear_fc1.bias"]),
               approximate=GELU_KINDS[w.cfg.hidden_act])
    return F.linear(h, w[p + "linear_fc2.weight"], w[p + "linear_fc2.bias"])


def block(w: VisionWeights, b: int, x: torch.Tensor, cos, sin, seqlens: list[int]) -> torch.Tensor:
    p, H = f"blocks.{b}.", w.cfg.hidden_size
    x = x + attention(w, b, F.layer_norm(x, (H,), w[p + "norm1.weight"], w[p + "norm1.bias"], LAYER_NORM_EPS),
                      cos, sin, seqlens)
    return x + mlp(w, b, F.layer_norm(x, (H,), w[p + "norm2.weight"], w[p + "norm2.bias"], LAYER_NORM_EPS))


def merger(w: VisionWeights, x: torch.Tensor) -> torch.Tensor:
    """[N, H] -> [N / merge^2, out_hidden]: norm each patch, concat each block's patches, MLP."""
    cfg = w.cfg
    x = F.layer_norm(x, (cfg.hidden_size,), w["merger.norm.weight"], w["merger.norm.bias"], LAYER_NORM_EPS)
    x = F.gelu(F.linear(x.reshape(-1, cfg.merged_dim), w["merger.linear_fc1.weight"], w["merger.linear_fc1.bias"]))
    return F.linear(x, w["merger.linear_fc2.weight"], w["merger.linear_fc2.bias"])


def vision_tower(w: VisionWeights, pixels: torch.Tensor, grid_thw) -> torch.Tensor:
    """pixels [N, patch_dim] and grid_thw [(t, h, w)] per image (patches) -> image embeddings
    [sum(t*h*w) / merge^2, out_hidden], images in order, in the weights' dtype."""
    cfg, merge = w.cfg, w.cfg.spatial_merge_size
    dev, dtype = w["patch_embed.proj.weight"].device, w.dtype
    grids = [tuple(int(v) for v in g) for g in grid_thw]
    pw = w["patch_embed.proj.weight"]
    x = F.linear(pixels.to(dev, dtype).view(-1, cfg.patch_dim), pw.view(pw.shape[0], -1), w["patch_embed.proj.bias"])
    pos = torch.cat([interpolated_pos_embed(w["pos_embed.weight"], cfg.grid_side, h, wd, merge).repeat(t, 1)
                     for t, h, wd in grids])
    x = x + pos.to(dtype)
    rc = torch.cat([patch_rows_cols(h, wd, merge).repeat(t, 1) for t, h, wd in grids]).to(dev)
    cos, sin = rotary_cos_sin(cfg, rc)
    seqlens = [h * wd for t, h, wd in grids for _ in range(t)]  # each frame attends within itself
    for b in range(cfg.depth):
        x = block(w, b, x, cos, sin, seqlens)
    return merger(w, x)


def image_token_counts(grid_thw, merge: int) -> list[int]:
    """Placeholder tokens per image: t * h * w / merge^2."""
    return [int(t) * int(h) * int(wd) // merge ** 2 for t, h, wd in grid_thw]
