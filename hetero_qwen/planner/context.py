"""Planning inputs in one place: the items, the profile, and per-item cost tables that every policy
and the search share, so they all score a placement with the very same numbers."""

from __future__ import annotations

from functools import cached_property

from ..config import ModelConfig
from ..profile import Profile
from . import cost
from .items import Item, build_items, checkpoint_format

# DP states: (decode device, prefill device) of the op that ran last
STATES = (("cpu", "cpu"), ("cpu", "gpu"), ("gpu", "gpu"))
STATE_INDEX = {s: i for i, s in enumerate(STATES)}


class PlanContext:
    def __init__(self, cfg: ModelConfig, profile: Profile, model: str = "model"):
        self.cfg, self.p, self.model = cfg, profile, model
        self.items: list[Item] = build_items(cfg, profile.gpu_dtype, profile.cpu_dtype, profile.dtype_override,
                                             profile.compute_dtype)
        self.disk_dtype = checkpoint_format(cfg)
        self.chunks = cost.prompt_chunks(profile.prompt_tokens, profile.prefill_chunk)
        self.first_chunk = self.chunks[0][0]
        self.position = cost.mean_decode_position(profile)
        self._crossover: dict = {}
        self._working_set: dict = {}

    # ---- memory constants ------------------------------------------------------------------
    @cached_property
    def activation_bytes(self) -> int:
        """Working set of one forward: [chunk, 4*hidden + 3*intermediate] fp32 activations plus
        one fp32 logits row (prefill keeps only the last position)."""
        c = self.cfg
        return self.p.prefill_chunk * 4 * (4 * c.hidden_size + 3 * c.intermediate_size) + c.vocab_size * 4

    def gpu_working_set(self, cap: int) -> dict[str, int]:
        """The GPU's working set by line (planner.working_set); `cap` > 0: blocks stream."""
        from .working_set import gpu_working_set
        streams = cap > 0
        if streams not in self._working_set:
            self._working_set[streams] = gpu_working_set(self.cfg, self.p, streams)
        return self._working_set[streams]

    def forced_home(self, item: Item) -> str | None:
        return self.p.home_override(item.name)

    def dtype_of(self, i: int, home: str) -> str:
        """The format item `i`'s weights are stored in when they live in `home`."""
        return self.items[i].fmt(home)

    # ---- per-item costs --------------------------------------------------------------------
    def crossover(self, i: int, home: str) -> int | None:
        it = self.items[i]
        key = (it.kind, it.params, it.nbytes(home), it.fmt(home), it.kv_per_token, it.state_bytes, home)
        if key not in self._crossover:
            self._crossover[key] = cost.crossover_tokens(it, home, self.p)
        return self._crossover[key]

    def streams(self, i: int, home: str, cap: int) -> bool:
        """Prefill copies this off-GPU block to the GPU: it fits a staging slot and a full chunk
        is past its crossover (prefill.stream `on`: always)."""
        it = self.items[i]
        if home == "gpu" or not it.streamable or cap <= 0 or it.nbytes(home) > cap:
            return False
        if self.p.prefill_stream == "on":
            return True
        xo = self.crossover(i, home)
        return xo is not None and self.first_chunk >= xo

    def prefill_device(self, i: int, home: str, cap: int) -> str:
        return "gpu" if home == "gpu" or self.streams(i, home, cap) else "cpu"

    def decode_s(self, i: int, home: str, position: float | None = None) -> float:
        pos = self.position if position is None else position
        return cost.decode_time(self.items[i], home, pos, self.p)

    def prefill_s(self, i: int, home: str, device: str) -> float:
        it = self.items[i]
        return sum(cost.prefill_time(it, home, device, n, pre, self.p) for n, pre in self.chunks)

    def item_objective(self, i: int, home: str, cap: int) -> float:
        """This item's share of the objective: output_tokens * decode + whole-prompt prefill."""
        return (self.p.output_tokens * self.decode_s(i, home)
                + self.prefill_s(i, home, self.prefill_device(i, home, cap)))

    # ---- hops --------------------------------------------------------------------------------
    @cached_property
    def decode_hop_objective(self) -> float:
        return self.p.output_tokens * cost.decode_hop_time(self.p)

    @cached_property
    def prefill_hop_objective(self) -> float:
        return sum(cost.prefill_hop_time(n, self.cfg.hidden_size, self.p) for n, _ in self.chunks)

    def hop_objective(self, a: tuple[str, str], b: tuple[str, str]) -> float:
        return ((a[0] != b[0]) * self.decode_hop_objective
                + (a[1] != b[1]) * self.prefill_hop_objective)

    # ---- the VRAM left for weights and caches -----------------------------------------------
    def gpu_fixed_bytes(self, cap: int) -> int:
        """Reserve, working set and device-side stream slots: paid once anything uses the GPU."""
        return self.p.gpu_reserve + sum(self.gpu_working_set(cap).values()) + 2 * cap

    def gpu_room(self, cap: int) -> int:
        return self.p.vram - self.gpu_fixed_bytes(cap) if self.p.has_gpu else 0

    def gpu_item_bytes(self, i: int) -> int:
        it = self.items[i]
        return it.bytes_gpu + it.cache_bytes(self.p.context)
