"""`hetero_qwen.load`: checkpoint directory + memory-budget profile -> plan -> placed model -> Engine.

Profile resolution: an explicit profile (path, dict or Profile); else $HETERO_QWEN_PROFILE; else
this machine is measured once per process (`hetero-qwen probe`) and planned with `auto`, said in
one line. The planner decides where every group lives; the executor loads it straight there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .config import ModelConfig, is_preset, load_config
from .engine import Engine
from .errors import CheckpointError, ConfigError
from .executor.devices import make_devices, working_set_hook
from . import profile_source
from .executor.build import build_runner
from .profile import Profile
from .profile_checks import checked_profile
from .vision_config import load_multimodal_config

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


def checkpoint_dtype(cfg: ModelConfig) -> torch.dtype:
    """Compute dtype matching the checkpoint: fp32 stays fp32, everything else runs in bf16."""
    return torch.float32 if cfg.torch_dtype == "float32" else torch.bfloat16


def generation_eos_ids(path: Path) -> tuple[int, ...]:
    """eos ids from generation_config.json when present (it lists <|im_end|> too)."""
    gc = path / "generation_config.json"
    if not gc.is_file():
        return ()
    try:
        eos = json.loads(gc.read_text()).get("eos_token_id")
    except json.JSONDecodeError:
        raise CheckpointError(f"{gc}: not valid JSON") from None
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def resolve_profile(profile, quiet: bool = False) -> Profile:
    return profile_source.resolve_profile(profile, quiet)  # the one resolver every command uses


def _set_threads(n: int) -> None:
    """One knob for torch, Numba and the C++ pool, so they never oversubscribe the cores."""
    try:
        from .kernels import set_threads
        set_threads(n)
    except ImportError:
        torch.set_num_threads(n)


class TierProgress:
    """One progress bar per tier (gpu, cpu, disk) in bytes of weights placed, on a terminal."""

    def __init__(self, plan, quiet: bool):
        self.bytes = {g.name: (g.home, g.bytes) for g in plan.groups}
        self.bars = {}
        if quiet or not sys.stderr.isatty():
            return
        from tqdm import tqdm
        totals = {}
        for home, n in self.bytes.values():
            totals[home] = totals.get(home, 0) + n
        for i, (tier, total) in enumerate(t for t in totals.items() if t[1]):
            self.bars[tier] = tqdm(total=total, desc=f"loading {tier:4s}", unit="B", unit_scale=True,
                                   position=i, leave=False, file=sys.stderr)

    def __call__(self, name: str) -> None:
        home, n = self.bytes.get(name, (None, 0))
        if home in self.bars:
            self.bars[home].update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def load(path_or_preset: str | Path, profile=None, dtype: str | torch.dtype | None = None,
         context: int | None = None, quiet: bool = False, policy: str | None = None,
         simulate_gpu: bool | None = None, text_only: bool = False,
         image_max_pixels: int | None = None, mtp: bool | None = None,
         draft_tokens: int | None = None) -> Engine:
    """Load a Qwen3.5/3.6 checkpoint directory into an Engine placed by the profile's plan.
    `text_only` (or the profile's `vision: off`) neither plans nor loads the vision tower;
    `mtp`: load the MTP layer for speculative decoding (None: when the checkpoint has it and the plan
    predicts it pays; True: at the plan's best k >= 1; False: not); `draft_tokens`: plan for that k
    (0: off). Both replace the profile's `mtp.draft_tokens` (planner/mtp.py with_request)."""
    from placement_policies import make_plan

    if is_preset(path_or_preset):
        raise ConfigError(f"{path_or_preset} is a shape preset without weights; it works with "
                          f"`plan` and benches. Pass a checkpoint directory to run a model")
    path = Path(path_or_preset)
    cfg = load_config(path)
    ckpt = Checkpoint(path, cfg)
    ckpt.check_complete()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use bf16 or fp32")
        dtype = DTYPES[dtype]
    dtype = dtype or checkpoint_dtype(cfg)
    prof = resolve_profile(profile, quiet)
    prof = checked_profile(cfg, prof, context, say=lambda m: _say(m, quiet))  # context cap, overrides, threads
    if text_only:
        prof = prof.replace(vision=False)
    if image_max_pixels:  # the tower's working set is planned for the largest image allowed
        prof = prof.replace(image_max_pixels=image_max_pixels)
    if ckpt.mtp_missing() is None:  # the plan places (and charges) the MTP layer only when it will load
        from .planner.mtp import with_request
        prof = with_request(prof, mtp, draft_tokens)
    else:
        prof = prof.replace(mtp_draft_tokens=0)
    mm = load_multimodal_config(path)
    plan = make_plan(cfg, prof, policy=policy, model=str(path),
                     compute_dtype="fp32" if dtype == torch.float32 else "bf16",
                     vision=mm.vision if mm is not None else None)
    devices = make_devices(max(prof.vram - prof.gpu_reserve, 0) if prof.has_gpu else None,
                           max(prof.ram - prof.cpu_reserve, 0), simulate_gpu)
    if devices.gpu is not None and devices.gpu.simulated:
        _say("no CUDA device: the GPU tier is simulated in host memory (budgets and traffic are checked)", quiet)
    _set_threads(prof.threads)
    bars = TierProgress(plan, quiet)
    try:
        runner = build_runner(ckpt, {g.name: g for g in plan.groups}, devices, dtype, on_loaded=bars)
    finally:
        bars.close()
    insist = True if mtp or draft_tokens else False if mtp is False or draft_tokens == 0 else None
    drafter = _load_mtp(ckpt, runner, plan, insist, quiet, prof.context)
    if devices.gpu is not None:
        runner.op_hook = working_set_hook(devices)
    engine = Engine(cfg, runner, path, prof.context, eos_ids=generation_eos_ids(path) or cfg.eos_token_ids,
                    plan=plan, prefill_chunk=prof.prefill_chunk, mtp=drafter)
    if drafter is not None and plan.mtp is not None:  # generate/chat default to the plan's k
        engine.draft_tokens = plan.mtp.draft_tokens
        drafter.set_draft_vocab(plan.mtp.draft_vocab)
    elif drafter is None and plan.mtp is not None and ckpt.mtp_missing() is None:
        engine.mtp_note = (f"the MTP layer is not loaded ({plan.mtp.reason}); load with --mtp or "
                           f"--draft-tokens K to use it")
    attach_vision(engine, ckpt, mm, plan, prof, dtype)
    if engine.vision is None and mm is not None and prof.vision:  # quantizers often drop the tower
        _say(f"images are off: {engine.vision_note}", quiet)
    return engine


def attach_vision(engine: Engine, ckpt: Checkpoint, mm, plan, prof: Profile, dtype: torch.dtype) -> None:
    """The vision tower's weights onto the device the plan gives its group, charged to that tier;
    without a tower (or with `vision: off`) images are refused with one line saying why."""
    from .planner.plan import device_of
    from .planner.vision import TOWER
    runner = engine.runner
    if mm is None:
        engine.vision_note = "this checkpoint has no vision tower; it takes text only"
        return
    engine.mm = runner.mm = mm
    runner.image_token_id, runner.mrope_section = mm.image_token_id, mm.mrope_section
    if not prof.vision:
        engine.vision_note = "images are off (--text-only or `vision: off` in the profile)"
        return
    from .model.vision import load_vision_weights
    dev = engine.devices[device_of(plan.group(TOWER).home)]
    try:
        weights = load_vision_weights(ckpt, mm.vision, dtype, dev.torch)
    except (KeyError, CheckpointError) as e:
        engine.vision_note = f"this checkpoint's vision tower is incomplete ({e}); it takes text only"
        return
    dev.memory.alloc(weights.nbytes(), TOWER)
    engine.vision, engine.vision_device = weights, dev


def _load_mtp(ckpt: Checkpoint, runner, plan, mtp: bool | None, quiet: bool, context: int):
    """The MTP drafter where the plan places it, or None: off by the user, by the plan (no gain, or
    no room), or because the checkpoint lacks it (said in one line when the config declares an MTP
    layer, as quantizers often leave it out). Not loaded when off: a loaded layer runs on every
    token fed (its KV cache needs every position), so off must mean absent."""
    if mtp is False:
        return None
    why = ckpt.mtp_missing()
    if why is not None:
        if mtp:
            raise CheckpointError(f"{ckpt.path}: cannot use MTP: {why}")
        if ckpt.cfg.mtp_num_hidden_layers:
            _say(f"MTP speculative decoding is off: {why}", quiet)
        return None
    from .executor.build import _kernels
    from .executor.mtp import build_mtp, mtp_placement
    head = next(g for g in plan.groups if g.kind == "head")
    place = mtp_placement(ckpt.cfg, plan, head, context, runner.dtype)
    if place is None:
        why = (plan.mtp.reason.removeprefix("off: ") if plan.mtp is not None else
               "its weights and KV cache do not fit the memory the plan leaves free")
        if mtp:
            raise ConfigError(f"cannot use MTP: {why}")
        _say(f"MTP speculative decoding is off: {why}", quiet)
        return None
    return build_mtp(ckpt, runner, place, _kernels())
