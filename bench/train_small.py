"""Train a small Qwen3.5-shaped model, MTP layer included, to measure what random weights cannot
(MTP acceptance, decode speed with MTP on and off, perplexity per weight format).

    PYTHONPATH=. python bench/train_small.py [--steps 600] [--out DIR] [--threads 2] [--seed 0]

Text: the Python standard library's own sources (on every machine, no download), files split
train / held-out by a hash of their path. Tokenizer: byte-level BPE trained with `tokenizers`
(Qwen's pre-tokenizer regex and special tokens, our chat template). Model: ~25M parameters,
DeltaNet and gated attention in the 3:1 pattern (transformers' Qwen3_5ForCausalLM), plus an MTP
layer trained jointly on the next-next token: mtp(h_p, x_{p+1}) -> x_{p+2}, h_p after the final
norm, as hetero_qwen/model/mtp.py runs it. Deterministic from --seed. Saved as a normal HF
checkpoint (save_pretrained; transformers loads it and ignores mtp.*) plus the `mtp.*` tensors in
a shard of their own, under the user cache (never committed, never run by CI). Prints the
held-out perplexity of the model and the MTP layer's held-out next-next-token accuracy.
Run it on a quiet machine, not a shared one: transformers' DeltaNet falls back to its reference
PyTorch path without flash-linear-attention, and on a loaded 2-core machine one step of 2 x 256
tokens took over a minute; --steps and --batch size the run to the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VOCAB = 8192
SEQ = 256


def corpus(max_bytes: int) -> tuple[list[str], list[str]]:
    """(train, held-out) texts: stdlib .py files in path order, 1 in 20 held out by path hash."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held, total = [], [], 0
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts or "tests" in p.parts:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        bucket = int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20
        (held if bucket == 0 else train).append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return train, held


def train_tokenizer(texts: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from hetero_qwen.special_tokens import QWEN_SPECIAL_TOKENS
    from hetero_qwen.tiny_tokenizer import _pre_tokenizer
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(QWEN_SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in QWEN_SPECIAL_TOKENS])
    return tok


def save_tokenizer(tok, out: Path) -> dict[str, int]:
    from hetero_qwen.chat_template import our_chat_template
    from hetero_qwen.special_tokens import ENDOFTEXT, IM_END
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": IM_END, "pad_token": ENDOFTEXT,
        "bos_token": None, "unk_token": None, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "split_special_tokens": False, "model_max_length": 262144, "chat_template": our_chat_template()}, indent=2))
    return {"eos": tok.token_to_id(IM_END), "endoftext": tok.token_to_id(ENDOFTEXT)}


def model_config(eos: int, bos: int):
    from transformers import Qwen3_5TextConfig
    layer_types = ["linear_attention"] * 3 + ["full_attention"]
    return Qwen3_5TextConfig(
        vocab_size=VOCAB, hidden_size=384, intermediate_size=1152, num_hidden_layers=8, layer_types=layer_types * 2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=64,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=48, linear_value_head_dim=48,
        linear_conv_kernel_dim=4, max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False,
        eos_token_id=eos, bos_token_id=bos, dtype="float32")


class MtpModule(torch.nn.Module):
    """The MTP layer for training: fc(concat(norm_e(e), norm_h(h))) -> a gated full-attention decoder
    layer -> norm; parameter names as the checkpoint's `mtp.*` (under `mtp.`)."""

    def __init__(self, cfg, full_layer_idx: int):
        super().__init__()
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm
        H = cfg.hidden_size
        self.fc = torch.nn.Linear(2 * H, H, bias=False)
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(H, eps=cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(H, eps=cfg.rms_norm_eps)
        self.layers = torch.nn.ModuleList([Qwen3_5DecoderLayer(cfg, full_layer_idx)])
        self.norm = Qwen3_5RMSNorm(H, eps=cfg.rms_norm_eps)

    def forward(self, emb, hidden, position_embeddings):
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(emb), self.pre_fc_norm_hidden(hidden)], dim=-1))
        x = self.layers[0](x, position_embeddings=position_embeddings)
        return self.norm(x[0] if isinstance(x, tuple) else x)


