"""The CPU fast path for a few tokens (executor/cpu_decode.py, T <= MAX_TOKENS): a speculative
verify of k + 1 tokens reads each weight once, and its logits and caches equal the same tokens
decoded one at a time, bit for bit, in every CPU format (so greedy output with MTP on equals MTP
off in bf16 as in fp32); and it agrees with the generic per-op forward."""

import pytest
import torch

import hetero_qwen
from helpers import rel_err
from hetero_qwen.executor import cpu_decode
from hetero_qwen.kernels import cpp

pytestmark = pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")

PROMPT = [(13 * i + 7) % 300 + 1 for i in range(40)]
FOLLOW = [11, 250, 37, 99, 5]


def load(path, fmt, dtype):
    return hetero_qwen.load(path, dtype=dtype, quiet=True, mtp=False,
                            profile={"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                                     "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}})


def caches_of(session) -> list[torch.Tensor]:
    out = []
    for c in session.caches:
        if hasattr(c, "keep_slots"):
            out += [c.conv.clone(), c.state.clone()]
        else:
            out += [c.k[:, :, :c.length].clone(), c.v[:, :, :c.length].clone()]
    return out


# (an fp32 model's float weights run torch's F.linear: no fast path for bf16 there)
@pytest.mark.parametrize("fmt,dtype", [("bf16", "bf16"), ("int8", "bf16"), ("int4", "bf16"),
                                       ("int8", "fp32"), ("int4", "fp32")])
def test_verify_equals_decoding_one_token_at_a_time(hf_causal, monkeypatch, fmt, dtype):
    _, path = hf_causal
    eng = load(path, fmt, dtype)
    fast = eng.runner.cpu_decode
    assert fast is not None and all(layer is not None for layer in fast.layers) and fast.head is not None
    rows = []
    real_ffn = cpu_decode._Ffn.__call__
    monkeypatch.setattr(cpu_decode._Ffn, "__call__", lambda self, x: rows.append(x.shape[0]) or real_ffn(self, x))

    plain = eng.session()
    plain.feed(PROMPT)
    snap = plain.snapshot()
    decoded = torch.stack([plain.feed([t])[-1] for t in FOLLOW])
    after_all = caches_of(plain)

    s = eng.session()
    s.feed(PROMPT)
    rows.clear()
    verified = s.verify(FOLLOW)
    assert set(rows) == {len(FOLLOW)}  # every layer's FFN ran once, on all rows: weights read once
    assert torch.equal(verified, decoded)
    s.commit(len(FOLLOW))
    assert all(torch.equal(a, b) for a, b in zip(caches_of(s), after_all))

    # keep 2 of 5: the DeltaNet states come back from their slots, the KV caches are trimmed
    s.restore(snap)
    s.verify(FOLLOW)
    s.commit(2)
    plain.restore(snap)
    for t in FOLLOW[:2]:
        plain.feed([t])
    assert all(torch.equal(a, b) for a, b in zip(caches_of(s), caches_of(plain)))
    assert torch.equal(s.feed([42]), plain.feed([42]))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_few_token_fast_path_equals_generic_fp32(hf_causal, fmt):
    """A verify and a short prompt chunk through the fast path vs the generic forward (fp32: only
    the summation order differs)."""
    _, path = hf_causal
    eng = load(path, fmt, "fp32")
    outs = []
    for fast in (eng.runner.cpu_decode, None):
        keep = eng.runner.cpu_decode
        eng.runner.cpu_decode = fast
        try:
            s = eng.session()
            s.feed(PROMPT)
            chunk = s.feed([3, 1, 4, 1, 5, 9], all_logits=True)
            verified = s.verify(FOLLOW)
            s.commit(3)
            outs.append((chunk, verified, s.feed([42])))
        finally:
            eng.runner.cpu_decode = keep
    for a, b in zip(*outs):
        assert rel_err(a, b) < 1e-4


def test_more_tokens_than_the_fast_path_takes_run_generic(hf_causal, monkeypatch):
    _, path = hf_causal
    eng = load(path, "int8", "fp32")
    monkeypatch.setattr(cpu_decode._Ffn, "__call__", lambda self, x: pytest.fail("fast path ran"))
    s = eng.session()
    s.feed(PROMPT[:cpu_decode.MAX_TOKENS + 1])


# ---- the MTP draft step on the CPU (executor/cpu_mtp.py) -----------------------------------------

@pytest.fixture(scope="module")
def mtp_path(hf_causal, tmp_path_factory):
    from mtp_fixtures import add_mtp
    return add_mtp(hf_causal[1], tmp_path_factory.mktemp("mtp") / "ckpt")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_cpu_mtp_draft_equals_the_generic_mtp_forward(mtp_path, fmt):
    eng = hetero_qwen.load(mtp_path, dtype="fp32", quiet=True, mtp=True,
                           profile={"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                                    "mtp": {"draft_tokens": 2}, "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}})
    drafter = eng.mtp
    assert drafter.cpu_path is not None
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, eng.cfg.hidden_size, generator=g)
    outs = []
    for fast in (drafter.cpu_path, None):
        drafter.cpu_path = fast
        cache = drafter.new_cache(64)
        pushed = drafter.forward([5, 17, 33], hidden[:3], 10, cache, logits=False)
        out, logits = drafter.forward([8], hidden[3:], 13, cache)  # attends to the 3 pushed pairs
        assert cache.length == 4
        outs.append((pushed[0].float(), out.float(), logits))
        drafter.release_cache(cache)
    for a, b in zip(*outs):
        assert rel_err(a, b) < 1e-4


def test_verify_state_slots_are_charged_to_the_budget(hf_causal):
    """The DeltaNet state slots a verify keeps are charged to the state's device when first made, and
    closing the session gives every byte back."""
    _, path = hf_causal
    eng = load(path, "int8", "fp32")
    mem = eng.devices.cpu.memory
    before = mem.used
    s = eng.session()
    opened = mem.used
    s.feed(PROMPT)
    s.verify(FOLLOW)
    states = [c for c in s.caches if hasattr(c, "keep_slots")]
    slot_bytes = sum(4 * len(FOLLOW) * (c.state.numel() + c.conv.numel()) for c in states)
    assert states and mem.used - opened == slot_bytes
    s.commit(2)
    s.verify(FOLLOW[:3])  # fewer positions: the slots made already serve, nothing more is charged
    assert mem.used - opened == slot_bytes
    s.close()
    assert mem.used == before
