"""The C ABI of the C++ kernels (csrc/hq_api.cpp), declared in this one place.

Each entry point is a `Kernel`: its C name, its parameters in C order (a scalar with its ctypes
type, or a tensor passed as a pointer) and its return type. A tensor parameter states what the C
code assumes of the memory behind the pointer: dtype, shape in terms of the scalar parameters,
and layout (contiguous, or rows with unit column stride and a given row stride). `requires` lists
the relations between scalars the C code relies on.

A call passes the C argument list with tensors in place of pointers:

    HQ_RMSNORM(rows, n, x, ldx, w, eps, out)

Every tensor is checked (a few attribute reads each) before the C function runs; a mismatch raises
KernelArgumentError naming the kernel, the argument, what was expected and what was passed, so a
drifted call fails instead of corrupting memory. Hot paths bind the arguments that stay fixed once
(`HQ_LINEAR.bind(fmt=..., w=..., ...)`): those are checked at bind time, the rest on every call.

`signature()` is the ABI in one line; hq_api.cpp returns the same text from hq_abi_signature(),
so a library built from other declarations is refused at load ("rebuild with ..."), and
tests/test_kernel_boundary.py checks the C declarations in hq_api.cpp against this table.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import KernelArgumentError
from ..formats import INT4_GROUP

I32, I64, F32, PTR, STR = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_char_p
CTYPE_NAMES = {I32: "i32", I64: "i64", F32: "f32", PTR: "ptr", STR: "str"}

FMT_CODE = {"bf16": 0, "int8": 1, "int4": 2}  # the `fmt` argument of the GEMV entry points
_WEIGHT_DTYPE = {0: torch.bfloat16, 1: torch.int8, 2: torch.uint8}


@dataclass(frozen=True)
class Scalar:
    name: str
    ctype: type


# expect(args) -> (allowed dtypes, shape), or None where the pointer must be NULL (a None tensor)
Expect = Callable[[dict], "tuple[tuple, tuple] | None"]


@dataclass(frozen=True)
class Tensor:
    name: str
    expect: Expect
    row_stride: str | None = None  # rows with unit column stride, row stride = this scalar; else contiguous
    ctype: type = PTR


def f32(name: str, *dims, row_stride: str | None = None) -> Tensor:
    """A float32 tensor of shape `dims` (ints or scalar parameter names)."""
    return Tensor(name, lambda a: ((torch.float32,), tuple(a[d] if isinstance(d, str) else d for d in dims)),
                  row_stride)


def packed_shape(fmt: int, rows: int, cols: int) -> tuple:
    """Shape of a weight matrix's packed values (formats.py): int4 packs two inputs per byte in
    whole groups of INT4_GROUP."""
    return (rows, -(-cols // INT4_GROUP) * INT4_GROUP // 2) if fmt == 2 else (rows, cols)


def weight(name: str, rows: str, cols: str) -> Tensor:
    """The packed values of a [rows, cols] matrix in format `fmt` (bf16 | int8 | uint8 int4 pairs)."""
    return Tensor(name, lambda a: ((_WEIGHT_DTYPE.get(a["fmt"]),), packed_shape(a["fmt"], a[rows], a[cols])))


def weight_meta(name: str, rows: str, cols: str) -> Tensor:
    """Its metadata: none for bf16, fp32 row scales for int8, fp16 (scale, offset) per group for int4."""
    def expect(a):
        fmt = a["fmt"]
        if fmt == 1:
            return (torch.float32,), (a[rows],)
        if fmt == 2:
            return (torch.float16,), (a[rows], -(-a[cols] // INT4_GROUP), 2)
        return None
    return Tensor(name, expect)


def kv_cache(name: str) -> Tensor:
    """A layer's K or V cache [nkv, cap, D], bf16 when cache_bf16 else fp32."""
    return Tensor(name, lambda a: ((torch.bfloat16 if a["cache_bf16"] else torch.float32,),
                                   (a["nkv"], a["cap"], a["D"])))


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    where = "" if t.is_cpu else f" on {t.device}"
    return f"{str(t.dtype).removeprefix('torch.')} {_dims(t.shape)} strides {tuple(t.stride())}{where}"


