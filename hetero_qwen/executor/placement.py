"""Load a checkpoint to a plan: every weight goes straight from the mapped file to its home.

  home gpu  : converted to the compute dtype and copied to the GPU (no full host copy first)
  home cpu  : resident in host RAM in the plan's CPU format (bf16 as is; int8/int4 quantized by
              the CPU kernels), pinned when it will be streamed to the GPU
  home disk : left memory-mapped (the page cache is the tier), computed on the CPU
Each op gets one variant per device it may run on: resident weights where they live, and a
staging-slot variant on the GPU for blocks the plan streams there (prefill above the crossover).
Small fp32 vectors (norms, A_log, dt_bias, conv) are copied to every device that runs the op.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..checkpoint import Checkpoint, tensor_name
from ..config import WeightGroup
from ..errors import PlanError
from ..model.layers import FFN, Attention, GatedDeltaNet, TorchLinear
from ..model.qwen3_5 import Layer, OpSlot, Qwen35Model
from .devices import Devices, MemoryTier
from .host_arena import HostArena
from .streaming import META, Prefetcher, SlotLinear, StagedGroup



class Placement(Protocol):
    """What the executor needs of a plan's group (hetero_qwen.planner.plan.GroupPlacement)."""
    name: str
    home: str             # gpu | cpu | disk
    decode_device: str    # gpu | cpu
    prefill_device: str   # gpu | cpu
    stream_prefill: bool
    crossover_tokens: int | None
    dtype: str            # storage format at home: bf16 | fp32 | int8 | int4 | ...


def home_device(home: str) -> str:
    return "gpu" if home == "gpu" else "cpu"


def _kernels():
    """The CPU kernel package, or None when it is not importable (plain torch then)."""
    try:
        from .. import kernels
        return kernels
    except ImportError:
        return None


