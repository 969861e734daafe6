"""PyTorch reference of the Itera-Lite architecture, written from the forward math.

The golden tests and the shipped-model recipe both build models with this module. State-dict
keys and shapes are exactly those of upstream `IteraLiteModel` checkpoints, so a model made here
is a checkpoint `itera-convert` must accept.

Config keys (upstream names): vocab_size, hidden_size, num_layers, ssm_state_size,
ssm_conv_kernel, ssm_expand_factor, num_experts, expert_size, top_k_experts, moe_layers,
max_seq_length. Extra: `ffn_size` (width of dense FFN layers, default expert_size).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SSMCore(nn.Module):
    def __init__(self, inner, state):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, float(state), state)))
        self.B = nn.Parameter(torch.randn(state, inner) * 0.1)
        self.C = nn.Parameter(torch.randn(inner, state) * 0.1)
        self.D = nn.Parameter(torch.ones(inner))
        self.delta_proj = nn.Linear(inner, inner)


class SSMBlock(nn.Module):
    def __init__(self, hidden, inner, state, kernel):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.in_proj = nn.Linear(hidden, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        self.ssm = SSMCore(inner, state)
        self.out_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, h):  # h [B, L, H]
        L = h.shape[1]
        u, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        v = F.silu(self.conv1d(u.transpose(1, 2))[..., :L].transpose(1, 2))
        dt = F.softplus(self.ssm.delta_proj(v)).mean(dim=-1)  # [B, L]: one step size per token
        A = -torch.exp(self.ssm.A_log)
        s = torch.zeros(h.shape[0], A.shape[0], dtype=h.dtype)
        ys = []
        for t in range(L):
            d = dt[:, t : t + 1]
            s = torch.exp(d * A) * s + d * (v[:, t] @ self.ssm.B.t())
            ys.append(s @ self.ssm.C.t() + self.ssm.D * v[:, t])
        y = torch.stack(ys, dim=1)
        return h + self.out_proj(y * F.silu(z))


class Expert(nn.Module):
    def __init__(self, hidden, width):
        super().__init__()
        self.w1 = nn.Linear(hidden, width, bias=False)
        self.w2 = nn.Linear(width, hidden, bias=False)

    def forward(self, a):
        return self.w2(F.gelu(self.w1(a)))


class Router(nn.Module):
    def __init__(self, hidden, experts):
        super().__init__()
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.register_buffer("expert_counts", torch.zeros(experts))


class MoE(nn.Module):
    def __init__(self, hidden, experts, width, top_k):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.router = Router(hidden, experts)
        self.experts = nn.ModuleList([Expert(hidden, width) for _ in range(experts)])
        self.top_k = top_k

    def forward(self, h):
        a = self.norm(h)
        vals, idx = torch.topk(self.router.gate(a), self.top_k, dim=-1)
        p = torch.softmax(vals, dim=-1)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):  # ascending expert index, as upstream
            w = (p * (idx == e)).sum(dim=-1, keepdim=True)
            out = out + w * expert(a)
        return h + out


class MoEWrapper(nn.Module):  # keys layers.l.moe.layer.*
    def __init__(self, *args):
        super().__init__()
        self.layer = MoE(*args)

    def forward(self, h):
        return self.layer(h)


class DenseFFN(nn.Module):  # keys layers.l.moe.{norm,ffn}.*
    def __init__(self, hidden, width):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.ffn = Expert(hidden, width)

    def forward(self, h):
        return h + self.ffn(self.norm(h))


class Layer(nn.Module):
    def __init__(self, cfg, index):
        super().__init__()
        H = cfg["hidden_size"]
        inner = cfg["ssm_expand_factor"] * H
        self.ssm = SSMBlock(H, inner, cfg["ssm_state_size"], cfg["ssm_conv_kernel"])
        if index in cfg["moe_layers"]:
            self.moe = MoEWrapper(H, cfg["num_experts"], cfg["expert_size"], cfg["top_k_experts"])
        else:
            self.moe = DenseFFN(H, cfg.get("ffn_size", cfg["expert_size"]))

    def forward(self, h):
        return self.moe(self.ssm(h))


class IteraLite(nn.Module):
    def __init__(self, cfg, tied=True):
        super().__init__()
        self.cfg = dict(cfg)
        H, V = cfg["hidden_size"], cfg["vocab_size"]
        self.embedding = nn.Embedding(V, H)
        self.position_embedding = nn.Embedding(cfg["max_seq_length"], H)
        self.layers = nn.ModuleList([Layer(cfg, i) for i in range(cfg["num_layers"])])
        self.norm = nn.LayerNorm(H, eps=1e-5)
        self.lm_head = nn.Linear(H, V, bias=False)
        if tied:
            self.lm_head.weight = self.embedding.weight
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 * math.sqrt(64.0 / H))

    def forward(self, ids):  # ids [B, L], L <= max_seq_length; positions restart at 0
        pos = torch.arange(ids.shape[1])
        h = self.embedding(ids) + self.position_embedding(pos)[None]
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))

    @torch.no_grad()
    def generate_greedy(self, ids, n):
        """Upstream semantics: each step re-runs the last max_seq_length ids from zero state."""
        out = list(ids)
        P = self.cfg["max_seq_length"]
        for _ in range(n):
            window = torch.tensor([out[-P:]])
            out.append(int(self.forward(window)[0, -1].argmax()))
        return out[len(ids):]
