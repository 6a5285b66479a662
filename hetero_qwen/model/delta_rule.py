"""The gated delta rule, per value head, with fp32 state S [Dk, Dv]:

    S_t = exp(g_t) S_{t-1};  u_t = beta_t (v_t - S_t^T k_t);  S_t += k_t u_t^T;  o_t = S_t^T q_t

`recurrent_gated_delta_rule` runs it token by token (decode); `chunked_gated_delta_rule` computes
the same thing C tokens at a time (prefill): inside a chunk, with cumulative log-decay G and
A[t,j] = beta_t exp(G_t-G_j) k_t.k_j (j<t), the written values solve the unit-lower-triangular
system (I + A) U = beta V - beta exp(G) K S0, so a chunk costs a few matmuls instead of C steps.
All inputs are already head-expanded: q, k [B, H, T, Dk] (q pre-scaled), v [B, H, T, Dv],
g, beta [B, H, T]; state [B, H, Dk, Dv]. Everything is computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64


def recurrent_gated_delta_rule(q, k, v, g, beta, state):
    """Token-by-token reference. Returns (o [B,H,T,Dv], new state). `state` is not modified."""
    S = state.clone()
    out = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    for t in range(q.shape[2]):
        S = S * g[:, :, t].exp()[..., None, None]
        kv = torch.einsum("bhkv,bhk->bhv", S, k[:, :, t])
        u = (v[:, :, t] - kv) * beta[:, :, t, None]
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        out[:, :, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, :, t])
    return out, S


def recurrent_gated_delta_rule_states(q, k, v, g, beta, state):
    """The token-by-token rule keeping the state after every position (a speculative verify of a
    few tokens): returns (o [B,H,T,Dv], states [T,B,H,Dk,Dv]); `state` is not modified."""
    S = state.to(torch.float32)
    T = q.shape[2]
    out = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    states = torch.empty((T, *S.shape), dtype=torch.float32, device=v.device)
    for t in range(T):
        S = S * g[:, :, t].exp()[..., None, None]
        kv = torch.einsum("bhkv,bhk->bhv", S, k[:, :, t])
        u = (v[:, :, t] - kv) * beta[:, :, t, None]
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        out[:, :, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, :, t])
        states[t] = S
    return out, states


def chunked_gated_delta_rule(q, k, v, g, beta, state, chunk: int = CHUNK):
    """Chunked form for prefill; equal to `recurrent_gated_delta_rule` up to fp32 rounding."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    pad = (-T) % chunk
    if pad:  # zero-padded tokens have beta = 0 and g = 0: they change nothing
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (T + pad) // chunk
    q, k, v = (x.reshape(B, H, n, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = (x.reshape(B, H, n, chunk) for x in (g, beta))

    G = g.cumsum(-1)                                   # [B,H,n,C] log decay from chunk start
    decay = (G[..., :, None] - G[..., None, :])        # [B,H,n,C,C] log decay j -> t
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    decay = decay.masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    A = (k_beta @ k.transpose(-1, -2)) * decay          # diagonal ignored by the unitriangular solve
    lhs = A.tril(-1) + torch.eye(chunk, dtype=A.dtype, device=A.device)
    w_v = torch.linalg.solve_triangular(lhs, v * beta[..., None], upper=False, unitriangular=True)
    w_k = torch.linalg.solve_triangular(lhs, k_beta * G.exp()[..., None], upper=False, unitriangular=True)
    qk = (q @ k.transpose(-1, -2)) * decay              # [B,H,n,C,C] intra-chunk scores
    q_dec = q * G.exp()[..., None]                      # q_t reads S0 decayed by exp(G_t)
    k_tail = k * (G[..., -1:] - G).exp()[..., None]     # k_j decayed to the chunk end
    chunk_decay = G[..., -1].exp()[..., None, None]     # [B,H,n,1,1]

    S = state.to(torch.float32).clone()
    out = torch.empty(B, H, n, chunk, Dv, dtype=torch.float32, device=q.device)
    for c in range(n):
        u = w_v[:, :, c] - w_k[:, :, c] @ S             # [B,H,C,Dv] values written this chunk
        out[:, :, c] = q_dec[:, :, c] @ S + qk[:, :, c] @ u
        S = S * chunk_decay[:, :, c] + k_tail[:, :, c].transpose(-1, -2) @ u
    return out.reshape(B, H, n * chunk, Dv)[:, :, :T], S