class CpuKernelOp:
    """Adapts a CPU kernel ([B, in] -> [B, out] fp32) to the model's [..., in] activations and dtype."""

    def __init__(self, kernel, dtype: torch.dtype):
        self.kernel, self.dtype = kernel, dtype
        self.nbytes = getattr(kernel, "nbytes", 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernel(x.reshape(-1, x.shape[-1]))
        return y.reshape(*lead, y.shape[-1]).to(self.dtype)


def build_placed_model(ckpt: Checkpoint, placements: dict[str, Placement], devices: Devices, dtype: torch.dtype,
                       on_loaded: Callable[[str], None] = lambda name: None,
                       always_stream: bool = False) -> Qwen35Model:
    """`always_stream` (profile prefill.stream: on): streamed blocks go to the GPU for every
    multi-token forward, not only from their crossover on."""
    cfg = ckpt.cfg
    disk = MemoryTier("disk", None)
    kernels = _kernels()
    staged: dict[str, StagedGroup] = {}

    def read(g: WeightGroup, local: str, shape) -> torch.Tensor:
        return ckpt.get(tensor_name(g.name, g.kind, local, cfg), shape)

    def cpu_format(p: Placement) -> str:
        """Storage format of an off-GPU group: the plan's CPU format (or the quantized checkpoint's,
        on disk), floats in the compute dtype."""
        if p.home == "cpu" and p.dtype in ("int8", "int4"):
            return p.dtype
        if p.home == "disk" and cfg.hetero_format:
            return cfg.hetero_format
        return "float"

    packed_names = set()
    if cfg.hetero_format:
        from ..quantized_checkpoint import META_SUFFIX, load_packed, quantized_names
        packed_names = {n for n, _ in quantized_names(cfg)}
    arena = HostArena()  # CPU-resident weights: huge pages for decode's streaming reads

    def release(*names: str) -> None:
        """Unmap checkpoint pages already copied to their home (keeps load RSS near resident)."""
        for n in names:
            ckpt.release(n)

    def home_matrices(g: WeightGroup, p: Placement) -> dict:
        out = {}
        pinned = p.stream_prefill and torch.cuda.is_available()  # page-locked for real copies to the GPU
        to_arena = {}  # local -> tensor | PackedWeight bound for RAM, placed at the end (fused rows)
        for local, shape in g.matrices:
            full = tensor_name(g.name, g.kind, local, cfg)
            if full in packed_names:  # a pre-quantized checkpoint
                pw = load_packed(ckpt, full, shape)
                if p.home in ("cpu", "disk") and cpu_format(p) == pw.fmt:
                    if p.home == "disk":
                        disk.alloc(pw.nbytes, g.name)  # kernels read the mapped file directly
                        out[local] = pw
                    elif pinned:
                        out[local] = _pin_packed(pw, True)
                    else:
                        to_arena[local] = pw
                    continue
                t = pw.dequantize()  # GPU (or another CPU format): back to float once, at load
                release(full, full + META_SUFFIX)
            else:
                t = read(g, local, shape)
            if p.home == "gpu":
                out[local] = devices.gpu.place(t.to(dtype), g.name)
            elif p.home == "disk" and t.dtype == dtype:
                disk.alloc(t.numel() * t.element_size(), g.name)
                out[local] = t  # a view of the mapped file: the page cache is this tier
                continue
            elif cpu_format(p) != "float":  # packed once here; the CPU kernels and staging share it
                pw = pack_rows(t, cpu_format(p), kernels.PackedWeight)
                if pinned:
                    out[local] = _pin_packed(pw, True)
                else:
                    to_arena[local] = pw
            elif pinned:  # resident RAM as planned, page-locked: it will be streamed
                c = t.to(dtype)
                out[local] = devices.cpu.place(c, g.name, pin=True, private=c.data_ptr() == t.data_ptr())
            else:  # resident RAM as planned: charged now, copied to the arena below
                devices.cpu.memory.alloc(t.numel() * dtype.itemsize, g.name)
                to_arena[local] = t.to(dtype)
                continue  # released once copied
            release(full)
        out.update(settle(g, to_arena))
        return out

    def settle(g: WeightGroup, parts: dict) -> dict:
        """Copy RAM-bound matrices into the arena. A mixer's input projections (FUSED_ROWS) go to
        consecutive rows of one block, so the CPU decode path reads them in one kernel call."""
        placed = {}
        fuse = [k for k in FUSED_ROWS.get(g.kind, ()) if k in parts]
        if len(fuse) > 1 and len({_fmt_of(parts[k]) for k in fuse}) == 1:
            views = fuse_rows([parts[k] for k in fuse], arena.empty, kernels.PackedWeight if kernels else None)
            placed.update(zip(fuse, views))
        for k, v in parts.items():
            if k not in placed:
                placed[k] = arena.copy_packed(v) if hasattr(v, "fmt") else arena.copy(v)
        for k in parts:
            full = tensor_name(g.name, g.kind, k, cfg)
            release(*((full, full + META_SUFFIX) if full in packed_names else (full,)))
        return placed

    def vectors_on(g: WeightGroup, dev_name: str) -> dict[str, torch.Tensor]:
        dev = devices[dev_name]
        return {local: dev.place(read(g, local, shape).to(torch.float32).clone(), f"{g.name} vectors")
                for local, shape in g.vectors}

    def projections(g: WeightGroup, p: Placement, mats: dict, dev_name: str) -> tuple[dict, bool]:
        """(local name -> callable) for one device variant, and whether it reads staging slots."""
        home = home_device(p.home)
        if dev_name == "gpu" and home == "gpu":
            return {k: TorchLinear(w) for k, w in mats.items()}, False
        if dev_name == "gpu":  # an off-GPU block computed on the GPU: stream it through the slots
            tensors, specs = {}, {}
            for k, w in mats.items():
                if isinstance(w, torch.Tensor):
                    tensors[k] = w
                else:  # a packed int8/int4 weight: stream data + scales, dequantize on the GPU
                    tensors[k], tensors[k + META] = w.data, w.meta
                    specs[k] = (w.fmt, w.out_features, w.in_features)
            staged[g.name] = StagedGroup(g.name, tensors)
            return {k: _LateSlotLinear(g.name, k, specs.get(k)) for k in mats}, True
        if home == "gpu":
            raise PlanError(f"{g.name}: lives on the GPU but is planned to run on the CPU")
        fmt = cpu_format(p)
        if fmt != "float" or (kernels is not None and dtype == torch.bfloat16):
            if kernels is None:
                raise PlanError(f"{g.name}: {fmt} CPU weights need the CPU kernels (hetero_qwen.kernels)")
            projs = {k: CpuKernelOp(kernels.CpuLinear(w, fmt if fmt != "float" else "bf16"), dtype)
                     for k, w in mats.items()}
            if fmt != "float" and p.home == "cpu":  # disk-tier packed weights stay in the mapped file
                devices.cpu.memory.alloc(sum(pr.nbytes for pr in projs.values()), g.name)
            return projs, False
        return {k: TorchLinear(w) for k, w in mats.items()}, False

    def slot_for(g: WeightGroup, p: Placement, mats: dict, norm_key: str | None) -> OpSlot:
        ops, norms, streamed = {}, {}, set()
        for d in sorted({p.decode_device, p.prefill_device}):
            vec = vectors_on(g, d)
            norms[d] = vec[norm_key]
            fmt = cpu_format(p)
            if (g.kind == "ffn" and d == "cpu" and home_device(p.home) == "cpu" and kernels is not None
                    and (fmt != "float" or dtype == torch.bfloat16)):
                fused = kernels.CpuFFN(mats["gate_proj.weight"], mats["up_proj.weight"], mats["down_proj.weight"],
                                       fmt if fmt != "float" else "bf16")
                if fmt != "float" and p.home == "cpu":  # floats were charged when placed; disk stays mapped
                    devices.cpu.memory.alloc(fused.nbytes, g.name)
                ops[d] = FFN(None, None, None, fused=CpuKernelOp(fused, dtype))
                continue
            projs, is_streamed = projections(g, p, mats, d)
            if is_streamed:
                streamed.add(d)
            ops[d] = projs["weight"] if g.kind == "head" else _make_op(cfg, g, projs, vec, d == "cpu", kernels)
        crossover = None
        if p.prefill_device != p.decode_device:
            crossover = 2 if always_stream else p.crossover_tokens
        return OpSlot(g.name, ops, norms, p.decode_device, p.prefill_device, crossover, frozenset(streamed))

    groups = {g.name: g for g in cfg.weight_groups()}
    embed_g = groups[f"{cfg.text_prefix}embed_tokens"]
    ep = placements[embed_g.name]
    embed = home_matrices(embed_g, ep)["weight"]
    if not isinstance(embed, torch.Tensor):  # an int8/int4 embedding: rows dequantized per lookup
        embed = PackedEmbedding(embed)
    layers = []
    on_loaded(embed_g.name)
    for i in range(cfg.num_hidden_layers):
        mixer_g = groups[f"{cfg.layer_prefix(i)}{cfg.mixer_name(i)}"]
        ffn_g = groups[f"{cfg.layer_prefix(i)}mlp"]
        mixer = slot_for(mixer_g, placements[mixer_g.name], home_matrices(mixer_g, placements[mixer_g.name]),
                         "input_layernorm.weight")
        ffn = slot_for(ffn_g, placements[ffn_g.name], home_matrices(ffn_g, placements[ffn_g.name]),
                       "post_attention_layernorm.weight")
        layers.append(Layer(cfg.layer_types[i], mixer, ffn))
        on_loaded(mixer_g.name)
        on_loaded(ffn_g.name)

    head_g = groups["lm_head"]
    hp = placements[head_g.name]
    if cfg.tie_word_embeddings and "lm_head.weight" not in ckpt:
        if home_device(hp.home) == home_device(ep.home):  # shared: the embedding's own weight
            head_mats = {"weight": embed.packed if isinstance(embed, PackedEmbedding) else embed}
        else:  # planned on the other device: its own copy there (the plan counts the head's bytes)
            head_mats = home_matrices(embed_g, hp)
    else:
        head_mats = home_matrices(head_g, hp)
    head = slot_for(head_g, hp, head_mats, f"{cfg.text_prefix}norm.weight")
    on_loaded(head_g.name)

    model = Qwen35Model(cfg, embed, devices[home_device(ep.home)], layers, head, dtype, devices)
    model.disk = disk
    model.host_arena = arena
    if kernels is not None:
        from .cpu_decode import CpuDecodePath
        model.cpu_decode = CpuDecodePath.build(model)
    if staged:
        model.prefetcher = Prefetcher(devices, staged)
        _bind_slots(model, model.prefetcher)
    return model


# A mixer's input projections, stored as consecutive rows of one block when they live in RAM.
FUSED_ROWS = {"deltanet": ("in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight"),
              "attention": ("q_proj.weight", "k_proj.weight", "v_proj.weight")}


def _fmt_of(w) -> str:
    return w.fmt if hasattr(w, "fmt") else str(w.dtype)


def fuse_rows(ws: list, alloc, packed_cls=None) -> list:
    """Copy same-format [rows_i, in] matrices (tensors or PackedWeights) into one block from
    `alloc(shape, dtype)`; returns per-matrix row views of it, in order."""
    def stack(ts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        block = alloc((sum(t.shape[0] for t in ts), *ts[0].shape[1:]), ts[0].dtype)
        torch.cat(ts, out=block)
        rows, views = 0, []
        for t in ts:
            views.append(block[rows:rows + t.shape[0]])
            rows += t.shape[0]
        return block, views

    if not hasattr(ws[0], "fmt"):
        return stack(ws)[1]
    _, data = stack([w.data for w in ws])
    meta = stack([w.meta for w in ws])[1] if ws[0].meta is not None else [None] * len(ws)
    return [packed_cls(w.fmt, d, m, w.out_features, w.in_features) for w, d, m in zip(ws, data, meta)]


def pack_rows(t: torch.Tensor, fmt: str, packed_cls, rows: int = 4096):
    """Quantize `t` [out, in] a block of rows at a time: both formats scale per row (or per row
    group), so this equals quantizing it whole, with temporaries bounded to one block in fp32
    (the 27B embedding would otherwise need ~20 GB of them)."""
    parts = [packed_cls.from_float(t[r:r + rows].float(), fmt) for r in range(0, t.shape[0], rows)]
    if len(parts) == 1:
        return parts[0]
    return packed_cls(fmt, torch.cat([q.data for q in parts]), torch.cat([q.meta for q in parts]),
                      t.shape[0], t.shape[1])


class PackedEmbedding:
    """`embed[ids]` for a packed int8/int4 table: only the looked-up rows are dequantized."""

    device = torch.device("cpu")

    def __init__(self, packed):
        self.packed = packed

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        from ..kernels.quant import PackedWeight
        pw, flat = self.packed, ids.reshape(-1)
        rows = PackedWeight(pw.fmt, pw.data[flat], pw.meta[flat], flat.numel(), pw.in_features).dequantize()
        return rows.view(*ids.shape, pw.in_features)


def _pin_packed(pw, pin: bool):
    """Page-lock a packed weight that will be copied to a real GPU."""
    if pin and torch.cuda.is_available():
        pw.data, pw.meta = pw.data.pin_memory(), pw.meta.pin_memory()
    return pw


class _LateSlotLinear:
    """Placeholder bound to the prefetcher once it exists (it needs every streamed group's size)."""

    def __init__(self, group: str, local: str, packed: tuple | None = None):
        self.group, self.local, self.packed = group, local, packed
        self.bound: SlotLinear | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.bound(x)


def _bind_slots(model: Qwen35Model, prefetcher: Prefetcher) -> None:
    def bind(op) -> None:
        for attr in vars(op).values():
            if isinstance(attr, _LateSlotLinear):
                attr.bound = SlotLinear(prefetcher, attr.group, attr.local, attr.packed)
    for layer in model.layers:
        for slot in (layer.mixer, layer.ffn):
            for d in slot.streamed:
                bind(slot.ops[d])
    for d in model.head.streamed:
        op = model.head.ops[d]
        op.bound = SlotLinear(prefetcher, model.head.name, "weight", op.packed)


def _make_op(cfg, g: WeightGroup, P: dict, vec: dict, on_cpu: bool, kernels):
    if g.kind == "ffn":
        return FFN(P["gate_proj.weight"], P["up_proj.weight"], P["down_proj.weight"])
    if g.kind == "attention":
        return Attention(cfg, P["q_proj.weight"], P["k_proj.weight"], P["v_proj.weight"], P["o_proj.weight"],
                         vec["q_norm.weight"], vec["k_norm.weight"])
    # the fused CPU decode step (conv + norms + delta rule in one pass) when the kernels exist
    decode_step = getattr(kernels, "deltanet_decode_step", None) if on_cpu else None
    return GatedDeltaNet(cfg, P["in_proj_qkv.weight"], P["in_proj_z.weight"], P["in_proj_b.weight"],
                         P["in_proj_a.weight"], P["out_proj.weight"], vec["conv1d.weight"], vec["A_log"],
                         vec["dt_bias"], vec["norm.weight"], decode_step=decode_step)


def cpu_only_placements(cfg, fmt: str = "bf16") -> dict:
    """Everything resident on the CPU: the plan of a machine without a GPU (and of tests)."""
    from types import SimpleNamespace
    return {g.name: SimpleNamespace(name=g.name, home="cpu", decode_device="cpu", prefill_device="cpu",
                                    stream_prefill=False, crossover_tokens=None, dtype=fmt)
            for g in cfg.weight_groups()}
