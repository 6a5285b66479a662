"""MTP speculative decoding: the MTP layer against a plain reference, rollback by state slots, the
speculative decode loop against plain decoding, and the acceptance rule's distribution."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from mtp_fixtures import add_mtp
from mtp_reference import reference_mtp

import hetero_qwen
from hetero_qwen.checkpoint import Checkpoint
from hetero_qwen.config import load_config
from hetero_qwen.errors import CheckpointError, InputError

PROMPT = [(13 * i + 7) % 300 + 1 for i in range(24)]
# mtp.draft_tokens fixed: these tests need the layer loaded whatever the plan would predict for it
PROFILE = {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256, "mtp": {"draft_tokens": 2}}


@pytest.fixture(scope="module")
def mtp_ckpt(hf_causal, tmp_path_factory):
    """(HF model, dir): the tiny causal checkpoint with random mtp.* tensors added."""
    model, path = hf_causal
    return model, add_mtp(path, tmp_path_factory.mktemp("mtp") / "ckpt")


def load(path, dtype="fp32", **profile):
    return hetero_qwen.load(path, dtype=dtype, quiet=True, profile={**PROFILE, **profile})


def test_mtp_groups_of_the_27b_shape():
    cfg = load_config("qwen3.6-27b")
    groups = cfg.mtp_weight_groups()
    assert [g.name for g in groups] == ["mtp", "mtp.layers.0.self_attn", "mtp.layers.0.mlp"]
    assert dict(groups[0].matrices)["fc.weight"] == (5120, 10240)
    assert 424e6 < sum(g.params for g in groups) < 426e6  # ~0.85 GB in bf16
    assert not load_config("qwen3.6-27b").weight_groups()[-1].name.startswith("mtp")


def test_checkpoint_without_mtp_loads_with_mtp_off(hf_causal, tmp_path, capsys):
    _, path = hf_causal
    eng = hetero_qwen.load(path, dtype="fp32", profile=PROFILE)
    assert eng.mtp is None and eng.speculation(None, None) == 0
    with pytest.raises(InputError, match="no MTP layer"):
        list(eng.generate(PROMPT, max_new_tokens=2, mtp=True))
    # config.json declares an MTP layer but the tensors are gone (as quantizers often leave them)
    import json
    import shutil
    shutil.copytree(path, tmp_path / "c")
    raw = json.loads((tmp_path / "c" / "config.json").read_text())
    raw["mtp_num_hidden_layers"] = 1
    (tmp_path / "c" / "config.json").write_text(json.dumps(raw))
    capsys.readouterr()
    eng = hetero_qwen.load(tmp_path / "c", dtype="fp32", profile=PROFILE)
    err = capsys.readouterr().err
    assert eng.mtp is None
    assert [ln for ln in err.splitlines() if "MTP" in ln] == [
        "MTP speculative decoding is off: the checkpoint has no mtp.fc.weight"]
    with pytest.raises(CheckpointError, match="cannot use MTP"):
        hetero_qwen.load(tmp_path / "c", dtype="fp32", profile=PROFILE, quiet=True, mtp=True)


@pytest.mark.parametrize("one_by_one", [0, 6])
def test_mtp_layer_equals_reference(mtp_ckpt, one_by_one):
    """Draft logits after a prompt (the pairs (h_p, x_{p+1}) the session pushed, h from the HF model
    after its final norm) and a second draft on the layer's own output, against the reference.
    `one_by_one`: the prompt's last tokens fed singly, so their pairs wait and run in the draft's
    first forward (MtpState.pending)."""
    model, path = mtp_ckpt
    eng = load(path)
    ckpt = Checkpoint(path, eng.cfg)
    t = {n: ckpt.get(n).float() for n in ckpt.names("mtp.")}
    embed, head = ckpt.get("model.embed_tokens.weight").float(), ckpt.get("lm_head.weight").float()
    s = eng.session()
    cut = len(PROMPT) - one_by_one
    s.feed(PROMPT[:cut])
    for x in PROMPT[cut:]:
        s.feed([x])
    assert len(s.mtp.pending[1] if s.mtp.pending else []) == one_by_one
    token = 77
    seen = []
    drafts, _ = s.draft(token, 2, lambda lg: (seen.append(lg) or int(lg.argmax()), None))
    assert len(drafts) == 2 and len(seen) == 2
    with torch.no_grad():
        h = model.model(torch.tensor([PROMPT])).last_hidden_state[0].float()
    n = len(PROMPT)
    out, logits, kv = reference_mtp(t, eng.cfg, embed, head, PROMPT[1:] + [token], h, list(range(n)))
    assert rel_err(seen[0], logits[-1]) < 1e-4
    _, logits2, _ = reference_mtp(t, eng.cfg, embed, head, [drafts[0]], out[-1:], [n], past_kv=kv)
    assert rel_err(seen[1], logits2[-1]) < 1e-4
    assert drafts == [int(logits[-1].argmax()), int(logits2[-1].argmax())]


def _cache_state(session):
    out = []
    for c in session.caches:
        if hasattr(c, "keep_slots"):
            out.append(("state", c.conv.clone(), c.state.clone()))
        else:
            out.append(("kv", c.length, c.k[:, :, :c.length].clone(), c.v[:, :, :c.length].clone()))
    return out


def _assert_caches_equal(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0]
        if x[0] == "kv":
            assert x[1] == y[1]
            assert (x[2] - y[2]).abs().max() <= tol and (x[3] - y[3]).abs().max() <= tol
        else:
            assert (x[1] - y[1]).abs().max() <= tol
            assert (x[2] - y[2]).abs().max() <= tol * max(1.0, float(y[2].abs().max()))


@pytest.mark.parametrize("keep", [1, 2, 3, 5])
def test_rollback_equals_feeding_only_the_kept_tokens(mtp_ckpt, keep):
    """Verify 5 tokens, keep the first `keep`: every KV cache and DeltaNet state equals a session
    that was only ever fed those tokens, and so does the next step's logits."""
    _, path = mtp_ckpt
    eng = load(path)
    follow = [11, 250, 37, 99, 5]
    a, b = eng.session(), eng.session()
    a.feed(PROMPT)
    b.feed(PROMPT)
    a.verify(follow)
    a.commit(keep)
    for t in follow[:keep]:
        b.feed([t])
    assert a.tokens == b.tokens
    _assert_caches_equal(_cache_state(a), _cache_state(b))
    assert a.mtp.entries() == b.mtp.entries() and a.mtp.last[0] == b.mtp.last[0]
    assert rel_err(a.feed([42])[-1], b.feed([42])[-1]) < 1e-5


