"""The plan: plain data saying where every weight group and cache lives and runs, what memory
each tier holds, and the predicted speed. Made without touching a tensor; saved as JSON.

The executor reads, per group: `home` (gpu | cpu | disk), `decode_device` and `prefill_device`
(gpu | cpu), `stream_prefill` (copy this off-GPU block to the GPU for prefill chunks of at least
`crossover_tokens` tokens through the pinned staging slots), and `cache_bytes` (the KV slice or
DeltaNet state that lives on the group's decode device).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

TIERS = ("gpu", "cpu", "disk")


def device_of(home: str) -> str:
    """The device a home tier belongs to: where an item's weights are read from and where it
    computes when not streamed (its cache lives there too). The one home -> device map."""
    return "gpu" if home == "gpu" else "cpu"


@dataclass(frozen=True)
class GroupPlacement:
    name: str  # checkpoint prefix, e.g. model.language_model.layers.3.mlp
    kind: str  # ffn | deltanet | attention | embed | head
    layer: int | None
    bytes: int  # resident bytes in the home tier's format
    dtype: str  # format of those bytes (gpu_dtype, cpu_dtype or the checkpoint's)
    home: str  # gpu | cpu | disk
    decode_device: str  # gpu | cpu
    prefill_device: str  # gpu | cpu, for a full prefill chunk
    stream_prefill: bool  # off-GPU block copied to the GPU for prefill
    crossover_tokens: int | None  # chunk size from which prefill streams to the GPU (None: never)
    cache: str | None = None  # "kv" | "state" | None
    cache_bytes: int = 0  # resident on decode_device


@dataclass(frozen=True)
class TierUsage:
    budget_bytes: int
    used_bytes: int
    lines: dict  # what the used bytes are: weights, kv, state, working_set, staging, reserve

    @property
    def fits(self) -> bool:
        return self.used_bytes <= self.budget_bytes

    @property
    def short_bytes(self) -> int:
        return max(0, self.used_bytes - self.budget_bytes)


@dataclass(frozen=True)
class Prediction:
    position: float  # mean cached length the decode numbers are for
    decode_s_per_token: float
    decode_tokens_per_s: float
    decode_tokens_per_s_at_context: float  # with the full reserved context cached
    prefill_tokens: int
    prefill_s: float
    prefill_tokens_per_s: float
    objective_s: float  # prefill(prompt) + output_tokens * decode: what `auto` minimises
    decode_time_s: dict  # seconds per token by where it is spent: gpu, cpu, disk, hops
    decode_bytes: dict  # bytes moved per decode token: gpu, cpu, disk (reads), pcie (hops)
    prefill_bytes: dict  # bytes moved for the whole prompt: gpu, cpu, disk, pcie (streams, hops)
    hops_decode: int  # device changes per token (cyclic: head -> next token's embed)
    hops_prefill: int  # device changes per prefill chunk
    bottleneck: str


@dataclass(frozen=True)
class MtpPlacement:
    """The MTP layer in the plan (planner/mtp.py): where it lives, what it holds, the k it drafts."""
    home: str | None  # gpu | cpu: weights, KV cache and compute (where the head decodes, else RAM); None: fits nowhere
    dtype: str  # format of its weights there
    bytes: int  # its weights: fc [H, 2H] + one gated attention layer + MLP + norms
    cache_bytes: int  # its own KV cache: one attention layer for `context` tokens
    state_slot_bytes: int  # (k + 1) x every DeltaNet layer's state, kept by verify on the state's devices
    draft_tokens: int  # k, drafts per step; 0 = off (nothing of the above is on the tiers' lines)
    acceptance: float  # expected per-draft acceptance the choice assumed
    decode_tokens_per_s: float  # predicted without MTP (the plan's decode)
    decode_tokens_per_s_mtp: float  # predicted with MTP at draft_tokens (= without when 0)
    tokens_per_s_by_k: tuple  # predicted decode tokens/s at k = 0, 1, 2, ... with the layer on `home`
    reason: str  # one line: why this k
    draft_vocab: int = 0  # drafts pick among token ids < draft_vocab (head rows read per draft); 0: all

    @property
    def device(self) -> str | None:
        return self.home


@dataclass(frozen=True)
class Plan:
    policy: str
    model: str
    profile: str
    context: int
    gpu_dtype: str
    cpu_dtype: str
    disk_dtype: str
    tiers: dict  # tier name -> TierUsage
    groups: tuple  # GroupPlacement, in execution order
    predicted: Prediction
    stream_slot_bytes: int  # one staging slot (pinned host and device side); 0 = no streaming
    notes: tuple = field(default_factory=tuple)
    mtp: MtpPlacement | None = None  # the MTP layer when the config has one (mtp_num_hidden_layers > 0)

    # ---- lookups the executor uses -------------------------------------------------------
    @property
    def fits(self) -> bool:
        return all(t.fits for t in self.tiers.values())

    def group(self, name: str) -> GroupPlacement:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def cache_device(self, layer: int) -> str:
        """Device holding layer `layer`'s KV cache or DeltaNet state."""
        for g in self.groups:
            if g.layer == layer and g.cache:
                return g.decode_device
        raise KeyError(layer)

    def _cache_home(self, kind: str) -> str | None:
        devices = {g.decode_device for g in self.groups if g.cache == kind}
        return None if not devices else devices.pop() if len(devices) == 1 else "split"

    @property
    def kv_home(self) -> str | None:
        """gpu | cpu when every attention layer keeps its KV on one device; "split" otherwise."""
        return self._cache_home("kv")

    @property
    def state_home(self) -> str | None:
        """Same for the DeltaNet recurrent + conv state."""
        return self._cache_home("state")

    @property
    def peak_bytes(self) -> dict:
        """Predicted peak per tier (every buffer is allocated up front, so peak = used)."""
        return {name: t.used_bytes for name, t in self.tiers.items()}

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits"] = self.fits
        d["kv_home"], d["state_home"] = self.kv_home, self.state_home
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        for derived in ("fits", "kv_home", "state_home"):
            d.pop(derived, None)
        d["tiers"] = {k: TierUsage(**v) for k, v in d["tiers"].items()}
        d["groups"] = tuple(GroupPlacement(**g) for g in d["groups"])
        d["predicted"] = Prediction(**d["predicted"])
        d["notes"] = tuple(d.get("notes", ()))
        m = d.get("mtp")  # absent from plans saved before the planner placed the MTP layer
        d["mtp"] = None if m is None else MtpPlacement(**{**m, "tokens_per_s_by_k": tuple(m["tokens_per_s_by_k"])})
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))
