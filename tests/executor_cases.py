"""Profiles that make the executor run every kind of plan on the tiny causal model: shared by the
executor tests and the device-placement checks."""

IDS = [(11 * i + 5) % 300 + 1 for i in range(150)]
BASE = {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256, "weights": {"gpu_dtype": "bf16"},
        "prefill": {"chunk": 64}, "workload": {"prompt_tokens": 128, "output_tokens": 64}}


def profile(policy, vram="64MB", **extra):
    return {**BASE, "gpu": {"vram": vram, "reserve": "0MiB"}, "policy": policy, **extra}


# (label, profile): layers at several budgets, ffn-cpu with streamed prefill, auto on a machine
# whose CPU is slow (so it uses the GPU), auto with overrides, and RAM so small groups go to disk.
CASES = {
    "layers-700KB": profile("layers", "700KB"),
    "layers-1MB": profile("layers", "1MB"),
    "layers-all": profile("layers", "64MB"),
    "ffn-cpu": profile("ffn-cpu"),
    "ffn-cpu-streamed": profile("ffn-cpu", prefill={"chunk": 64, "stream": "on"}),
    "auto": profile("auto", "900KB", bandwidth={"cpu": "1GB/s", "gpu": "100GB/s", "pcie": "10GB/s"}),
    "auto-streamed": profile("auto", "900KB", bandwidth={"cpu": "1GB/s", "gpu": "100GB/s", "pcie": "10GB/s"},
                             prefill={"chunk": 64, "stream": "on"}),
    "overrides": profile("layers", "64MB", overrides=[{"match": r"layers\.[02]\.mlp", "home": "cpu"},
                                                      {"match": r"lm_head", "home": "cpu"}]),
    "disk": {**profile("auto", "700KB"), "cpu": {"ram": "400KB", "threads": 2, "reserve": "0MiB"}},
}
