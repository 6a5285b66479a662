"""The typed C++ kernel boundary (hetero_qwen/kernels/abi.py): the declarations match the C source
and the built library, and a wrong dtype, shape or layout passed to any entry point's wrapper raises
KernelArgumentError naming the kernel and the argument before the C function runs."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hetero_qwen.errors import HeteroQwenError, KernelArgumentError
from hetero_qwen.kernels import abi, cpp
from hetero_qwen.kernels.quant import PackedWeight

CSRC = Path(__file__).resolve().parents[1] / "csrc" / "hq_api.cpp"
C_TYPES = {"int": "i32", "int64_t": "i64", "float": "f32", "const char*": "str"}


def c_entry_points() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """name -> (return type, [(type, parameter name)]) of every `hq_*` function in extern "C"."""
    text = CSRC.read_text()
    body = text[text.index('extern "C" {'):]
    out = {}
    for m in re.finditer(r"^(int64_t|int|const char\*)\s+(hq_\w+)\(([^)]*)\)\s*\{", body, re.M):
        params = []
        for p in filter(None, (x.strip() for x in m.group(3).split(","))):
            ctype, name = re.match(r"(.*?)(\w+)$", p).groups()
            params.append(("ptr" if "*" in ctype else C_TYPES[ctype.strip()], name))
        out[m.group(2)] = (C_TYPES[m.group(1)], params)
    return out


def test_declarations_match_the_c_source():
    c = c_entry_points()
    assert set(c) == {k.name for k in abi.KERNELS}
    for k in abi.KERNELS:
        ret, params = c[k.name]
        assert ret == abi.CTYPE_NAMES[k.restype], k.name
        assert params == [(abi.CTYPE_NAMES[p.ctype], p.name) for p in k.params], k.name


def test_the_c_signature_text_is_the_declared_abi():
    text = CSRC.read_text()
    literal = re.search(r"hq_abi_signature\(\) \{\s*return\s*((?:\"[^\"]*\"\s*)+);", text).group(1)
    assert "".join(re.findall(r"\"([^\"]*)\"", literal)) == abi.signature()
    assert "hq_attn_decode(i32,i32,i64,i64,ptr,i64,ptr,ptr,ptr,ptr,f32,ptr,ptr,ptr,ptr,i32,i64,i64,f32,i32,ptr)->i32" \
        in abi.signature()


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
def test_the_loaded_library_reports_the_declared_abi():
    assert abi.HQ_ABI_SIGNATURE().decode() == abi.signature()
    assert abi.HQ_LINEAR.fn.argtypes == [p.ctype for p in abi.HQ_LINEAR.params]


def _fake_lib(sig: str | None):
    lib = SimpleNamespace(hq_group_size=lambda: 64)
    if sig is not None:
        lib.hq_abi_signature = lambda: sig.encode()
    return lib


def test_a_stale_library_is_refused_with_the_rebuild_command():
    assert cpp.stale_build(_fake_lib(abi.signature()), "x.so") is None
    for lib in (_fake_lib(None), _fake_lib(abi.signature().replace("hq_linear(i32", "hq_linear(i64"))):
        msg = cpp.stale_build(lib, "x.so")
        assert "x.so is a stale build" in msg and "rebuild with `python setup.py build_ext --inplace`" in msg


# ---------------------------------------------------------------- argument checks, C never reached
@pytest.fixture
def recorded(monkeypatch):
    """Every kernel's C function replaced by a recorder (and the library marked loaded), so the
    checks run with or without a build and a call that reaches C is seen."""
    calls = []
    for k in abi.KERNELS:
        monkeypatch.setattr(k, "fn", lambda *a, _n=k.name: calls.append(_n) or 0)
    monkeypatch.setattr(cpp, "_tried", True)
    monkeypatch.setattr(cpp, "_lib", object())
    return calls


def strided(t: torch.Tensor) -> torch.Tensor:
    """Same shape and values, not contiguous (every other element of a buffer twice as long)."""
    return torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2].copy_(t)


def linear_args(fmt="int8"):
    return dict(x=torch.randn(2, 64), w=PackedWeight.from_float(torch.randn(8, 64), fmt), out=torch.empty(2, 8))


def ffn_args(fmt="int4"):
    H, I = 64, 32
    pw = lambda o, i: PackedWeight.from_float(torch.randn(o, i), fmt)  # noqa: E731
    return dict(x=torch.randn(2, H), gate=pw(I, H), up=pw(I, H), down=pw(H, I), out=torch.empty(2, H),
                hidden=torch.empty(2, I))


def deltanet_args():
    Hk, Hv, Dk, Dv, K = 1, 2, 4, 4, 4
    cd = 2 * Hk * Dk + Hv * Dv
    return dict(mixed_qkv=torch.randn(1, cd), a=torch.randn(1, Hv), b=torch.randn(1, Hv),
                conv_weight=torch.randn(cd, K), conv_state=torch.zeros(1, cd, K - 1), A_log=torch.randn(Hv),
                dt_bias=torch.randn(Hv), state=torch.zeros(1, Hv, Dk, Dv), out=torch.empty(1, Hv, Dv))


def rmsnorm_args():
    return dict(x=torch.randn(3, 8), w=torch.randn(8), eps=1e-6, out=torch.empty(3, 8))


def gated_args():
    return dict(x=torch.randn(3, 8), z=torch.randn(3, 8), w=torch.randn(8), eps=1e-6, out=torch.empty(3, 8))


def attn_args():
    nh, nkv, D, cap = 4, 2, 8, 5
    return dict(q=torch.randn(nh, 2 * D), k=torch.randn(nkv, D), v=torch.randn(nkv, D), q_w1=torch.ones(D),
                k_w1=torch.ones(D), eps=1e-6, cos=torch.ones(D), sin=torch.zeros(D),
                K=torch.zeros(nkv, cap, D, dtype=torch.bfloat16), V=torch.zeros(nkv, cap, D, dtype=torch.bfloat16),
                pos=1, scale=D ** -0.5, gated=True, out=torch.empty(nh, D))


WRAPPERS = {  # wrapper, valid arguments, kernel
    "linear": (cpp.linear, linear_args, "hq_linear"),
    "ffn": (cpp.ffn, ffn_args, "hq_ffn"),
    "deltanet": (cpp.deltanet_decode_step, deltanet_args, "hq_deltanet_step"),
    "rmsnorm": (cpp.rmsnorm, rmsnorm_args, "hq_rmsnorm"),
    "gated_rmsnorm": (cpp.gated_rmsnorm, gated_args, "hq_gated_rmsnorm"),
    "attn_decode": (cpp.attn_decode, attn_args, "hq_attn_decode"),
}


def _weight_data(key, make):
    def change(args):
        w = args[key]
        args[key] = PackedWeight(w.fmt, make(w.data), w.meta, w.out_features, w.in_features)
    return change


def _set(key, make):
    def change(args):
        args[key] = make(args[key])
    return change


# (wrapper, what is wrong, change to valid arguments, argument named in the error, expected text)
CASES = [
    ("linear", "dtype", _set("x", torch.Tensor.double), "x", r"expected float32 \[2, 64\] on the CPU, got float64"),
    ("linear", "shape", _set("out", lambda t: torch.empty(2, 9)), "y", r"expected float32 \[2, 8\] on the CPU, got float32 \[2, 9\]"),
    ("linear", "layout", _set("x", strided), "x", "expected a contiguous tensor"),
    ("linear", "weight dtype", _weight_data("w", lambda d: d.float()), "w", "expected int8 \\[8, 64\\]"),
    ("ffn", "dtype", _set("hidden", torch.Tensor.double), "h", r"expected float32 \[2, 32\]"),
    ("ffn", "shape", _weight_data("down", lambda d: d[:, :16].contiguous()), "dw", r"expected uint8 \[64, 32\] on the CPU, got uint8 \[64, 16\]"),
    ("ffn", "layout", _set("out", strided), "y", "expected a contiguous tensor"),
    ("deltanet", "dtype", _set("state", torch.Tensor.double), "state", r"expected float32 \[1, 2, 4, 4\]"),
    ("deltanet", "shape", _set("A_log", lambda t: torch.randn(3)), "A_log", r"expected float32 \[2\] on the CPU, got float32 \[3\]"),
    ("deltanet", "layout", _set("conv_state", strided), "conv_state", "expected a contiguous tensor"),
    ("rmsnorm", "dtype", _set("w", torch.Tensor.double), "w", r"expected float32 \[8\]"),
    ("rmsnorm", "shape", _set("out", lambda t: torch.empty(3, 7)), "out", r"expected float32 \[3, 8\]"),
    ("rmsnorm", "layout", _set("x", strided), "x", "expected rows of unit column stride"),  # rows may be strided, columns not
    ("gated_rmsnorm", "dtype", _set("z", torch.Tensor.half), "z", r"expected float32 \[3, 8\] on the CPU, got float16"),
    ("gated_rmsnorm", "shape", _set("w", lambda t: torch.randn(7)), "w", r"expected float32 \[8\]"),
    ("gated_rmsnorm", "layout", _set("z", strided), "z", "expected a contiguous tensor"),
    ("attn_decode", "dtype", _set("V", torch.Tensor.float), "Vc", r"expected bfloat16 \[2, 5, 8\] on the CPU, got float32"),
    ("attn_decode", "shape", _set("k_w1", lambda t: torch.ones(7)), "kw1", r"expected float32 \[8\]"),
    ("attn_decode", "layout", _set("q", strided), "q", "expected a contiguous tensor"),
]


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_valid_arguments_reach_the_c_function(recorded, wrapper):
    fn, make_args, kernel = WRAPPERS[wrapper]
    fn(**make_args())
    assert recorded == [kernel]


@pytest.mark.parametrize("wrapper, wrong, change, arg, text", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_wrong_argument_is_refused_before_the_c_function(recorded, wrapper, wrong, change, arg, text):
    fn, make_args, kernel = WRAPPERS[wrapper]
    args = make_args()
    change(args)
    with pytest.raises(KernelArgumentError, match=f"^{kernel}: {arg}: {text}") as e:
        fn(**args)
    assert recorded == []
    assert isinstance(e.value, HeteroQwenError) and "\n" not in str(e.value)


def test_each_wrapper_has_every_kind_of_wrong_argument_covered():
    assert {(c[0], kind) for c in CASES for kind in ("dtype", "shape", "layout") if c[1] == kind} == \
        {(w, kind) for w in WRAPPERS for kind in ("dtype", "shape", "layout")}


def test_relations_between_sizes_are_checked(recorded):
    args = attn_args()
    args["pos"] = 5  # == cap: would write past the cache
    with pytest.raises(KernelArgumentError, match=r"^hq_attn_decode: needs 0 <= pos < cap; got .*pos=5"):
        cpp.attn_decode(**args)
    args = deltanet_args()
    args["conv_state"] = torch.zeros(1, 16, 2)  # S_len 2 < K - 1
    with pytest.raises(KernelArgumentError, match=r"^hq_deltanet_step: needs conv_state holding at least K - 1"):
        cpp.deltanet_decode_step(**args)
    with pytest.raises(KernelArgumentError, match="gate/up/down must share one format"):
        a = ffn_args()
        a["up"] = PackedWeight.from_float(torch.randn(32, 64), "int8")
        cpp.ffn(**a)
    assert recorded == []


def test_a_bound_kernel_checks_fixed_arguments_once_and_the_rest_per_call(recorded):
    w, out = torch.randn(8), torch.empty(1, 8)
    norm = abi.HQ_RMSNORM.bind(rows=1, n=8, ldx=8, w=w, eps=1e-6, out=out)
    norm(torch.randn(1, 8))
    assert recorded == ["hq_rmsnorm"]
    with pytest.raises(KernelArgumentError, match=r"^hq_rmsnorm: x: expected float32 \[1, 8\]"):
        norm(torch.randn(1, 9))
    with pytest.raises(KernelArgumentError, match=r"^hq_rmsnorm: w: expected float32 \[8\]"):
        abi.HQ_RMSNORM.bind(rows=1, n=8, ldx=8, w=torch.randn(8, dtype=torch.float64), eps=1e-6, out=out)
    with pytest.raises(TypeError, match="takes 1 arguments"):
        norm(torch.randn(1, 8), 1)
    assert recorded == ["hq_rmsnorm"]


def test_a_weight_bound_for_linear_is_checked_again_when_its_tensor_is_replaced(recorded):
    args = linear_args("int4")
    cpp.linear(**args)
    w = args["w"]
    w.meta = w.meta.float()  # a new tensor: bound again, and refused
    with pytest.raises(KernelArgumentError, match=r"^hq_linear: meta: expected float16 \[8, 1, 2\]"):
        cpp.linear(**args)
    assert recorded == ["hq_linear"]


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
def test_the_real_library_gets_the_same_checks():
    x = torch.randn(3, 8)
    w = torch.randn(8)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    out = torch.empty(3, 8)
    abi.HQ_RMSNORM.bind(rows=3, n=8, ldx=8, w=w, eps=1e-6, out=out)(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(KernelArgumentError, match="hq_rmsnorm: out"):
        cpp.rmsnorm(x, w, 1e-6, out=torch.empty(3, 8, dtype=torch.float64))
