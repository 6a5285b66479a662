"""Memory-budget profiles: a YAML file that describes one machine and how we may use it.

    gpu:       {vram: 24GiB, reserve: 768MiB, flops: 150TFLOPS,   # vram absent or 0 = no GPU
                efficiency: {int4: 0.6, bf16: 0.8}}     # share of bandwidth.gpu per format (gpu_check)
    cpu:       {ram: 64GiB, threads: 16, reserve: 1GiB, pinned: 4GiB, flops: 1TFLOPS, efficiency: 0.8,
                op_overhead: 80us}
    disk:      {spill: true}           # weights that do not fit in RAM are read from the mmap'd checkpoint
    context:   65536                   # tokens of KV cache to reserve
    policy:    auto                    # auto | layers | ffn-cpu
    weights:   {gpu_dtype: int4, cpu_dtype: int8}   # gpu_dtype auto (default): the planner picks
               # among gpu_formats (default: bf16, int8, int4, or the checkpoint's own quantized format)
    bandwidth: {gpu: 1000GB/s, cpu: 70GB/s, pcie: 25GB/s, disk: 3GB/s}
    hop_latency: 15us                  # one hidden-state copy between GPU and CPU in decode
    prefill:   {chunk: 2048, stream: auto}   # tokens per forward; stream CPU blocks to the GPU: auto|on|off
    workload:  {prompt_tokens: 2048, output_tokens: 512}   # the turn `auto` optimises for
    server:    {prompt_cache: 4GiB}    # `serve`: host RAM for parked conversations' KV + DeltaNet copies
    vision:    on                      # off: never load or plan the vision tower (as --text-only)
    image_max_pixels: 16777216         # largest image the tower's working set is planned for (default: the processor's)
    mtp:       {acceptance: 0.8, draft_tokens: auto, draft_vocab: all}   # MTP drafts per step: auto (the planner's k) | 0..4;
                                                   # draft_vocab N: drafts pick among token ids < N (a smaller draft head)
    overrides:                         # first regex match (re.search on the group name) wins
      - {match: 'layers\\.6[0-3]\\.mlp', home: gpu}
      - {match: 'lm_head', dtype: bf16}   # a group's format (GPU: bf16|int8|int4|fp8; RAM: bf16|int8|int4)

Every key is optional; `DEFAULTS` lists the values used when a key is absent. Errors are one line
naming the file, line, key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from . import measured_defaults
from .errors import ProfileError
from .units import parse_duration, parse_flops, parse_rate, parse_size

GPU_FORMATS = ("bf16", "int8", "int4", "fp8")  # weight formats the GPU runs (kernels/gpu_linear.py)
GPU_DTYPES = ("auto",) + GPU_FORMATS + ("fp32",)  # auto: the planner picks; fp32: exactness checks
CPU_DTYPES = ("bf16", "int8", "int4", "fp32")
HOMES = ("gpu", "cpu", "disk")
STREAM_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Override:
    match: str  # regex, re.search against group names
    home: str | None  # gpu | cpu | disk, or None: the policy decides
    line: int | None = None  # YAML line, for messages
    dtype: str | None = None  # the group's weight format wherever it lives (None: the tier's)

    def matches(self, name: str) -> bool:
        return re.search(self.match, name) is not None


@dataclass(frozen=True)
class Profile:
    """A machine budget. Sizes in bytes, bandwidths in bytes/s, FLOP rates in FLOP/s, times in s."""

    vram: int = 0  # budget on the card; 0 = no GPU
    gpu_reserve: int = 768 * 2**20  # CUDA context + allocator slack, counted inside vram
    gpu_flops: float = 100e12  # dense bf16 GEMM the card sustains
    ram: int = 16 * 2**30  # budget in host RAM
    cpu_reserve: int = 2**30  # interpreter, torch, tokenizer, counted inside ram
    threads: int = 8
    pinned: int = 4 * 2**30  # most page-locked staging memory we may take
    cpu_flops: float = 1e12  # bf16/fp32 GEMM with all threads
    # share of bandwidth.cpu the CPU kernels reach: one for every format, ((fmt, share), ...) per
    # format, or None: measured_defaults.CPU_KERNEL_EFFICIENCY
    cpu_efficiency: float | tuple | None = None
    # fixed cost of one op (a mixer or FFN) in CPU decode: calls + cold starts
    cpu_op_overhead: float = measured_defaults.CPU_OP_OVERHEAD.value
    disk_spill: bool = True  # weights beyond RAM may stay in the mmap'd checkpoint
    context: int = 32768
    policy: str = "auto"
    gpu_dtype: str = "auto"  # auto: the planner picks among gpu_formats (planner/gpu_format_choice.py)
    cpu_dtype: str = "bf16"
    gpu_formats: tuple | None = None  # formats `auto` may pick; None: by the checkpoint's format
    # share of bandwidth.gpu the GPU formats reach: one share, ((fmt, share), ...), or None:
    # measured_defaults.GPU_KERNEL_EFFICIENCY
    gpu_efficiency: float | tuple | None = None
    compute_dtype: str = "bf16"  # not a YAML key: set by planner.formats.resolve_formats
    bw_gpu: float = 900e9
    bw_cpu: float = 50e9
    bw_pcie: float = 25e9
    bw_disk: float = 3e9
    hop_latency: float = 15e-6
    prefill_chunk: int = 2048
    prefill_stream: str = "auto"
    prompt_tokens: int = 2048
    output_tokens: int = 512
    server_prompt_cache: int = 4 * 2**30  # `serve` keeps recent conversations' caches within this
    vision: bool = True  # load and plan the vision tower of a checkpoint that has one
    image_max_pixels: int | None = None  # the tower's working set at this image size; None: the checkpoint's processor's
    mtp_acceptance: float | None = None  # expected per-draft MTP acceptance; None: measured_defaults.MTP_ACCEPTANCE
    mtp_draft_tokens: int | str = "auto"  # MTP drafts per step: "auto" (planner/mtp.py), "on" (best k >= 1), or k
    mtp_draft_vocab: int | str = "all"  # drafts pick among the first N token ids only ("all": the whole vocabulary)
    overrides: tuple[Override, ...] = ()
    source: str = "<defaults>"

    @property
    def has_gpu(self) -> bool:
        return self.vram > 0

    def home_override(self, name: str) -> str | None:
        """The home of the first override that matches `name` and names one."""
        for o in self.overrides:
            if o.home is not None and o.matches(name):
                return o.home
        return None

    def dtype_override(self, name: str) -> str | None:
        """The format of the first override that matches `name` and names one."""
        for o in self.overrides:
            if o.dtype is not None and o.matches(name):
                return o.dtype
        return None

    def replace(self, **changes) -> "Profile":
        from dataclasses import replace
        return replace(self, **changes)


DEFAULTS = Profile()


def _share(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1.5:
        raise ValueError("is not a share in (0, 1.5]")
    return float(v)


def _efficiency_of(formats):
    def parse(v) -> float | tuple:
        """Share of the tier's bandwidth the kernels reach; up to 1.5, since the CPU bandwidth is
        measured with a plain sum that our prefetching GEMVs out-read (bench/run_27b_cpu.py:
        110-122%). One share, or a mapping {format: share} (what `hetero-qwen probe` writes) ->
        ((format, share), ...)."""
        if isinstance(v, dict):
            if not v or not set(v) <= set(formats):
                raise ValueError(f"is not a mapping of {' | '.join(formats)} to shares")
            return tuple(sorted((k, _share(s)) for k, s in v.items()))
        return _share(v)
    return parse


_efficiency = _efficiency_of(CPU_DTYPES)


def _gpu_formats(v) -> tuple:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not set(v) <= set(GPU_FORMATS):
        raise ValueError(f"is not a list of {' | '.join(GPU_FORMATS)}")
    return tuple(dict.fromkeys(v))


def _acceptance(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError("is not a share in [0, 1]")
    return float(v)


def _draft_tokens(v) -> int | str:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4):
        return v
    raise ValueError("is not allowed")


def _draft_vocab(v) -> int | str:
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 256):
        return v
    raise ValueError("is not allowed")


def _pos_int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError("is not a positive integer")
    return v


def _bool(v) -> bool:
    if not isinstance(v, bool):
        raise ValueError("is not true/false")
    return v


def _choice(options):
    def parse(v):
        if v not in options:
            raise ValueError("is not allowed")
        return v
    return parse


# YAML path -> (Profile field, parser, what is allowed)
SCHEMA: dict[str, tuple[str, object, str]] = {
    "gpu.vram": ("vram", parse_size, "a size, e.g. 24GiB, 16GB, 0 for no GPU"),
    "gpu.reserve": ("gpu_reserve", parse_size, "a size, e.g. 768MiB"),
    "gpu.flops": ("gpu_flops", parse_flops, "a FLOP rate, e.g. 150TFLOPS"),
    "gpu.efficiency": ("gpu_efficiency", _efficiency_of(GPU_FORMATS + ("fp32",)),
                       "a share in (0, 1.5], e.g. 0.7, or one per format, e.g. {int4: 0.6, bf16: 0.8}"),
    "cpu.ram": ("ram", parse_size, "a size, e.g. 64GiB"),
    "cpu.reserve": ("cpu_reserve", parse_size, "a size, e.g. 1GiB"),
    "cpu.threads": ("threads", _pos_int, "a positive integer"),
    "cpu.pinned": ("pinned", parse_size, "a size, e.g. 4GiB"),
    "cpu.flops": ("cpu_flops", parse_flops, "a FLOP rate, e.g. 1.5TFLOPS"),
    "cpu.efficiency": ("cpu_efficiency", _efficiency, "a share in (0, 1.5], e.g. 0.9, or one per format, "
                       "e.g. {bf16: 0.95, int8: 1.0, int4: 1.1}"),
    "cpu.op_overhead": ("cpu_op_overhead", parse_duration, "a duration, e.g. 80us"),
    "disk.spill": ("disk_spill", _bool, "true or false"),
    "context": ("context", _pos_int, "a positive number of tokens, e.g. 65536"),
    "policy": ("policy", None, "a policy name"),  # checked against the registry by the planner
    "weights.gpu_dtype": ("gpu_dtype", _choice(GPU_DTYPES), " | ".join(GPU_DTYPES)),
    "weights.cpu_dtype": ("cpu_dtype", _choice(CPU_DTYPES), " | ".join(CPU_DTYPES)),
    "weights.gpu_formats": ("gpu_formats", _gpu_formats, "a list of " + " | ".join(GPU_FORMATS)
                            + " (the formats gpu_dtype: auto may pick)"),
    "bandwidth.gpu": ("bw_gpu", parse_rate, "a bandwidth, e.g. 1000GB/s"),
    "bandwidth.cpu": ("bw_cpu", parse_rate, "a bandwidth, e.g. 70GB/s"),
    "bandwidth.pcie": ("bw_pcie", parse_rate, "a bandwidth, e.g. 25GB/s"),
    "bandwidth.disk": ("bw_disk", parse_rate, "a bandwidth, e.g. 3GB/s"),
    "hop_latency": ("hop_latency", parse_duration, "a duration, e.g. 15us"),
    "prefill.chunk": ("prefill_chunk", _pos_int, "a positive number of tokens, e.g. 2048"),
    "prefill.stream": ("prefill_stream", _choice(STREAM_MODES), " | ".join(STREAM_MODES)),
    "workload.prompt_tokens": ("prompt_tokens", _pos_int, "a positive number of tokens"),
    "workload.output_tokens": ("output_tokens", _pos_int, "a positive number of tokens"),
    "server.prompt_cache": ("server_prompt_cache", parse_size, "a size, e.g. 4GiB (0 keeps only the live one)"),
    "vision": ("vision", _bool, "on or off"),
    "image_max_pixels": ("image_max_pixels", _pos_int, "a positive number of pixels, e.g. 1048576"),
    "mtp.acceptance": ("mtp_acceptance", _acceptance, "a share in [0, 1], e.g. 0.8"),
    "mtp.draft_tokens": ("mtp_draft_tokens", _draft_tokens, "auto or a number of drafts 0..4"),
    "mtp.draft_vocab": ("mtp_draft_vocab", _draft_vocab, "all or a number of token ids >= 256, e.g. 32768"),
}
OVERRIDE_KEYS = ("match", "home", "dtype")
OVERRIDE_DTYPES = GPU_FORMATS  # on the CPU, fp8 is not a format: such a group takes cpu_dtype there
SECTIONS = sorted({k.split(".")[0] for k in SCHEMA} | {"overrides"})


class _Where:
    """Formats `file:line: key: ...` prefixes."""

    def __init__(self, source: str):
        self.source = source

    def error(self, line: int | None, key: str, msg: str) -> ProfileError:
        at = f"{self.source}:{line}" if line is not None else self.source
        return ProfileError(f"{at}: {key}: {msg}" if key else f"{at}: {msg}")


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


# ---- YAML with line numbers -------------------------------------------------------------------
def _plain(node) -> object:
    """A YAML node as plain Python values (line numbers dropped)."""
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def _compose(text: str, where: _Where):
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise where.error(line, "", f"not valid YAML ({problem})") from None


def _mapping_items(node, where: _Where, key: str):
    if not isinstance(node, yaml.MappingNode):
        raise where.error(node.start_mark.line + 1, key, "must be a mapping of keys to values")
    seen = set()
    for k, v in node.value:
        name = str(_plain(k))
        if name in seen:
            raise where.error(k.start_mark.line + 1, f"{key}.{name}" if key else name, "duplicate key")
        seen.add(name)
        yield name, v, k.start_mark.line + 1


def _flatten(root, where: _Where) -> tuple[dict, object]:
    """{'gpu.vram': (value, line)}, plus the raw overrides node."""
    flat, overrides = {}, None
    if root is None:
        return flat, overrides
    for name, node, line in _mapping_items(root, where, ""):
        if name == "overrides":
            overrides = node
        elif name in SCHEMA:
            flat[name] = (_plain(node), line)
        elif name in SECTIONS:
            if isinstance(node, yaml.ScalarNode) and _plain(node) is None:
                continue  # `gpu:` with nothing under it
            for sub, subnode, subline in _mapping_items(node, where, name):
                full = f"{name}.{sub}"
                if full not in SCHEMA:
                    options = [k.split(".", 1)[1] for k in SCHEMA if k.startswith(name + ".")]
                    raise where.error(subline, full, f"unknown key; {_suggest(sub, options)}"
                                      f"allowed under {name}: {', '.join(options)}")
                flat[full] = (_plain(subnode), subline)
        else:
            raise where.error(line, name, f"unknown key; {_suggest(name, SECTIONS)}"
                              f"allowed: {', '.join(SECTIONS)}")
    return flat, overrides


def _flatten_dict(raw: dict, where: _Where) -> tuple[dict, object]:
    """Same as `_flatten` for an in-memory dict (no line numbers)."""
    text = yaml.safe_dump(raw)
    return _flatten(_compose(text, where), _NoLines(where.source))


class _NoLines(_Where):
    def error(self, line, key, msg):
        return super().error(None, key, msg)


def _parse_overrides(node, where: _Where) -> tuple[Override, ...]:
    if node is None or (isinstance(node, yaml.ScalarNode) and _plain(node) is None):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        raise where.error(node.start_mark.line + 1, "overrides",
                          "must be a list of {match: REGEX, home: gpu|cpu|disk, dtype: FORMAT}")
    out = []
    for i, item in enumerate(node.value):
        key = f"overrides[{i}]"
        line = item.start_mark.line + 1
        entry = {}
        for name, v, kline in _mapping_items(item, where, key):
            if name not in OVERRIDE_KEYS:
                raise where.error(kline, f"{key}.{name}", f"unknown key; {_suggest(name, OVERRIDE_KEYS)}"
                                  f"allowed: {', '.join(OVERRIDE_KEYS)}")
            entry[name] = (_plain(v), kline)
        if "match" not in entry:
            raise where.error(line, key, "missing 'match' (an override is {match: REGEX, home: gpu|cpu|disk, "
                                         "dtype: FORMAT})")
        if "home" not in entry and "dtype" not in entry:
            raise where.error(line, key, "names neither 'home' nor 'dtype'; give one or both")
        pattern, pline = entry["match"]
        try:
            re.compile(str(pattern))
        except re.error as e:
            raise where.error(pline, f"{key}.match", f"{pattern!r} is not a valid regex ({e})") from None
        home, hline = entry.get("home", (None, None))
        if home is not None and home not in HOMES:
            raise where.error(hline, f"{key}.home", f"{home!r} is not allowed; {_suggest(str(home), HOMES)}"
                              f"use {' | '.join(HOMES)}")
        dtype, dline = entry.get("dtype", (None, None))
        if dtype is not None and dtype not in OVERRIDE_DTYPES:
            raise where.error(dline, f"{key}.dtype", f"{dtype!r} is not allowed; "
                              f"{_suggest(str(dtype), OVERRIDE_DTYPES)}use {' | '.join(OVERRIDE_DTYPES)}")
        out.append(Override(str(pattern), home, line, dtype))
    return tuple(out)


def _build(flat: dict, overrides, where: _Where) -> Profile:
    values = {}
    for key, (value, line) in flat.items():
        field_name, parser, allowed = SCHEMA[key]
        if parser is None:
            if not isinstance(value, str):
                raise where.error(line, key, f"{value!r} is not allowed; use {allowed}")
            values[field_name] = value
            continue
        try:
            values[field_name] = parser(value)
        except ValueError as e:
            raise where.error(line, key, f"{value!r} {e} (use {allowed})") from None
    values["overrides"] = _parse_overrides(overrides, where)
    values["source"] = where.source
    known = {f.name for f in fields(Profile)}
    assert set(values) <= known
    p = Profile(**values)
    if p.has_gpu and p.gpu_reserve >= p.vram:
        line = flat.get("gpu.reserve", flat.get("gpu.vram", (None, None)))[1]
        raise where.error(line, "gpu.reserve", f"the reserve ({p.gpu_reserve} B) leaves nothing of "
                          f"gpu.vram ({p.vram} B); lower gpu.reserve or set gpu.vram: 0 for no GPU")
    if p.cpu_reserve >= p.ram:
        line = flat.get("cpu.reserve", flat.get("cpu.ram", (None, None)))[1]
        raise where.error(line, "cpu.reserve", f"the reserve ({p.cpu_reserve} B) leaves nothing of "
                          f"cpu.ram ({p.ram} B); raise cpu.ram or lower cpu.reserve")
    return p


def load_profile(source: str | Path | dict | None, name: str = "profile") -> Profile:
    """A validated Profile from a YAML path, an already-parsed dict (`name` labels its errors),
    or None (all defaults)."""
    if source is None:
        return Profile()
    if isinstance(source, dict):
        flat, overrides = _flatten_dict(source, _Where(name))
        return _build(flat, overrides, _NoLines(name))
    path = Path(source)
    where = _Where(str(path))
    if path.exists() and not path.is_file():  # a directory, or a FIFO that would block the read
        raise ProfileError(f"{path}: not a regular file (a profile is a YAML file)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file (write one with `hetero-qwen probe --out {path}`)") from None
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: not UTF-8 text (byte {e.start}); a profile is a YAML file") from None
    except OSError as e:
        raise ProfileError(f"{path}: cannot read ({e.strerror})") from None
    flat, overrides = _flatten(_compose(text, where), where)
    return _build(flat, overrides, where)
