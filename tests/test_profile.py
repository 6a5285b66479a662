import pytest

from hetero_qwen.errors import ProfileError
from hetero_qwen.profile import DEFAULTS, load_profile
from hetero_qwen.units import parse_rate, parse_size


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * 2**30), ("16GB", 16 * 10**9), ("512 MiB", 512 * 2**20), ("1TB", 10**12),
    ("1.5GiB", int(1.5 * 2**30)), ("64KB", 64_000), ("8KiB", 8192), (1234, 1234), ("0", 0),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["24 gigs", "24G", "-1", "GiB", True, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_rates():
    assert parse_rate("70GB/s") == 70e9
    assert parse_rate("800 MB/s") == 800e6
    with pytest.raises(ValueError):
        parse_rate("70GB")


def test_full_profile(tmp_path):
    p = load_profile(write(tmp_path, """
gpu: {vram: 24GiB}
cpu: {ram: 64GiB, threads: 16}
context: 65536
policy: layers
weights: {gpu_dtype: bf16, cpu_dtype: int8}
bandwidth: {gpu: 1000GB/s, cpu: 70GB/s, pcie: 25GB/s}
hop_latency: 20us
overrides:
  - {match: 'layers\\.6[0-3]\\.mlp', home: gpu}
  - {match: embed_tokens, home: disk}
"""))
    assert (p.vram, p.ram, p.threads, p.context, p.policy) == (24 * 2**30, 64 * 2**30, 16, 65536, "layers")
    assert (p.cpu_dtype, p.bw_gpu, p.bw_cpu, p.bw_pcie) == ("int8", 1e12, 70e9, 25e9)
    assert p.hop_latency == pytest.approx(20e-6)
    assert p.home_override("model.language_model.layers.61.mlp") == "gpu"
    assert p.home_override("model.language_model.layers.59.mlp") is None
    assert p.home_override("model.language_model.embed_tokens") == "disk"
    assert p.overrides[0].line == 10


def test_defaults_and_empty(tmp_path):
    p = load_profile(write(tmp_path, "# nothing\n"))
    assert p.vram == 0 and not p.has_gpu
    assert p.ram == DEFAULTS.ram and p.policy == "auto" and p.disk_spill is True
    assert load_profile(None) == DEFAULTS


@pytest.mark.parametrize("text,needle", [
    ("gpu:\n  vram: 24 gigs\n", "p.yaml:2: gpu.vram: '24 gigs' is not a size (use a size, e.g. 24GiB"),
    ("gpu: {vram: 24GiB}\ncpu: {rma: 64GiB}\n", "p.yaml:2: cpu.rma: unknown key; did you mean 'ram'?"),
    ("contxt: 4096\n", "p.yaml:1: contxt: unknown key; did you mean 'context'?"),
    ("context: -3\n", "p.yaml:1: context: -3 is not a positive integer"),
    ("weights: {cpu_dtype: int3}\n", "p.yaml:1: weights.cpu_dtype: 'int3' is not allowed (use bf16 | int8 | int4 | fp32)"),
    ("bandwidth:\n  cpu: 70\n", "p.yaml:2: bandwidth.cpu: 70 is not a bandwidth (use a bandwidth, e.g. 70GB/s)"),
    ("overrides:\n  - {match: '(', home: gpu}\n", "p.yaml:2: overrides[0].match: '(' is not a valid regex"),
    ("overrides:\n  - {match: x, home: vram}\n", "p.yaml:2: overrides[0].home: 'vram' is not allowed"),
    ("overrides:\n  - {home: gpu}\n", "p.yaml:2: overrides[0]: missing 'match'"),
    ("cpu: {ram: 1GiB}\ncpu: {ram: 2GiB}\n", "p.yaml:2: cpu: duplicate key"),
    ("gpu: [1, 2]\n", "p.yaml:1: gpu: must be a mapping"),
    ("gpu: {vram: 24GiB\n", "p.yaml:2: not valid YAML"),
    ("gpu: {vram: 512MiB, reserve: 1GiB}\n", "gpu.reserve: the reserve"),
    ("cpu: {efficiency: 2}\n", "p.yaml:1: cpu.efficiency: 2 is not a share in (0, 1.5]"),
])
def test_errors_name_file_line_key(tmp_path, text, needle):
    with pytest.raises(ProfileError) as e:
        load_profile(write(tmp_path, text))
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_dict_profile_errors_have_no_line():
    with pytest.raises(ProfileError, match=r"^mine: gpu\.vram: 'lots' is not a size"):
        load_profile({"gpu": {"vram": "lots"}}, name="mine")


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "nope.yaml")


def test_efficiency_may_exceed_one(tmp_path):
    """The kernels out-read the plain-sum bandwidth the profile records (shares up to 1.5)."""
    assert load_profile(write(tmp_path, "cpu: {efficiency: 1.2}\n")).cpu_efficiency == 1.2
