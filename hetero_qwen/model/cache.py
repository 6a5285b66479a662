"""Per-layer caches behind one small protocol: `nbytes()`, `reset()`, `trim(n)` (drop the last n
tokens, as mlx-lm's caches do), `snapshot()`, `restore(snap)`. KV caches can be trimmed back to any length; the DeltaNet recurrent state
cannot (it folds every token in), so it is rewound by restoring a snapshot taken earlier, or, right
after a speculative verify forward run with `keep_slots` on, by trimming to one of the per-position
slots that forward kept (vLLM's num_spec + 1 state slots; llama.cpp's extra recurrent planes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """K/V for one full-attention layer, preallocated to `capacity` tokens: [B, kv_heads, cap, D]."""

    can_trim = True

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.shape = (batch, kv_heads, capacity, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.k = self.v = None  # allocated on first use, so planning a cache costs nothing
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, kv_heads, T, D] -> all keys/values so far [B, kv_heads, length+T, D]."""
        if self.k is None:
            self.k = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            self.v = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def claim(self, n: int = 1) -> int:
        """Make room for `n` more tokens that the caller writes into k / v itself (the CPU fast
        path, in C++): allocates on first use; returns the index of the first of them."""
        if self.k is None:
            self.k = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            self.v = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        at = self.length
        if at + n > self.capacity:
            raise ValueError(f"KV cache overflow: {at + n} tokens > capacity {self.capacity}")
        self.length = at + n
        return at

    def nbytes(self) -> int:
        return 2 * torch.Size(self.shape).numel() * self.dtype.itemsize

    def reset(self) -> None:
        self.length = 0

    def trim(self, n: int) -> int:
        """Drop the last `n` tokens (mlx-lm's convention); returns how many were dropped."""
        n = min(self.length, n)
        self.length -= n
        return n

    def snapshot(self) -> int:
        return self.length

    def restore(self, snap: int) -> None:
        """Back to a length taken by snapshot() (only ever shorter: the K/V before it are intact)."""
        self.length = min(self.length, snap)


@dataclass
class DeltaNetSnapshot:
    conv: torch.Tensor
    state: torch.Tensor


class DeltaNetCache:
    """Conv state [B, conv_dim, K-1] and recurrent state [B, Hv, Dk, Dv], both fp32 (the conv inputs
    are activation-dtype values, so fp32 holds them exactly; the fused CPU step wants fp32)."""

    can_trim = False

    def __init__(self, batch: int, conv_dim: int, kernel: int, v_heads: int, dk: int, dv: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.conv = torch.zeros(batch, conv_dim, kernel - 1, dtype=torch.float32, device=device)
        self.state = torch.zeros(batch, v_heads, dk, dv, dtype=torch.float32, device=device)
        self.keep_slots = False  # set around a verify forward: keep the state after every position
        self.slot_conv = self.slot_state = None  # [T, ...] of the last forward run with keep_slots
        self.slots = 0  # positions held in the slots (0: nothing to trim back to)
        self.on_grow = None  # (nbytes) -> None, told before the slots grow (the executor charges a budget)

    def _slot_bytes(self) -> int:
        return 0 if self.slot_state is None else 4 * (self.slot_state.numel() + self.slot_conv.numel())

    def _ensure_slots(self, T: int) -> None:
        """Room for T positions' slots, allocated once per draft length (and charged first)."""
        if self.slot_state is not None and self.slot_state.shape[0] >= T:
            return
        if self.on_grow is not None:
            self.on_grow(4 * T * (self.state.numel() + self.conv.numel()) - self._slot_bytes())
        self.slot_state = torch.empty((T, *self.state.shape), dtype=torch.float32, device=self.state.device)
        self.slot_conv = torch.empty((T, *self.conv.shape), dtype=torch.float32, device=self.conv.device)

    def record(self, seq: torch.Tensor, states: torch.Tensor) -> None:
        """Keep the conv window and recurrent state after each of the T positions of a verify
        forward: `seq` [B, C, K-1+T] its conv inputs (previous window first), `states` [T, B, Hv, Dk, Dv]."""
        T, K1 = states.shape[0], self.conv.shape[-1]
        self._ensure_slots(T)
        for t in range(T):
            self.slot_conv[t].copy_(seq[:, :, t + 1:t + 1 + K1])
        self.slot_state[:T].copy_(states)
        self.slots = T

    def record_step(self, t: int, T: int) -> None:
        """Keep the current conv window and state as slot t of a T-position verify forward run one
        position at a time (the fused decode step); the same slots `record` keeps."""
        if t == 0:
            self.slots = 0
            self._ensure_slots(T)
        self.slot_conv[t].copy_(self.conv)
        self.slot_state[t].copy_(self.state)
        if t == T - 1:
            self.slots = T

    def nbytes(self) -> int:
        """The states and any verify slots allocated so far."""
        return self.conv.numel() * self.conv.element_size() + self.state.numel() * 4 + self._slot_bytes()

    def reset(self) -> None:
        self.conv.zero_()
        self.state.zero_()
        self.slots = 0

    def trim(self, n: int) -> int:
        """Drop the last `n` tokens of the last verify forward (kept with keep_slots on): the state
        becomes that forward's slot of the last token kept, an index choice, nothing recomputed."""
        keep = self.slots - n  # tokens of that forward still in the state
        if n and not 0 < keep < self.slots:
            raise ValueError("a DeltaNet recurrent state cannot be trimmed (only back to a slot of the "
                             "last verify forward); restore a snapshot instead")
        if n:
            self.conv.copy_(self.slot_conv[keep - 1])
            self.state.copy_(self.slot_state[keep - 1])
        self.slots = 0  # the slots are spent: the next forward moves the state on
        return n

    def snapshot(self) -> DeltaNetSnapshot:
        """A copy in host memory: snapshots are not charged to the device budget (a GPU-resident
        state's copies would take VRAM the plan never counted)."""
        return DeltaNetSnapshot(self.conv.to("cpu", copy=True), self.state.to("cpu", copy=True))

    def restore(self, snap: DeltaNetSnapshot) -> None:
        self.conv.copy_(snap.conv)
        self.state.copy_(snap.state)
        self.slots = 0
