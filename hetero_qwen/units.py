"""Human units for profiles and reports: sizes (24GiB), rates (70GB/s), FLOP rates (150TFLOPS),
durations (15us). Parsers raise ValueError with the allowed forms; formatters print short text."""

from __future__ import annotations

import re

SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
RATE_UNITS = {"KB/S": 10**3, "MB/S": 10**6, "GB/S": 10**9, "TB/S": 10**12,
              "KIB/S": 2**10, "MIB/S": 2**20, "GIB/S": 2**30, "TIB/S": 2**40}
FLOP_UNITS = {"GFLOPS": 1e9, "TFLOPS": 1e12, "PFLOPS": 1e15,
              "GFLOP/S": 1e9, "TFLOP/S": 1e12, "PFLOP/S": 1e15}
TIME_UNITS = {"NS": 1e-9, "US": 1e-6, "MS": 1e-3, "S": 1.0}

_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")


def _split(text: str) -> tuple[float, str] | None:
    m = _NUM.match(text)
    return (float(m.group(1)), m.group(2).upper()) if m else None


def parse_size(value) -> int:
    """Bytes from `24GiB`, `16GB`, `512 MiB`, `1TB` or a plain non-negative int."""
    if isinstance(value, bool):
        raise ValueError("is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("is negative")
        return value
    parts = _split(str(value))
    if not parts or parts[1] not in SIZE_UNITS:
        raise ValueError("is not a size")
    return int(parts[0] * SIZE_UNITS[parts[1]])


def parse_rate(value) -> float:
    """Bytes/s from `70GB/s`, `800MB/s`, `25 GiB/s`."""
    parts = _split(str(value)) if not isinstance(value, bool) else None
    if not parts or parts[1] not in RATE_UNITS or parts[0] <= 0:
        raise ValueError("is not a bandwidth")
    return parts[0] * RATE_UNITS[parts[1]]


def parse_flops(value) -> float:
    """FLOP/s from `150TFLOPS`, `800 GFLOPS`, `1.5TFLOP/s`."""
    parts = _split(str(value)) if not isinstance(value, bool) else None
    if not parts or parts[1] not in FLOP_UNITS or parts[0] <= 0:
        raise ValueError("is not a FLOP rate")
    return parts[0] * FLOP_UNITS[parts[1]]


def parse_duration(value) -> float:
    """Seconds from `15us`, `0.02ms`, `1s`."""
    parts = _split(str(value)) if not isinstance(value, bool) else None
    if not parts or parts[1] not in TIME_UNITS:
        raise ValueError("is not a duration")
    return parts[0] * TIME_UNITS[parts[1]]


def fmt_bytes(n: float) -> str:
    """1.50 GiB style, binary units (what `free -h` and nvidia-smi show)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_rate(bps: float) -> str:
    return f"{bps / 1e9:.3g}GB/s" if bps >= 1e9 else f"{bps / 1e6:.3g}MB/s"


def fmt_flops(f: float) -> str:
    return f"{f / 1e12:.3g}TFLOPS" if f >= 1e12 else f"{f / 1e9:.3g}GFLOPS"


def fmt_size_yaml(n: int) -> str:
    """A size as a profile value, in whole MiB or GiB."""
    if n % 2**30 == 0:
        return f"{n // 2**30}GiB"
    return f"{n // 2**20}MiB"