# ---- the speculative decode loop ---------------------------------------------------------------

class OracleDrafts:
    """Drafts from a known continuation with every third draft wrong, over a real session: drives
    SpeculativeGeneration through full accepts, partial accepts and rejects (random MTP weights
    accept almost nothing)."""

    def __init__(self, session, start: int, future: list[int]):
        self.session, self.start, self.future = session, start, future
        self.verify, self.commit = session.verify, session.commit
        self.calls = 0

    def draft(self, token, k, pick):
        at = len(self.session.tokens) - self.start + 1  # index in `future` of the token after `token`
        out = []
        for i in range(k):
            self.calls += 1
            t = self.future[at + i] if at + i < len(self.future) else 3
            out.append((t + 1) % 300 if self.calls % 3 == 0 else t)
        return out, [None] * len(out)


def oracle_generate(eng, ids, n, k, future):
    from hetero_qwen.decode import SpeculativeGeneration
    from hetero_qwen.sampling import Sampler, SamplingParams
    s = eng.session()
    logits = s.feed(ids)[-1]
    spec = OracleDrafts(s, len(ids), future)
    gen = SpeculativeGeneration(lambda t: s.feed(t)[-1], lambda: len(s.tokens), eng.context, logits,
                                Sampler(SamplingParams(), ids, eng.cfg.vocab_size), eng.eos_ids, n,
                                spec=spec, draft_tokens=k)
    out = list(gen)
    return out, gen, s


CASES_K = [1, 2, 3, 4]