@dataclass
class Kernel:
    name: str
    params: tuple
    restype: type = I32
    requires: tuple = ()  # (predicate(args), what it says) the C code relies on
    rejects: str = ""  # when set, a non-zero return means the C side refused; this says why
    fn: Callable = field(default=None, repr=False)  # the C function, set by attach()

    def __post_init__(self):
        self.names = tuple(p.name for p in self.params)
        self.tensors = tuple((i, p) for i, p in enumerate(self.params) if isinstance(p, Tensor))

    def signature(self) -> str:
        args = ",".join(CTYPE_NAMES[p.ctype] for p in self.params)
        return f"{self.name}({args})->{CTYPE_NAMES[self.restype]}"

    def attach(self, lib, missing: Callable | None = None) -> None:
        """Bind to the loaded library (None: every call runs `missing`, which raises)."""
        if lib is None:
            self.fn = missing
            return
        f = getattr(lib, self.name)
        f.argtypes = [p.ctype for p in self.params]
        f.restype = self.restype
        self.fn = f

    # ---- checks
    def fail(self, arg: str, expected: str, got: str):
        raise KernelArgumentError(f"{self.name}: {arg}: expected {expected}, got {got}")

    def want(self, p: Tensor, a: dict) -> tuple | None:
        """(dtypes, shape, row stride or None for contiguous) that p must have, or None for NULL."""
        w = p.expect(a)
        return None if w is None else (*w, None if p.row_stride is None else a[p.row_stride])

    def pointer(self, p: Tensor, t, want: tuple | None) -> int | None:
        """The pointer to pass for tensor parameter p after checking t against `want` (the hot
        path: four attribute reads), or raise KernelArgumentError saying what is wrong."""
        if want is None:
            if t is None:
                return None
        else:
            dtypes, shape, ld = want
            try:
                if (t.dtype in dtypes and t.shape == shape and t.is_cpu
                        and (t.is_contiguous() if ld is None else
                             t.stride(-1) == 1 and (shape[0] <= 1 or t.stride(0) == ld))):
                    return t.data_ptr()
            except AttributeError:  # not a tensor: described below
                pass
        self.explain(p, t, want)

    def explain(self, p: Tensor, t, want: tuple | None):
        if want is None:
            self.fail(p.name, "None (no tensor for this format)", _describe(t))
        dtypes, shape, ld = want
        if not isinstance(t, torch.Tensor):
            self.fail(p.name, f"a tensor {_dims(shape)}", _describe(t))
        if t.dtype not in dtypes or t.shape != shape or not t.is_cpu:
            self.fail(p.name, f"{str(dtypes[0]).removeprefix('torch.')} {_dims(shape)} on the CPU", _describe(t))
        if ld is None:
            self.fail(p.name, "a contiguous tensor", _describe(t))
        self.fail(p.name, f"rows of unit column stride, row stride {p.row_stride}={ld}", _describe(t))

    def check_requires(self, a: dict) -> None:
        for ok, says in self.requires:
            if not ok(a):
                got = ", ".join(f"{k}={v}" for k, v in a.items() if isinstance(v, (int, float)))
                raise KernelArgumentError(f"{self.name}: needs {says}; got {got}")

    def run(self, cargs: list):
        rc = self.fn(*cargs)
        if self.rejects and rc != 0:
            raise KernelArgumentError(f"{self.name} rejected its arguments: {self.rejects}")
        return rc

    # ---- calls
    def __call__(self, *args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.names)}), "
                            f"got {len(args)}")
        a = dict(zip(self.names, args))
        self.check_requires(a)  # first: the shapes below may only make sense when these hold
        cargs = list(args)
        for i, p in self.tensors:
            cargs[i] = self.pointer(p, args[i], self.want(p, a))
        return self.run(cargs)

    def bind(self, **fixed) -> "BoundKernel":
        return BoundKernel(self, fixed)