def losses(model, mtp, ids, mtp_pre=None):
    """(next-token loss, MTP next-next-token loss, MTP output, main hidden, pre-norm MTP loss,
    its output) on ids [B, T]. `mtp_pre` (optional) is a second MTP layer fed the hidden state
    before the final norm, trained alongside to decide which one the runtime feeds."""
    seen = {}
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: seen.__setitem__("pre", inp[0]))
    try:
        out = model.model(input_ids=ids)
    finally:
        hook.remove()
    h = out.last_hidden_state                                   # after the final norm
    main = F.cross_entropy(model.lm_head(h[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    pos = torch.arange(ids.shape[1] - 1, device=ids.device)[None]
    pe = model.model.rotary_emb(h, pos)
    emb = model.model.embed_tokens(ids[:, 1:])                 # x_{p+1} with h_p at position p
    m = mtp(emb, h[:, :-1], pe)
    extra = F.cross_entropy(model.lm_head(m[:, :-1]).flatten(0, 1), ids[:, 2:].flatten())
    extra_pre, m_pre = torch.zeros(()), None
    if mtp_pre is not None:
        m_pre = mtp_pre(emb, seen["pre"][:, :-1], pe)
        extra_pre = F.cross_entropy(model.lm_head(m_pre[:, :-1]).flatten(0, 1), ids[:, 2:].flatten())
    return main, extra, m, h, extra_pre, m_pre


def batches(tokens: torch.Tensor, batch: int, g: torch.Generator):
    while True:
        starts = torch.randint(0, tokens.numel() - SEQ - 1, (batch,), generator=g)
        yield torch.stack([tokens[s:s + SEQ] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, mtp, tokens: torch.Tensor, windows: int = 32, mtp_pre=None) -> dict:
    """Over fixed held-out windows: perplexity, the MTP layer's next-next-token top-1 accuracy, and
    its agreement with the main model's own greedy choice one position later (the greedy
    acceptance of a 1-token draft, teacher-forced), for the post-norm and pre-norm variants."""
    mods = [m for m in (model, mtp, mtp_pre) if m is not None]
    for m in mods:
        m.eval()
    nll, n = 0.0, 0
    acc = {"post": 0.0, "pre": 0.0}
    agree = {"post": 0.0, "pre": 0.0}
    step = max(1, (tokens.numel() - SEQ - 1) // windows)
    for s in range(0, step * windows, step):
        ids = tokens[s:s + SEQ][None]
        main, _, m, h, _, m_pre = losses(model, mtp, ids, mtp_pre)
        nll += float(main)
        greedy_next = model.lm_head(h[:, 1:-1]).argmax(-1)      # main model's choice for x_{p+2}
        for key, out in (("post", m), ("pre", m_pre)):
            if out is None:
                continue
            draft = model.lm_head(out[:, :-1]).argmax(-1)
            acc[key] += float((draft == ids[:, 2:]).float().mean())
            agree[key] += float((draft == greedy_next).float().mean())
        n += 1
    for m in mods:
        m.train()
    out = {"heldout_perplexity": math.exp(nll / n), "mtp_accuracy": acc["post"] / n,
           "mtp_greedy_agreement": agree["post"] / n}
    if mtp_pre is not None:
        out.update(mtp_pre_norm_accuracy=acc["pre"] / n, mtp_pre_norm_greedy_agreement=agree["pre"] / n)
    return out


def save(model, mtp, out: Path, ids: dict) -> None:
    from safetensors.torch import save_file
    model.save_pretrained(out)
    mtp_tensors = {f"mtp.{k}": v.detach().contiguous() for k, v in mtp.state_dict().items()}
    save_file(mtp_tensors, str(out / "model-mtp.safetensors"), metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
    else:
        from safetensors import safe_open
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            meta = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in f.keys()}}
    meta["weight_map"].update({k: "model-mtp.safetensors" for k in mtp_tensors})
    index.write_text(json.dumps(meta, indent=2))
    cfg = json.loads((out / "config.json").read_text())
    cfg["mtp_num_hidden_layers"] = 1
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids["eos"], ids["endoftext"]]}))


def main(argv=None) -> int:
    from hetero_qwen.tiny import default_tiny_dir
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mtp-weight", type=float, default=0.3, help="weight of the MTP loss")
    ap.add_argument("--corpus-mb", type=float, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pre-norm-twin", action="store_true",
                    help="skip training a second MTP layer on the pre-norm hidden state (the comparison)")
    ap.add_argument("--eval-windows", type=int, default=32, help="held-out windows of 256 tokens")
    ap.add_argument("--out", type=Path, default=default_tiny_dir().parent / "small-trained")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    train_texts, held_texts = corpus(int(a.corpus_mb * 2**20))
    tok = train_tokenizer(train_texts)
    a.out.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(tok, a.out)
    sep = [ids["endoftext"]]
    encode = lambda texts: torch.tensor([t for x in tok.encode_batch(texts) for t in x.ids + sep])  # noqa: E731
    train, held = encode(train_texts), encode(held_texts)
    if held.numel() < SEQ + 2:
        raise SystemExit("error: the held-out text is shorter than one window: raise --corpus-mb")
    print(f"corpus: {train.numel()} train / {held.numel()} held-out tokens ({time.time() - t0:.0f}s)", flush=True)

    from transformers import Qwen3_5ForCausalLM
    cfg = model_config(ids["eos"], ids["endoftext"])
    model = Qwen3_5ForCausalLM(cfg)
    mtp = MtpModule(cfg, full_layer_idx=cfg.layer_types.index("full_attention"))
    mtp_pre = None if a.no_pre_norm_twin else MtpModule(cfg, full_layer_idx=cfg.layer_types.index("full_attention"))
    params = list(model.parameters()) + list(mtp.parameters())
    n_params = sum(p.numel() for p in params)
    if mtp_pre is not None:
        params += list(mtp_pre.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters (MTP {sum(p.numel() for p in mtp.parameters()) / 1e6:.1f}M)",
          flush=True)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    g = torch.Generator().manual_seed(a.seed)
    data = batches(train, a.batch, g)
    for step in range(a.steps):
        main, extra, _, _, extra_pre, _ = losses(model, mtp, next(data), mtp_pre)
        loss = main + a.mtp_weight * (extra + extra_pre)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {main.item():.3f}, mtp {extra.item():.3f}, pre-norm mtp "
                  f"{extra_pre.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    save(model, mtp, a.out, ids)
    if mtp_pre is not None:  # kept beside the checkpoint (not loaded by it) for the comparison
        from safetensors.torch import save_file
        save_file({f"mtp.{k}": v.detach().contiguous() for k, v in mtp_pre.state_dict().items()},
                  str(a.out / "mtp-pre-norm.safetensors.twin"), metadata={"format": "pt"})
    result = evaluate(model, mtp, held, a.eval_windows, mtp_pre)
    print("held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    (a.out / "train_small.json").write_text(json.dumps(dict(
        steps=a.steps, seed=a.seed, params=n_params, **result, seconds=round(time.time() - t0, 1)), indent=2))
    print(f"saved to {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