def _check_greedy(eng, n=20):
    ref = list(eng.generate(PROMPT, max_new_tokens=n, mtp=False))
    assert len(ref) == n
    for k in CASES_K:
        assert list(eng.generate(PROMPT, max_new_tokens=n, mtp=True, draft_tokens=k)) == ref, f"MTP k={k}"
        out, gen, _ = oracle_generate(eng, PROMPT, n, k, ref)
        assert out == ref, f"oracle drafts k={k}"
        assert gen.drafts_accepted > 0 and gen.drafts_accepted < gen.drafts_proposed


def test_greedy_equals_plain_decoding_for_every_policy(mtp_ckpt):
    from executor_cases import CASES
    _, path = mtp_ckpt
    for label, profile in CASES.items():  # --mtp: on even where the plan predicts no gain
        if label == "disk":  # RAM too small for the model: no room for the MTP layer either
            assert hetero_qwen.load(path, dtype="fp32", quiet=True, profile=profile, simulate_gpu=True).mtp is None
            with pytest.raises(hetero_qwen.errors.ConfigError, match="cannot use MTP: its weights"):
                hetero_qwen.load(path, dtype="fp32", quiet=True, profile=profile, simulate_gpu=True, mtp=True)
            continue
        eng = hetero_qwen.load(path, dtype="fp32", quiet=True, profile=profile, simulate_gpu=True, mtp=True)
        assert eng.mtp is not None, label
        _check_greedy(eng)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_greedy_equals_plain_decoding_for_cpu_formats(mtp_ckpt, fmt, dtype):
    """Our CPU kernels in each format: the verify forward (k + 1 tokens) and plain decoding take the
    same CPU fast path, whose rows equal one-token forwards bit for bit (tests/test_cpu_verify_path.py),
    so bf16 compute picks the same tokens as fp32 does, not merely on this checkpoint."""
    _, path = mtp_ckpt
    _check_greedy(load(path, dtype=dtype, weights={"gpu_dtype": "bf16", "cpu_dtype": fmt}))