class BoundKernel:
    """A kernel with some arguments fixed and checked once; call it with the others, in C order.
    It keeps the fixed tensors alive (their pointers are reused on every call). What a free
    tensor must be is worked out at bind time when it depends only on fixed scalars."""

    def __init__(self, kernel: Kernel, fixed: dict):
        unknown = set(fixed) - set(kernel.names)
        if unknown:
            raise TypeError(f"{kernel.name} has no argument {', '.join(sorted(unknown))}")
        self.kernel, self.fixed = kernel, fixed
        self.free = tuple(n for n in kernel.names if n not in fixed)
        self.scalars = {k: v for k, v in fixed.items() if isinstance(v, (int, float))}
        self.free_scalars = [(self.free.index(n), i) for i, n in enumerate(kernel.names)
                             if n in self.free and not isinstance(kernel.params[i], Tensor)]
        if not self.free_scalars:
            kernel.check_requires(self.scalars)
        self.template = [None] * len(kernel.params)
        self.free_tensors = []  # (position among the free arguments, position in the C call, param, want)
        for i, p in enumerate(kernel.params):
            if not isinstance(p, Tensor):
                self.template[i] = fixed.get(p.name)
                continue
            try:
                want = kernel.want(p, self.scalars)
            except KeyError:  # depends on a free scalar: worked out per call
                want = KeyError
            if p.name in fixed:
                if want is KeyError:
                    raise TypeError(f"{kernel.name}: binding {p.name} needs its sizes bound too")
                self.template[i] = kernel.pointer(p, fixed[p.name], want)
            else:
                self.free_tensors.append((self.free.index(p.name), i, p, want))

    def __call__(self, *args):
        k = self.kernel
        if len(args) != len(self.free):
            raise TypeError(f"bound {k.name} takes {len(self.free)} arguments ({', '.join(self.free)}), "
                            f"got {len(args)}")
        cargs = self.template.copy()
        a = None
        if self.free_scalars:
            a = dict(self.scalars)
            for j, i in self.free_scalars:
                a[k.names[i]] = cargs[i] = args[j]
            k.check_requires(a)
        for j, i, p, want in self.free_tensors:
            t = args[j]
            if want is KeyError:
                want = k.want(p, a)
            elif want is not None and want[2] is None:  # the common case inline: contiguous, sizes known
                try:
                    if t.dtype in want[0] and t.shape == want[1] and t.is_cpu and t.is_contiguous():
                        cargs[i] = t.data_ptr()
                        continue
                except AttributeError:
                    pass
            cargs[i] = k.pointer(p, t, want)
        rc = k.fn(*cargs)
        if k.rejects and rc != 0:
            raise KernelArgumentError(f"{k.name} rejected its arguments: {k.rejects}")
        return rc


# ------------------------------------------------------------------------ the entry points
def _s(spec: str) -> tuple:
    """'i32 nh, i64 D' -> Scalar params."""
    types = {"i32": I32, "i64": I64, "f32": F32}
    return tuple(Scalar(n, types[t]) for t, n in (x.split() for x in spec.split(",")))


HQ_ABI_VERSION = Kernel("hq_abi_version", ())
HQ_ABI_SIGNATURE = Kernel("hq_abi_signature", (), STR)
HQ_GROUP_SIZE = Kernel("hq_group_size", ())
HQ_ISA_NAME = Kernel("hq_isa_name", (), STR)
HQ_ISA_SUPPORTED = Kernel("hq_isa_supported", _s("i32 which"))
HQ_ISA_INT8DOT = Kernel("hq_isa_int8dot", ())
HQ_FORCE_ISA = Kernel("hq_force_isa", _s("i32 which"))
HQ_SET_THREADS = Kernel("hq_set_threads", _s("i32 n"))
HQ_GET_THREADS = Kernel("hq_get_threads", ())
HQ_TUNE = Kernel("hq_tune", _s("i32 key, i64 value"), I64)

# y[B, n_out] = x[B, n_in] @ W^T
HQ_LINEAR = Kernel("hq_linear", (
    Scalar("fmt", I32), weight("w", "n_out", "n_in"), weight_meta("meta", "n_out", "n_in"),
    *_s("i64 n_out, i64 n_in"), f32("x", "B", "n_in"), Scalar("B", I32), f32("y", "B", "n_out"),
), requires=((lambda a: a["fmt"] in _WEIGHT_DTYPE, "fmt 0 (bf16), 1 (int8) or 2 (int4)"),))

# y[B, H] = down(silu(gate x) * up x); h [B, I] scratch
HQ_FFN = Kernel("hq_ffn", (
    Scalar("fmt", I32), weight("gw", "I", "H"), weight_meta("gm", "I", "H"), weight("uw", "I", "H"),
    weight_meta("um", "I", "H"), weight("dw", "H", "I"), weight_meta("dm", "H", "I"), *_s("i64 H, i64 I"),
    f32("x", "B", "H"), Scalar("B", I32), f32("h", "B", "I"), f32("y", "B", "H"),
), requires=((lambda a: a["fmt"] in _WEIGHT_DTYPE, "fmt 0 (bf16), 1 (int8) or 2 (int4)"),))

