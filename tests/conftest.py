import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# loads without an explicit profile use this CPU-only one instead of measuring the machine
os.environ.setdefault("HETERO_QWEN_PROFILE", str(Path(__file__).parent / "data" / "cpu-test.yaml"))
# A suite started in the background (`nohup`, `cmd &` in a script) inherits SIGINT ignored, and the
# Ctrl-C tests would then see nothing: give this process (and so the CLIs it spawns) Python's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from hf_models import make_hf_model, save_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def hf_causal(tmp_path_factory):
    """(HF model, saved dir): text-only Qwen3_5ForCausalLM, fp32, sharded."""
    m = make_hf_model("causal", seed=0)
    return m, save_hf_model(m, tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="session")
def hf_cond(tmp_path_factory):
    """(HF model, saved dir): Qwen3_5ForConditionalGeneration with a vision tower, fp32, sharded."""
    m = make_hf_model("cond", seed=1)
    return m, save_hf_model(m, tmp_path_factory.mktemp("cond"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from hetero_qwen.tiny import write_tiny
    return write_tiny(tmp_path_factory.mktemp("tiny") / "tiny")