@pytest.mark.parametrize("fmt", ["float", "int8"])  # the generic MTP forward; the C++ fast path
def test_trimmed_draft_vocabulary(mtp_ckpt, fmt):
    """mtp.draft_vocab: drafts pick among the first ids only (the head's first rows, a view), the
    rest of a draft's logits is -inf, and greedy output still equals plain decoding."""
    _, path = mtp_ckpt
    weights = {} if fmt == "float" else {"weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}}
    full = load(path, **weights)
    eng = load(path, mtp={"draft_tokens": 2, "draft_vocab": 256}, **weights)
    assert eng.plan.mtp.draft_vocab == 256 and eng.mtp.draft_vocab == 256
    assert (eng.mtp.cpu_path is not None) == (fmt != "float") and eng.mtp.draft_head is not None
    seen = {}
    for name, e in (("full", full), ("trimmed", eng)):
        s = e.session()
        s.feed(PROMPT)
        seen[name] = []
        s.draft(77, 2, lambda lg, out=seen[name]: (out.append(lg) or int(lg.argmax()), None))
    for lg in seen["trimmed"]:
        assert lg.shape == (eng.cfg.vocab_size,) and torch.isneginf(lg[256:]).all()
    assert rel_err(seen["trimmed"][0][:256], seen["full"][0][:256]) < 1e-5
    _check_greedy(eng)


def test_caches_after_speculative_decode_equal_plain_decode(mtp_ckpt):
    """After a reply with drafts accepted and rejected, the session equals one that never drafted."""
    _, path = mtp_ckpt
    eng = load(path)
    plain = eng.session()
    ref = list(eng.generate(PROMPT, max_new_tokens=16, mtp=False, session=plain))
    out, _, spec = oracle_generate(eng, PROMPT, 16, 3, ref)
    assert out == ref and spec.tokens == plain.tokens
    _assert_caches_equal(_cache_state(spec), _cache_state(plain))


def test_stats_and_seed(mtp_ckpt):
    _, path = mtp_ckpt
    eng = load(path)
    greedy_seeded = list(eng.generate(PROMPT, max_new_tokens=12, seed=5, mtp=False))
    assert list(eng.generate(PROMPT, max_new_tokens=12, seed=5, mtp=True, draft_tokens=3)) == greedy_seeded
    stats = eng.stats.as_dict()
    assert stats["draft_tokens_proposed"] > 0 and 0 <= stats["draft_tokens_accepted"] <= stats["draft_tokens_proposed"]
    assert stats["mean_accepted_length"] >= 1.0 and stats["decode_tokens"] == 11
    # sampled: the same seed gives the same reply with MTP on
    a = list(eng.generate(PROMPT, max_new_tokens=12, temperature=0.8, seed=3, draft_tokens=2))
    assert a == list(eng.generate(PROMPT, max_new_tokens=12, temperature=0.8, seed=3, draft_tokens=2))
    assert "draft_tokens_proposed" not in (list(eng.generate(PROMPT, max_new_tokens=2, mtp=False))
                                           and eng.stats.as_dict())


# ---- the acceptance rule keeps the distribution --------------------------------------------------

def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    expected = probs * n
    keep = expected > 0
    assert counts[~keep].sum() == 0  # nothing where the target has no mass
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_accept_draft_samples_the_target_distribution():
    """d ~ q, then accept or resample: the result is distributed as p (chi-square, 5 degrees of
    freedom, bound at the 0.999 quantile 20.5), including a q that puts mass where p has none."""
    from hetero_qwen.speculative import accept_draft
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10, 0.0])
    q = torch.tensor([0.05, 0.40, 0.05, 0.20, 0.10, 0.20])
    counts = torch.zeros(6)
    n = 20000
    drafts = torch.multinomial(q, n, replacement=True, generator=g)
    rejected = 0
    for d in drafts.tolist():
        r = accept_draft(p, q, d, g)
        rejected += r is not None
        counts[d if r is None else r] += 1
    assert _chi2(counts, p) < 20.5
    # the acceptance rate is sum(min(p, q)) = 0.55
    assert abs(1 - rejected / n - float(torch.minimum(p, q).sum())) < 0.02
    assert all(accept_draft(p, p, d, g) is None for d in range(5))  # q == p: always accepted


class MarkovSpec:
    """A fake model for SpeculativeGeneration: the target's next-token logits depend on the last
    token only (table P), drafts come from another table Q."""

    def __init__(self, P, Q):
        self.P, self.Q, self.tokens = P, Q, []

    def draft(self, token, k, pick):
        out, qs, t = [], [], token
        for _ in range(k):
            t, q = pick(self.Q[t])
            out.append(t)
            qs.append(q)
        return out, qs

    def verify(self, ids):
        self.pending = ids
        return torch.stack([self.P[t] for t in ids])

    def commit(self, m):
        self.tokens += self.pending[:m]


@pytest.mark.parametrize("trimmed", [False, True])
def test_speculative_generation_keeps_the_joint_distribution(trimmed):
    """The first three tokens sampled with k = 2 drafts from a poor draft table: their joint distribution is the
    target chain's (64 cells, chi-square bound at the 0.999 quantile of 63 degrees of freedom, 103.4),
    over accepts, rejects with resampling and bonus tokens. `trimmed`: drafts never propose the last
    id (logits -inf, as with mtp.draft_vocab), which the target must still produce."""
    from hetero_qwen.decode import SpeculativeGeneration
    from hetero_qwen.sampling import Sampler, SamplingParams
    g = torch.Generator().manual_seed(1)
    V = 4
    P = torch.randn(V, V, generator=g) * 1.2
    Q = torch.randn(V, V, generator=g) * 1.2
    if trimmed:
        Q[:, V - 1] = float("-inf")
    first = torch.randn(V, generator=g)
    counts = torch.zeros(V, V, V)
    proposed = accepted = 0
    for seed in range(5000):
        spec = MarkovSpec(P, Q)
        gen = SpeculativeGeneration(lambda t: None, lambda: len(spec.tokens), 1000, first,
                                    Sampler(SamplingParams(temperature=1.0, seed=seed), [], V), (), 4,
                                    spec=spec, draft_tokens=2)
        a, b, c, _ = list(gen)  # 4 tokens: the step after the first drafts k = 2
        counts[a, b, c] += 1
        proposed, accepted = proposed + gen.drafts_proposed, accepted + gen.drafts_accepted
    sm = lambda x: torch.softmax(x, -1)  # noqa: E731
    joint = sm(first)[:, None, None] * sm(P)[:, :, None] * sm(P)[None, :, :]
    assert _chi2(counts.flatten(), joint.flatten()) < 103.4
    assert 0 < accepted < proposed  # both paths taken