# one decode token of gated attention; writes k, v into the cache at pos; out [nh, D]
HQ_ATTN_DECODE = Kernel("hq_attn_decode", (
    *_s("i32 nh, i32 nkv, i64 D, i64 rd"), f32("q", "nh", "qld"), Scalar("qld", I64), f32("k", "nkv", "D"),
    f32("v", "nkv", "D"), f32("qw1", "D"), f32("kw1", "D"), Scalar("eps", F32), f32("cs", "rd"), f32("sn", "rd"),
    kv_cache("Kc"), kv_cache("Vc"), *_s("i32 cache_bf16, i64 cap, i64 pos, f32 scale, i32 gated"),
    f32("out", "nh", "D"),
), requires=(
    (lambda a: a["nkv"] > 0 and a["nh"] % a["nkv"] == 0, "nh a multiple of nkv > 0"),
    (lambda a: 0 <= a["pos"] < a["cap"], "0 <= pos < cap"),
    (lambda a: 0 <= a["rd"] <= a["D"] and a["rd"] % 2 == 0, "an even rotary dim rd <= D"),
    (lambda a: a["qld"] >= a["D"] * (2 if a["gated"] else 1), "q rows (qld) holding the head and, when gated, its gate"),
), rejects="heads, position or rotary dim")

# one DeltaNet decode token, in place on conv_state [B, conv_dim, S_len] and state [B, Hv, Dk, Dv]
HQ_DELTANET_STEP = Kernel("hq_deltanet_step", (
    *_s("i32 B, i64 conv_dim, i32 K, i32 S_len"), f32("mixed", "B", "conv_dim"), f32("a", "B", "Hv"),
    f32("b", "B", "Hv"), f32("conv_w", "conv_dim", "K"), f32("conv_state", "B", "conv_dim", "S_len"),
    f32("A_log", "Hv"), f32("dt_bias", "Hv"), *_s("i32 Hk, i32 Hv, i64 Dk, i64 Dv"),
    f32("state", "B", "Hv", "Dk", "Dv"), f32("out", "B", "Hv", "Dv"),
), requires=(
    (lambda a: a["S_len"] >= a["K"] - 1, "conv_state holding at least K - 1 inputs (S_len >= K - 1)"),
    (lambda a: a["Hk"] > 0 and a["Hv"] % a["Hk"] == 0, "Hv a multiple of Hk > 0"),
    (lambda a: a["conv_dim"] == 2 * a["Hk"] * a["Dk"] + a["Hv"] * a["Dv"], "conv_dim = 2 Hk Dk + Hv Dv"),
), rejects="shapes")

# out = x * rsqrt(mean(x^2) + eps) * w per row; row r of x starts ldx floats after row r-1
HQ_RMSNORM = Kernel("hq_rmsnorm", (
    *_s("i64 rows, i64 n"), f32("x", "rows", "n", row_stride="ldx"), Scalar("ldx", I64), f32("w", "n"),
    Scalar("eps", F32), f32("out", "rows", "n"),
), requires=((lambda a: a["ldx"] >= a["n"], "ldx >= n"),))

# out = w * rmsnorm(x) * silu(z) per row
HQ_GATED_RMSNORM = Kernel("hq_gated_rmsnorm", (
    *_s("i64 rows, i64 n"), f32("x", "rows", "n"), f32("z", "rows", "n"), f32("w", "n"), Scalar("eps", F32),
    f32("out", "rows", "n"),
))

KERNELS = (HQ_ABI_VERSION, HQ_ABI_SIGNATURE, HQ_GROUP_SIZE, HQ_ISA_NAME, HQ_ISA_SUPPORTED, HQ_ISA_INT8DOT,
           HQ_FORCE_ISA, HQ_SET_THREADS, HQ_GET_THREADS, HQ_TUNE, HQ_LINEAR, HQ_FFN, HQ_ATTN_DECODE,
           HQ_DELTANET_STEP, HQ_RMSNORM, HQ_GATED_RMSNORM)


def signature() -> str:
    """The whole ABI in one line (hq_abi_signature() in hq_api.cpp returns the same text)."""
    return ";".join(k.signature() for k in KERNELS)
