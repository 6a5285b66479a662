"""What the devices count: GPU busy time (CUDA events on a real GPU), logits moved to the host,
and the probe's report of a GPU it could not measure."""

from __future__ import annotations

import pytest
import torch

import hetero_qwen
from hetero_qwen.executor.devices import Device, make_devices
from executor_cases import IDS, profile


class FakeEvent:
    """torch.cuda.Event stand-in: each recorded pair spans 2.5 ms."""
    clock = 0.0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        FakeEvent.clock += 2.5
        self.t = FakeEvent.clock

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return end.t - self.t


def test_busy_time_on_a_real_gpu_comes_from_cuda_events(monkeypatch):
    """Launches return at once on CUDA: busy time is the span between events around each op."""
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    gpu = Device("gpu", "cuda:0", 1 << 30)
    for _ in range(4):
        with gpu.busy():
            pass
    assert gpu.busy_seconds == pytest.approx(4 * 2.5e-3)
    gpu.busy_seconds += 1.0  # the engine's stats add and read it back
    assert gpu.busy_seconds == pytest.approx(1.01)
    cpu = Device("cpu", "cpu", None)
    with cpu.busy():
        sum(range(1000))
    assert cpu.busy_seconds > 0  # perf_counter on the CPU: it ran (no bound on how long)


def test_logits_are_moved_to_the_host_in_the_compute_dtype_and_counted(hf_causal):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=profile("layers"), quiet=True, dtype="bf16")
    assert eng.runner.head.decode_device == "gpu"
    got = eng.logits(IDS[:100])
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert eng.devices.traffic.logits == got.numel() * 2  # bf16 bytes of every logits row


def test_logits_to_host_makes_no_fp32_copy_on_the_gpu():
    devs = make_devices(1 << 20, None, simulate_gpu=True)
    moved = []

    class OnGpu(torch.Tensor):  # records the dtype each .to() sees: the move must come before .float()
        def to(self, *a, **k):
            moved.append(self.dtype)
            return torch.Tensor.to(self.as_subclass(torch.Tensor), *a, **k)
    x = torch.zeros(3, 8, dtype=torch.bfloat16).as_subclass(OnGpu)
    out = devs.logits_to_host(x, devs.gpu)
    assert moved == [torch.bfloat16] and out.dtype == torch.float32
    assert devs.traffic.logits == 3 * 8 * 2 and devs.traffic.d2h == 0


def test_probe_reports_a_cuda_error_in_one_line(monkeypatch, capsys):
    from hetero_qwen import probe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def broken(*a, **k):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")
    monkeypatch.setattr(torch.cuda, "mem_get_info", broken)
    assert probe.measure_gpu() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the GPU was not measured (RuntimeError: CUDA error: no kernel")


def test_probe_does_not_swallow_a_bug(monkeypatch):
    from hetero_qwen import probe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        probe.measure_gpu()
