"""Sampling: each knob does what it says, seeds reproduce, presets match the model card."""

import pytest
import torch

from hetero_qwen.sampling import PRESETS, Sampler, SamplingParams

V = 10


def draws(params, logits, n=400, prompt=()):
    s = Sampler(params, list(prompt), V)
    return [s(logits) for _ in range(n)]


def test_greedy_takes_the_argmax():
    logits = torch.tensor([0.0, 3.0, 2.9] + [0.0] * 7)
    assert set(draws(SamplingParams(), logits, 20)) == {1}


def test_top_k_top_p_and_min_p_cut_the_tail():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05] + [1e-9] * 5))
    assert set(draws(SamplingParams(temperature=1.0, top_k=2, seed=0), logits)) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.65, seed=0), logits)) == {0, 1}  # 0.4+0.3 >= 0.65
    assert set(draws(SamplingParams(temperature=1.0, min_p=0.4, seed=0), logits)) == {0, 1, 2}  # >= 0.16
    assert len(set(draws(SamplingParams(temperature=1.0, seed=0), logits))) >= 4


def test_seed_reproduces_and_differs():
    logits = torch.zeros(V)
    a = draws(SamplingParams(temperature=1.0, seed=7), logits, 50)
    assert a == draws(SamplingParams(temperature=1.0, seed=7), logits, 50)
    assert a != draws(SamplingParams(temperature=1.0, seed=8), logits, 50)


def test_presence_penalty_applies_to_generated_tokens_only():
    logits = torch.tensor([2.0, 1.0] + [-10.0] * 8)
    s = Sampler(SamplingParams(presence_penalty=1.5), prompt_ids=[1], vocab_size=V)
    assert s(logits) == 0          # the prompt's token 1 is not penalised by presence
    s.accept(0)
    assert s(logits) == 1          # 2.0 - 1.5 < 1.0


def test_repetition_penalty_covers_prompt_and_reply():
    logits = torch.tensor([2.0, 1.5] + [-10.0] * 8)
    s = Sampler(SamplingParams(repetition_penalty=2.0), prompt_ids=[0], vocab_size=V)
    assert s(logits) == 1          # 2.0 / 2 = 1.0 < 1.5
    neg = torch.tensor([-1.0, -1.5] + [-10.0] * 8)
    s = Sampler(SamplingParams(repetition_penalty=2.0), prompt_ids=[0], vocab_size=V)
    assert s(neg) == 1             # -1.0 * 2 = -2.0 < -1.5


def test_presets_follow_the_model_card():
    assert PRESETS["thinking-general"] == SamplingParams(temperature=1.0, top_p=0.95, top_k=20, presence_penalty=0.0)
    assert PRESETS["thinking-coding"] == SamplingParams(temperature=0.6, top_p=0.95, top_k=20)
    assert PRESETS["instruct"] == SamplingParams(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2),
                                 dict(repetition_penalty=0)])
def test_bad_values_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_generate_stops_at_eos_and_max_tokens(hf_causal):
    import hetero_qwen
    _, path = hf_causal
    eng = hetero_qwen.load(path, quiet=True)
    first = list(eng.generate([5, 6, 7], max_new_tokens=6))
    assert len(first) == 6
    stop = first[2]
    assert list(eng.generate([5, 6, 7], max_new_tokens=6, stop_ids=(stop,))) == first[:first.index(stop) + 1]


def test_generate_without_model_uses_the_tiny_model(tmp_path, monkeypatch, capsys):
    from helpers import run_cli
    monkeypatch.setenv("HETERO_QWEN_HOME", str(tmp_path))
    code, out, err = run_cli(["generate", "--prompt", "Hello", "-n", "4", "--seed", "1"], capsys)
    assert code == 0 and "embedded tiny model" in err and "random weights" in err
    assert (tmp_path / "tiny-random" / "model.safetensors").is_file()