# ---- interfaces ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mtp(tiny_dir, tmp_path_factory):
    """The embedded tiny model (tokenizer and chat template included) with mtp.* tensors."""
    return add_mtp(tiny_dir, tmp_path_factory.mktemp("tiny-mtp") / "tiny")


def test_generate_cli_mtp_flags(tiny_mtp, capsys):
    import json
    from helpers import run_cli
    base = ["generate", "--model", tiny_mtp, "--prompt-ids", ",".join(map(str, PROMPT[:12])), "-n", "10", "--json"]
    code, out, err = run_cli(base + ["--no-mtp"], capsys)
    assert code == 0, err
    plain = json.loads(out)
    assert "draft_tokens_proposed" not in plain["stats"]
    code, out, err = run_cli(base + ["--mtp", "--draft-tokens", "3", "--stats"], capsys)
    assert code == 0, err
    spec = json.loads(out)
    assert spec["ids"] == plain["ids"]
    st = spec["stats"]
    assert st["draft_tokens_proposed"] > 0 and st["mean_accepted_length"] >= 1.0
    assert "MTP: " in err and "drafts accepted" in err

def test_generate_cli_default_follows_the_profiles_mtp_key(tiny_mtp, tmp_path, capsys):
    """Without --mtp/--draft-tokens the plan's k decides: the profile's `mtp.draft_tokens` fixes it."""
    import json
    from helpers import run_cli
    base = ["generate", "--model", tiny_mtp, "--prompt-ids", ",".join(map(str, PROMPT[:12])), "-n", "10", "--json"]
    ran = {}
    for k in (2, 0):
        prof = tmp_path / f"k{k}.yaml"
        prof.write_text(f"cpu: {{ram: 1GiB, threads: 2, reserve: 0MiB}}\ncontext: 256\nmtp: {{draft_tokens: {k}}}\n")
        code, out, err = run_cli(base + ["--profile", str(prof)], capsys)
        assert code == 0, err
        ran[k] = json.loads(out)
    assert ran[2]["ids"] == ran[0]["ids"]
    assert ran[2]["stats"]["draft_tokens_proposed"] > 0
    assert "draft_tokens_proposed" not in ran[0]["stats"]


def test_generate_cli_mtp_without_the_layer_is_one_line(tiny_dir, capsys):
    from helpers import run_cli
    code, out, err = run_cli(["generate", "--model", tiny_dir, "--prompt-ids", "1,2,3", "-n", "2", "--mtp"], capsys)
    assert code == 2
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: {tiny_dir}: cannot use MTP: config.json declares no MTP layer (mtp_num_hidden_layers)"]


def test_chat_uses_mtp_and_reports_it(tiny_mtp):
    """A greedy chat reply is the same with MTP on and off; /stats reports the drafts."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def chat(*flags):
        r = subprocess.run([sys.executable, "-m", "hetero_qwen", "chat", "--model", str(tiny_mtp), "--no-think",
                            "--preset", "greedy", "--max-new-tokens", "8", *flags],
                           input="hello there\n/stats\n", capture_output=True, text=True, env=env, cwd=str(root),
                           timeout=300)
        assert r.returncode == 0, r.stderr
        return r
    on, off = chat("--mtp", "--draft-tokens", "2"), chat("--no-mtp")
    assert on.stdout == off.stdout
    assert "draft_tokens_proposed" in on.stderr and "draft_tokens_proposed" not in off.stderr
