"""Every tensor an op variant holds lives on that variant's device: checked on the simulated GPU.

On the simulated GPU every tensor is a host tensor, so an op computing on "gpu" with a weight
that was never placed there still runs (and matches). These tests record every tensor placed on
the GPU tier and check that each op variant only holds tensors of its own device, so a mix-up
that would be a device-mismatch error (or a C++ kernel reading a device pointer) on CUDA fails here.
"""

from __future__ import annotations

import pytest
import torch

import hetero_qwen
from hetero_qwen.executor import devices as devices_mod
from executor_cases import CASES, IDS, profile
from helpers import rel_err
from hf_models import hf_logits, make_hf_model, save_hf_model


@pytest.fixture
def gpu_spans(monkeypatch):
    """[start, end) host addresses of every tensor Device.place put on the (simulated) GPU."""
    spans: list[tuple[int, int]] = []
    orig = devices_mod.Device.place

    def place(self, t, owner):
        out = orig(self, t, owner)
        if self.name == "gpu":
            spans.append((out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()))
        return out
    monkeypatch.setattr(devices_mod.Device, "place", place)
    return spans


def _tensors(obj, seen=None):
    """Tensors an op holds (weights, norms, packed data), through hetero_qwen objects."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, seen)
    elif type(obj).__module__.startswith("hetero_qwen") and hasattr(obj, "__dict__"):
        if type(obj).__name__ in ("SlotLinear", "Prefetcher", "ModelConfig"):
            return  # staging slots are GPU memory by construction
        for k, v in vars(obj).items():
            if k != "cfg":
                yield from _tensors(v, seen)


def _on_gpu(t, spans) -> bool:
    lo = t.data_ptr()
    hi = lo + t.numel() * t.element_size()
    return any(a <= lo and hi <= b for a, b in spans)


def check_devices(model, spans) -> None:
    slots = [s for layer in model.layers for s in (layer.mixer, layer.ffn)] + [model.head]
    for slot in slots:
        for dev, op in slot.ops.items():
            for t in list(_tensors(op)) + [slot.norms[dev]]:
                assert _on_gpu(t, spans) == (dev == "gpu"), \
                    f"{slot.name}: its {dev} variant holds a tensor of shape {tuple(t.shape)} from the other device"
    embed = model.embed if isinstance(model.embed, torch.Tensor) else model.embed.packed.data
    assert _on_gpu(embed, spans) == (model.embed_device.name == "gpu")
    if model.cpu_decode is not None:
        for t in _tensors((model.cpu_decode.layers, model.cpu_decode.head)):
            assert not _on_gpu(t, spans)


@pytest.mark.parametrize("label", list(CASES))
def test_every_op_variant_holds_only_tensors_of_its_device(label, hf_causal, gpu_spans):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=CASES[label], quiet=True)
    check_devices(eng.runner, gpu_spans)


@pytest.fixture(scope="module")
def hf_tied(tmp_path_factory):
    m = make_hf_model("causal", seed=3, tie_word_embeddings=True)
    path = save_hf_model(m, tmp_path_factory.mktemp("tied"))
    return m, path


@pytest.mark.parametrize("embed_home,head_home", [("cpu", "gpu"), ("gpu", "cpu"), ("gpu", "gpu"), ("cpu", "cpu")])
def test_tied_head_lives_where_the_plan_puts_it(embed_home, head_home, hf_tied, gpu_spans):
    """A tied lm_head planned on another device than the embedding gets its own copy there
    (on CUDA the shared tensor was a device mismatch, or a C++ kernel reading GPU memory)."""
    hf, path = hf_tied
    prof = profile("layers", "64MB", overrides=[{"match": "embed_tokens", "home": embed_home},
                                                {"match": "lm_head", "home": head_home}])
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    assert eng.cfg.tie_word_embeddings
    assert eng.runner.head.decode_device == head_home and eng.runner.embed_device.name == embed_home
    check_devices(eng.runner, gpu_spans)
    ref = hf_logits(hf, IDS[:40])
    assert rel_err(eng.logits(IDS[:40]), ref) < 1e-4
    s = eng.session()
    s.feed(IDS[:30])
    assert rel_err(s.feed([IDS[30]])[-1], ref[30]) < 1e-4


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_tied_head_with_a_packed_cpu_embedding(fmt, hf_tied):
    """A tied head sharing an int8/int4 CPU embedding uses its packed weight."""
    hf, path = hf_tied
    prof = {**profile("layers", "64MB", overrides=[{"match": "embed_tokens|lm_head", "home": "cpu"}]),
            "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}}
    eng = hetero_qwen.load(path, profile=prof, quiet=True, dtype="bf16")
    ref = hf_logits(hf, IDS[:20])
    got = eng.logits(IDS[:20])
    assert rel_err(got, ref) < 0.1


def test_deltanet_snapshot_is_kept_in_host_memory():
    """Snapshots (the chat keeps two) are copies outside the device budget: a GPU-resident state
    is copied to host memory, not cloned in VRAM the plan never counted."""
    from hetero_qwen.model.cache import DeltaNetCache

    class OnCuda:  # stands in for a CUDA tensor: where do its copies go?
        device = torch.device("cuda", 0)

        def clone(self):
            return OnCuda()

        def to(self, device, *a, **k):
            return torch.zeros(1) if torch.device(device).type == "cpu" else OnCuda()

    cache = DeltaNetCache(1, 8, 4, 2, 2, 2, torch.float32)
    cache.conv, cache.state = OnCuda(), OnCuda()
    snap = cache.snapshot()
    assert snap.conv.device.type == "cpu" and snap.state.device.type == "cpu"
    real = DeltaNetCache(1, 8, 4, 2, 2, 2, torch.float32)
    real.state.fill_(1.0)
    snap = real.snapshot()
    real.state.fill_(2.0)
    real.restore(snap)
    assert float(real.state.max()) == 1.0


def test_cpu_fast_path_runs_on_a_machine_with_a_gpu(hf_causal, monkeypatch):
    """The loader installs the GPU working-set hook whenever there is a GPU; that hook ignores CPU
    ops, so CPU layers must still take the one-token fast path (it used to switch it off on every
    GPU machine), mixed with GPU layers, with the same logits as the generic path."""
    from hetero_qwen.executor import cpu_decode
    from hetero_qwen.kernels import cpp
    if not cpp.available():
        pytest.skip("C++ kernels not built")
    _, path = hf_causal
    prof = {**profile("layers", "700KB"), "weights": {"gpu_dtype": "bf16", "cpu_dtype": "int8"}}
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    devs = {layer.mixer.decode_device for layer in eng.runner.layers}
    assert devs == {"gpu", "cpu"} and eng.runner.op_hook is not None and eng.runner.cpu_decode is not None

    def decode(fast: bool):
        keep = eng.runner.cpu_decode
        eng.runner.cpu_decode = keep if fast else None
        try:
            s = eng.session()
            s.feed(IDS[:30])
            return torch.stack([s.feed([t])[-1] for t in IDS[30:36]])
        finally:
            eng.runner.cpu_decode = keep
    calls = []
    runs = cpu_decode._Ffn.__call__
    monkeypatch.setattr(cpu_decode._Ffn, "__call__", lambda self, x: (calls.append(1), runs(self, x))[1])
    fast = decode(True)
    assert calls, "the fast path did not run"
    assert rel_err(fast, decode(False)) < 1e-4
